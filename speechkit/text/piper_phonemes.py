"""Text → the phoneme ids a Piper voice reads, with the system espeak-ng run as a program.

Piper's VITS voices of ``phoneme_type`` "espeak" were trained on ids made in four steps, which this
module repeats without Piper's own (GPL) phonemiser, which links espeak-ng as a library:

1. the text is cut into clauses where espeak-ng cuts it (``split_clauses``), each with its mark
   ("." "?" "!" "," ":" ";", or "" for any other end) and whether it ends a sentence;
2. espeak-ng speaks each clause as IPA (``-q --ipa``); language-switch flags such as "(fr)" go;
3. a sentence is its clauses' IPA, each followed by its mark (and by a space after "," ":" ";"),
   decomposed (NFD) into single code points, with the voice's ``vowel_clusters`` merged back;
4. its ids are "^", then "_" after every symbol, then "$" (``sentence_ids``); a symbol missing
   from the voice's ``phoneme_id_map`` is dropped.

Given the same espeak-ng, the ids equal piper-tts 1.8.0's (checked on 300 corpus sentences and 300
punctuated texts). But step 2 depends on the espeak-ng version, and the system's may phonemise some
words otherwise than the one the voice was trained with (``speechkit.data.synth.piper_engine``).
Piper's inline ``[[ phonemes ]]`` blocks are not read: text is only text.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from dataclasses import dataclass

from speechkit.errors import SpeechkitError
from speechkit.text.espeak import espeak_command

BOS, PAD, EOS = "^", "_", "$"
_ESPEAK_OPTIONS = ("-q", "--ipa", "-b", "1")  # IPA on stdout only, UTF-8 input
_TIMEOUT_S = 600
# espeak-ng reads stdin 999 bytes at a time and would cut a longer line inside a word.
_MAX_LINE_BYTES = 900
_LANGUAGE_FLAG = re.compile(r"\([^)]+\)")

# The characters that end an espeak-ng clause, by the (mark, ends a sentence) they give; "" is a
# clause end that Piper keeps no mark for. Probed on piper-tts's espeak-ng, character by character.
_CLAUSE_ENDS = {
    (".", True): ".\u06d4\u0701\u0704\u1362\u166e\u1803\u1809\u2cf9\u2cfe\u2e33\u2e3c\ua4ff\ua60e\ua6f3\ufe12"
    "\ufe52\uff61",
    ("?", True): "?\u037e\u061f\u0709\u1367\u1945\u2047\u2753\u2754\u2cfa\u2cfb\ua60f\ua6f7\ufe16\ufe56",
    ("!", True): "!\u0703\u07f9\u1944\u203c\u2755\u2757\u2762\u2763\ufe15\ufe57",
    (",", False): ",\u055d\u060c\u0702\u07f8\u0f14\u1363\u1802\u1808\u2e32\u2e34\u2e41\ua4fe\ua60d\ua6f5"
    "\ufe10\ufe11\ufe50\ufe51\uff64",
    (":", False): ":\u0706\u0707\u1365\u1366\u1804\u2982\ua6f4\ufe13\ufe55",
    (";", False): ";\u0387\u061b\u0708\u1364\u204f\u2e35\ua6f6\ufe14\ufe54\u2013\u2014\u2e3a\u2e3b\ufe31"
    "\ufe32",
    ("", True): "\u0589\u0700\u0964\u0965\u0df4\u0f0d\u0f0e\u10fb\u1368\u2029\u3002\uff01\uff0e\uff1f",
    ("", False): "\u00a1\u00bf\u1801\u2026\u22ee\u22ef\u22f0\u22f1\u3001\ufe19\uff0c\uff1a\uff1b",
}
_END_OF = {c: kind for kind, chars in _CLAUSE_ENDS.items() for c in chars}
# Most marks end a clause only before white space, a bracket or the end of the text; these (ellipses,
# inverted, CJK and full-width marks) end it even before a letter.
_NO_SPACE_NEEDED = set(
    "\u0589\u0964\u0df4\u0f0d\u3002\uff01\uff0e\uff1f\u00a1\u00bf\u1801\u2026\u22ee\u22ef\u22f0\u22f1\u3001"
    "\ufe19\uff0c\uff1a\uff1b"
)
# After a mark these count as a gap (espeak-ng's brackets, quotes and dashes U+2014-U+201F).
_BRACKETS = set("()[]{}<>\"'`\u00ab\u00bb\u300a\u300b") | {chr(c) for c in range(0x2014, 0x2020)}


@dataclass(frozen=True)
class Clause:
    text: str  # what espeak-ng is given: the words and the mark that ended them
    mark: str  # ".", "?", "!", ",", ":", ";" or "" (a paragraph break, an ellipsis, the end of the text)
    ends_sentence: bool


def _space_end(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _mark_ends_clause(text: str, c: str, after: int, has_words: bool) -> tuple[bool, int]:
    """Whether mark ``c``, whose next character is ``text[after]``, ends its clause; and the number
    of newlines in the white space after it. A "." before a lower-case word is an abbreviation's
    ("e.g. the"), as is one before "'s" ("U.S.A.'s"); no mark ends a clause without a letter or digit."""
    nxt = text[after] if after < len(text) else " "
    if not (nxt.isspace() or nxt in _BRACKETS or c in _NO_SPACE_NEEDED):
        return False, 0
    resume = _space_end(text, after)
    newlines = text.count("\n", after, resume)
    if newlines == 0:
        word = text[resume:resume + 2]
        if c == "." and (word[:1].islower() or word == "'s"):
            return False, 0
        if not has_words:
            return False, 0
    return True, newlines


def split_clauses(text: str) -> list[Clause]:
    """``text`` cut into clauses as espeak-ng cuts it: at a mark of ``_CLAUSE_ENDS`` (three dots
    read as an ellipsis, a run of marks as its first) or at a blank line; white space after a
    clause is skipped, and text that is only white space gives no clause. espeak-ng also cuts a
    clause that outgrows its buffer (several hundred characters); that cut is left to it (``clause_ipa``)."""
    clauses: list[Clause] = []
    chars: list[str] = []
    i, n = 0, len(text)

    def close(mark: str, ends_sentence: bool, resume: int) -> int:
        clauses.append(Clause(" ".join("".join(chars).split()), mark, ends_sentence))
        chars.clear()
        return resume

    while i < n:
        c, after = text[i], i + 1
        if c == "\n":
            resume = _space_end(text, after)
            if "\n" in text[after:resume]:  # a blank line ends a paragraph
                i = close("", True, resume)
                continue
        if text.startswith("...", i):
            after = n - len(text[i:].lstrip("."))
            c = "\u2026"
        if c not in _END_OF:
            chars.append(c)
            i = after
            continue
        while after < n and text[after] in _END_OF:  # "?!", "?.", ",." : the first mark counts
            after += 1
        has_words = any(ch.isalnum() for ch in chars)
        ends, newlines = _mark_ends_clause(text, c, after, has_words)
        chars.append(text[i:after])  # espeak-ng is given the mark too: it reads "Mr." otherwise than "Mr"
        i = after
        if ends:
            mark, ends_sentence = ("", True) if newlines > 1 else _END_OF[c]
            i = close(mark, ends_sentence, _space_end(text, after))
            if i >= n:
                return clauses
    if "".join(chars).strip():
        close("", True, n)
    return clauses


def _espeak(lines: list[str], voice: str) -> list[str]:
    """espeak-ng's stdout lines for ``lines`` read one after another by one process."""
    cmd = [*espeak_command(), *_ESPEAK_OPTIONS, "-v", voice]
    stdin = "".join(line + "\n" for line in lines)
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, encoding="utf-8", timeout=_TIMEOUT_S)
    except FileNotFoundError:
        raise SpeechkitError(
            "espeak-ng not found: install it (apt-get install espeak-ng) or put it on PATH"
            " (SPEECHKIT_ESPEAK_DATA names its data dir when it is not installed system-wide)"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SpeechkitError(f"espeak-ng failed: {e}") from None
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or [""])[-1]
        raise SpeechkitError(f"espeak-ng failed (exit {proc.returncode}) with voice '{voice}': {message}".rstrip())
    return proc.stdout.splitlines()


def _input_lines(clause: str) -> list[str]:
    """A clause as stdin lines of at most ``_MAX_LINE_BYTES``, cut between words."""
    lines, current = [], ""
    for word in clause.split():
        if current and len(f"{current} {word}".encode()) > _MAX_LINE_BYTES:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + [current] if current else lines or [""]


def _parse_groups(out: list[str], n_groups: int) -> list[str] | None:
    """The IPA of each group from output where every group is followed by one empty line. A group
    that says nothing prints one empty line of its own; one that espeak-ng cut in pieces (too long)
    prints several, joined here without a space, as Piper joins clauses that have no mark. None
    when the output does not have that shape."""
    groups, k = [], 0
    for _ in range(n_groups):
        if k < len(out) and not out[k].strip():  # a silent group: its empty line, then the separator
            pieces, k = [], k + 1
        else:
            start = k
            while k < len(out) and out[k].strip():
                k += 1
            pieces = out[start:k]
        if k >= len(out) or out[k].strip():
            return None
        groups.append("".join(p.strip() for p in pieces))
        k += 1
    return groups if k == len(out) else None


def clause_ipa(clauses: list[str], voice: str) -> list[str]:
    """espeak-ng's IPA of each clause (words separated by spaces, no punctuation), in one process:
    each clause is a line followed by a blank one. Should the output not line up with the clauses,
    each clause is run alone (a process each: slow, but never misaligned)."""
    if not clauses:
        return []
    lines = [line for clause in clauses for line in (*_input_lines(clause), "")]
    groups = _parse_groups(_espeak(lines, voice), len(clauses))
    if groups is None:
        groups = ["".join(p.strip() for p in _espeak(_input_lines(c), voice)) for c in clauses]
    return [_LANGUAGE_FLAG.sub("", ipa) for ipa in groups]


def _merge_clusters(symbols: list[str], clusters: set[tuple[str, ...]]) -> list[str]:
    """Runs of symbols that form a known cluster become one symbol, the longest cluster first."""
    longest = max(map(len, clusters))
    merged, i = [], 0
    while i < len(symbols):
        sizes = range(min(longest, len(symbols) - i), 1, -1)
        size = next((k for k in sizes if tuple(symbols[i:i + k]) in clusters), 1)
        merged.append("".join(symbols[i:i + size]))
        i += size
    return merged


def sentence_symbols(
    clauses: list[Clause], ipa: list[str], clusters: set[tuple[str, ...]] = frozenset()
) -> list[list[str]]:
    """The symbols of each sentence: the clauses' IPA with their marks, one code point each (NFD).
    An empty last sentence is dropped (any other stays: it still has its "^" and "$")."""
    sentences: list[list[str]] = []
    current: list[str] = []
    for clause, phonemes in zip(clauses, ipa, strict=True):
        spaced = " " if clause.mark in (",", ":", ";") else ""
        current += unicodedata.normalize("NFD", phonemes + clause.mark + spaced)
        if clause.ends_sentence:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    if clusters:
        sentences = [_merge_clusters(s, clusters) for s in sentences]
    if sentences and not sentences[-1]:
        sentences.pop()
    return sentences


def sentence_ids(symbols: list[str], id_map: dict[str, list[int]]) -> list[int]:
    """``^ _ s1 _ s2 _ ... _ $`` in the voice's ids (an entry of ``id_map`` may hold several)."""
    ids = [*id_map[BOS], *id_map[PAD]]
    for symbol in symbols:
        if symbol in id_map:
            ids += [*id_map[symbol], *id_map[PAD]]
    return ids + list(id_map[EOS])


def phoneme_ids(texts: list[str], config: dict) -> list[list[list[int]]]:
    """For each text, the ids of each of its sentences, for the voice of ``config`` (its
    ``.onnx.json``: ``espeak.voice``, ``phoneme_id_map``, optional ``vowel_clusters``); one espeak-ng
    process for all the texts."""
    kind = config.get("phoneme_type", "espeak")
    id_map = config["phoneme_id_map"]
    if kind == "text":  # the voice reads code points
        return [[sentence_ids(list(unicodedata.normalize("NFD", t)), id_map)] for t in texts]
    if kind != "espeak":
        raise SpeechkitError(f"piper voices of phoneme_type '{kind}' are not supported (only espeak and text)")
    clusters = {tuple(c) for c in config.get("vowel_clusters") or []}
    split = [split_clauses(t) for t in texts]
    ipa = iter(clause_ipa([c.text for clauses in split for c in clauses], config["espeak"]["voice"]))
    return [
        [sentence_ids(s, id_map) for s in sentence_symbols(clauses, [next(ipa) for _ in clauses], clusters)]
        for clauses in split
    ]
