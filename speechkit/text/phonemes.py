"""The text front end of the TTS models: raw English text → IPA phoneme symbols (espeak-ng) → ids.

Numbers are spoken through the corpus normaliser (``speechkit.text.normalize``), clause
punctuation survives as tokens so prosody can follow it, and a large batch goes through a few
espeak-ng processes (one per CPU core at most), never one process per sentence. A small one (a
sentence to synthesise) goes to the resident phonemiser (``speechkit.text.espeak``: the espeak-ng
library in this process, or one espeak-ng process kept running), which gives the same symbols in
about a millisecond instead of a process start.

Tokens of one text, in order:
  - phonemes as espeak-ng defines them (``--sep``): affricates, diphthongs, r-coloured vowels and
    length marks stay one symbol ("tʃ", "aɪ", "ɑːɹ", "iː", "n̩");
  - stress marks "ˈ" (primary) and "ˌ" (secondary) as their own symbols, before the vowel they mark;
  - "|" between every two words (so a text of n words has n - 1 of them);
  - "," "." "?" "!" right after the word they follow (";" and ":" read as ",").
A non-empty text always ends with ".", "?" or "!" ("." is supplied, as the engines read an
unpunctuated end as a statement): the normalised corpus transcripts carry no punctuation, and
this keeps their sequences the same shape as those of punctuated input. An empty (or
unspeakable) text gives ``[]``.

Each word is phonemised on its own (a zero-width space between words stops espeak-ng joining
clitic groups such as "of the" into one word), so words and "|"-groups line up one to one, at the
cost of espeak-ng's cross-word weak forms ("such as" keeps "æz" rather than "ɐz"). Rare dictionary
entries that espeak-ng itself splits ("linkedin") are the only exception.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from speechkit.errors import SpeechkitError
from speechkit.text.espeak import NOT_FOUND, PHONEME_OPTIONS, ResidentEspeak, espeak_command
from speechkit.text.normalize import _ABBREVIATIONS, cardinal, normalize_text

WORD_BOUNDARY = "|"
PUNCTUATION = (",", ".", "?", "!")
SENTENCE_END = (".", "?", "!")
STRESS = ("ˈ", "ˌ")

_WORD_JOIN = " \u200b "  # a zero-width space keeps espeak-ng from joining words
_LINES_PER_PROCESS = 64  # smaller batches are not worth another process: the resident phonemiser takes them
# espeak-ng reads stdin in pieces of 999 bytes and would cut a longer line inside a word, so a
# long clause goes in as several lines of at most this many bytes, cut between words.
_MAX_LINE_BYTES = 600
_TIMEOUT_S = 600

# A clause ends at punctuation followed by a space or the end (closing quotes and brackets may
# come between), so "3.5", "1,000" and "don't" are not split.
_PUNCTUATION_RUN, _CLOSERS = r"([,;:.!?]+)", r"[\"'\u2019\u201d)\]]*"
_CLAUSE_BREAK = re.compile(rf"{_PUNCTUATION_RUN}(?={_CLOSERS}(?:\s|$))")
_CLAUSE_END = re.compile(rf"{_PUNCTUATION_RUN}{_CLOSERS}(?=\s|$)")  # the same break, past the closers
_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u2013": " ", "\u2014": " ", "-": " "})
_LIGHT_WORD = re.compile(r"\d+|[a-z]+(?:'[a-z]+)*")


def _punctuation_token(run: str) -> str:
    for mark in ("?", "!", "."):
        if mark in run:
            return mark
    return ","


def _ends_abbreviation(clause: str, run: str) -> bool:
    """A "." after "Mr" or an initial ("J.") does not end a sentence."""
    words = clause.split()
    if run != "." or not words:
        return False
    last = words[-1].strip("\"'()[]")
    return last.lower() in _ABBREVIATIONS or (len(last) == 1 and last.isupper() and last not in "AI")


def _clauses(text: str) -> list[tuple[str, str | None]]:
    """``text`` cut at clause punctuation: (clause text, punctuation token or None)."""
    parts = _CLAUSE_BREAK.split(text)
    clauses: list[tuple[str, str | None]] = []
    pending = ""
    for clause, run in zip(parts[::2], parts[1::2] + [None]):
        pending += clause
        if run is not None and _ends_abbreviation(pending, run):
            pending += run
            continue
        clauses.append((pending, None if run is None else _punctuation_token(run)))
        pending = ""
    return clauses


def clause_texts(text: str) -> list[tuple[str, str | None]]:
    """``text`` cut where the phonemiser cuts its clauses, each piece kept with its punctuation and
    closing quotes (the pieces joined give ``text`` back): (piece, punctuation token or None)."""
    pieces: list[tuple[str, str | None]] = []
    start = 0
    for m in _CLAUSE_END.finditer(text):
        if _ends_abbreviation(text[start : m.start()], m.group(1)):
            continue
        pieces.append((text[start : m.end()], _punctuation_token(m.group(1))))
        start = m.end()
    if start < len(text):
        pieces.append((text[start:], None))
    return pieces


def _spell_digits(digits: str) -> list[str]:
    spoken = normalize_text(digits)  # None for leading zeros ("007") and huge numbers
    return spoken.split() if spoken else [cardinal(int(d)) for d in digits]


def _light_normalize(clause: str) -> list[str]:
    """Words of a clause the corpus normaliser rejects: each token is normalised alone when it
    can be ("42", "1990s", "don't"), else lower-cased and stripped to ASCII letters and digits,
    digits spoken ("NASA" → "nasa", "café" → "cafe", "10:30" → "ten thirty")."""
    words: list[str] = []
    for token in clause.translate(_TYPOGRAPHY).replace("&", " and ").split():
        spoken = normalize_text(token)
        if spoken is not None:
            words += spoken.split()
            continue
        ascii_token = unicodedata.normalize("NFKD", token).encode("ascii", "ignore").decode().lower()
        for piece in _LIGHT_WORD.findall(ascii_token):
            words += _spell_digits(piece) if piece.isdigit() else [piece]
    return words


def _normalize_words(clause: str) -> list[str]:
    """The words espeak-ng is given for one clause: the corpus normaliser's, or a lighter
    normalisation's when it rejects the clause; numbers always become words."""
    spoken = normalize_text(clause)
    return spoken.split() if spoken is not None else _light_normalize(clause)


def _espeak(stdin: str, voice: str) -> str:
    cmd = [*espeak_command(), *PHONEME_OPTIONS, "-v", voice]
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, encoding="utf-8", timeout=_TIMEOUT_S)
    except FileNotFoundError:
        raise SpeechkitError(NOT_FOUND) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SpeechkitError(f"espeak-ng failed: {e}") from None
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or [""])[-1]
        raise SpeechkitError(f"espeak-ng failed (exit {proc.returncode}) with voice '{voice}': {message}".rstrip())
    return proc.stdout


def _espeak_lines(lines: list[str], voice: str) -> list[str]:
    """One espeak-ng process for many lines; one output string per input line.

    espeak-ng reads stdin line by line and may cut one line into several (at a clause that grows
    too long), but answers a blank line with exactly one empty line. So a blank line follows every
    input line and the output is cut at empty lines. Should the count still disagree (a line
    whose own output is empty), each line is run alone instead: slow, but never misaligned."""
    out = _espeak("".join(line + "\n\n" for line in lines), voice)
    groups: list[str] = []
    current: list[str] = []
    for line in out.splitlines():
        if line.strip():
            current.append(line.strip())
        else:
            groups.append(" ".join(current))
            current = []
    if len(groups) == len(lines) and not current:
        return groups
    return [" ".join(_espeak(line + "\n", voice).split()) for line in lines]


def _phoneme_tokens(ipa: str) -> list[list[str]]:
    """espeak-ng's ``--sep=_`` output → the symbols of each word, stress marks split off."""
    words = []
    for word in ipa.split():
        symbols: list[str] = []
        for unit in word.split("_"):  # empty units are espeak-ng's silent phonemes (pauses)
            while unit[:1] in STRESS:
                symbols.append(unit[0])
                unit = unit[1:]
            if unit:
                symbols.append(unit)
        if symbols:
            words.append(symbols)
    return words


def _espeak_input(words: list[str]) -> list[str]:
    """The lines that carry one clause's words to espeak-ng."""
    lines: list[str] = []
    current: list[str] = []
    size = 0
    for word in words:
        cost = len(word.encode("utf-8")) + len(_WORD_JOIN.encode("utf-8"))
        if current and size + cost > _MAX_LINE_BYTES:
            lines.append(_WORD_JOIN.join(current))
            current, size = [], 0
        current.append(word)
        size += cost
    if current:
        lines.append(_WORD_JOIN.join(current))
    return lines


def _workers(n_lines: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, math.ceil(n_lines / _LINES_PER_PROCESS)))


def _phonemize_lines(lines: list[str], voice: str = "en-us") -> list[str]:
    """espeak-ng's IPA for each line of plain words, in order: a batch worth one process goes to
    the resident phonemiser, a larger one is cut into at most one slice per CPU core, each slice
    one espeak-ng process."""
    if not lines:
        return []
    n = _workers(len(lines))
    if n == 1 and RESIDENT is not None:
        return RESIDENT.lines(lines, voice)
    size = math.ceil(len(lines) / n)
    slices = [lines[i : i + size] for i in range(0, len(lines), size)]
    with ThreadPoolExecutor(len(slices)) as pool:
        return [ipa for part in pool.map(lambda s: _espeak_lines(s, voice), slices) for ipa in part]


# One for the process: TTS phonemises a sentence at a time, from any thread. None: a process per call.
RESIDENT: ResidentEspeak | None = ResidentEspeak()


def text_to_phonemes(texts: list[str], voice: str = "en-us") -> list[list[str]]:
    """Phoneme symbols of each text (see the module docstring for the tokens), in input order."""
    clauses = [_clauses(text) for text in texts]
    words = [[(_normalize_words(clause), mark) for clause, mark in cs] for cs in clauses]
    pieces = [[_espeak_input(w) for w, _ in ws] for ws in words]
    ipa = iter(_phonemize_lines([line for ps in pieces for p in ps for line in p], voice))
    result = []
    for ws, ps in zip(words, pieces):
        tokens: list[str] = []
        for (clause_words, mark), lines in zip(ws, ps):
            if not clause_words:
                continue  # punctuation with no words before it ("Hello, , world") says nothing
            for word in _phoneme_tokens(" ".join(next(ipa) for _ in lines)):
                if tokens:
                    tokens.append(WORD_BOUNDARY)
                tokens += word
            if mark is not None and tokens[-1:] == [","]:
                tokens[-1] = mark  # a clause that gave no phonemes leaves two marks in a row
            elif mark is not None and tokens:
                tokens.append(mark)
        if tokens and tokens[-1] not in SENTENCE_END:
            if tokens[-1] == ",":
                tokens.pop()
            tokens.append(".")
        result.append(tokens)
    return result


class PhonemeVocab:
    """Phoneme symbols ↔ ids, saved beside a TTS model as one symbol per line (line i is id i).

    Reserved ids: 0 ``<pad>`` (padding), 1 ``<unk>`` (a symbol not seen in training), 2 ``<bos>``
    (starts the text prefix) and 3 ``<eos>`` (ends it: the AR model's separator between the text
    and the speech latents that follow). ``encode`` adds none of them; the model frames a sequence
    as ``[bos, *encode(symbols), eos]``."""

    PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
    RESERVED = (PAD, UNK, BOS, EOS)
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, symbols: list[str]):
        if tuple(symbols[: len(self.RESERVED)]) != self.RESERVED:
            raise SpeechkitError(f"phoneme vocabulary must start with {' '.join(self.RESERVED)}")
        self.symbols = list(symbols)
        self._ids = {s: i for i, s in enumerate(self.symbols)}
        if len(self._ids) != len(self.symbols):
            raise SpeechkitError("phoneme vocabulary has a duplicated symbol")

    @classmethod
    def build(cls, seqs: list[list[str]], min_count: int = 1) -> "PhonemeVocab":
        """Every symbol seen at least ``min_count`` times, sorted (so the ids are reproducible);
        rarer symbols become ``<unk>``, which then is trained too."""
        counts: dict[str, int] = {}
        for seq in seqs:
            for s in seq:
                counts[s] = counts.get(s, 0) + 1
        return cls([*cls.RESERVED, *sorted(s for s, c in counts.items() if c >= min_count and s not in cls.RESERVED)])

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, symbols: list[str]) -> list[int]:
        return [self._ids.get(s, self.unk_id) for s in symbols]

    def decode(self, ids: list[int]) -> list[str]:
        """Symbols of ``ids``; the framing ids (pad, bos, eos) are dropped, unknowns read ``<unk>``."""
        return [self.symbols[i] for i in ids if i not in (self.pad_id, self.bos_id, self.eos_id)]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(s + "\n" for s in self.symbols), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "PhonemeVocab":
        path = Path(path)
        if not path.is_file():
            raise SpeechkitError(f"{path}: no phoneme vocabulary")
        symbols = path.read_text(encoding="utf-8").splitlines()
        for lineno, s in enumerate(symbols, 1):
            if not s or s != s.strip() or " " in s:
                raise SpeechkitError(f"{path}:{lineno}: a phoneme symbol must be one non-blank word, got {s!r}")
        if len(set(symbols)) != len(symbols):
            raise SpeechkitError(f"{path}: duplicated symbol")
        try:
            return cls(symbols)
        except SpeechkitError as e:
            raise SpeechkitError(f"{path}: {e}") from None
