"""Torch-free pieces shared by the torch synthesiser and the ONNX runtime: the synthesis options,
the checks on what is to be said and on the voice prompt, the cut of a long text into pieces the
model can say one after another, and the generation length limit."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkit.audio.vad import GateConfig
from speechkit.errors import SpeechkitError
from speechkit.text.phonemes import SENTENCE_END, clause_texts, text_to_phonemes

FLOW_STEPS = {"rectified": 10, "meanflow": 1}  # flow-head steps per latent when the options leave them to the model
STOP_THRESHOLD = 0.5  # generation ends before a latent once sigmoid(stop logit) exceeds this
# The synthetic corpus's sentences (5-20 words) have 19-159 phoneme symbols (median 71): a piece
# of a long text stays within the lengths the model was trained on.
PIECE_PHONEMES = 160
MIN_PROMPT_SECONDS = 0.5  # less holds too little of a voice to clone
SILENT_PROMPT_DB = GateConfig().silence_db  # a prompt whose RMS is below this (dB full scale) is silence


def flow_steps(objective: str, steps: int | None) -> int:
    """Flow-head steps per latent: ``steps`` as asked, or the objective's default when None."""
    n = FLOW_STEPS[objective] if steps is None else int(steps)
    if n < 1:
        raise SpeechkitError(f"steps must be at least 1, got {n}")
    return n


@dataclass(frozen=True)
class SynthOptions:
    steps: int | None = None  # flow-head steps per latent (None: the head's default, FLOW_STEPS)
    cfg_scale: float = 1.5  # classifier-free guidance (1 = none)
    temperature: float = 0.8  # scale of the starting noise
    chunk_frames: int = 4  # latents per streamed audio chunk (160 ms at 25 Hz)
    prompt_seconds: float = 3.0  # the prompt's first seconds are used
    seed: int = 0


def _quote(text: str, limit: int = 40) -> str:
    """``text`` for a one-line message: repr'd, cut after ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def check_text(text: str) -> str:
    """``text`` stripped, or a one-line SpeechkitError when it is empty or only whitespace."""
    if not isinstance(text, str):
        raise SpeechkitError(f"the text to say must be a string, got {type(text).__name__}")
    if not text.strip():
        raise SpeechkitError("nothing to say: the text is empty")
    return text.strip()


def iter_pieces(text: str, max_phonemes: int = PIECE_PHONEMES, voice: str = "en-us") -> Iterator[str]:
    """``text`` as pieces to synthesise one after another, in order, each with at most
    ``max_phonemes`` phoneme symbols: one piece per sentence; a longer sentence is cut after its
    commas (as many clauses to a piece as fit), a longer clause between words (into near-equal
    runs). A piece is its stretch of ``text`` (whitespace between clauses made one space);
    unspeakable characters (emoji, other scripts) stay with their neighbours for the phonemiser to
    drop, and a sentence with nothing to say gives no piece. Lazy, a sentence at a time, so that the
    first piece is ready after one sentence's phonemes. One-line SpeechkitError when the text is
    empty or has nothing to say, or when a single word is longer than ``max_phonemes``."""
    text = check_text(text)
    if max_phonemes < 2:
        raise SpeechkitError(f"a piece must allow at least 2 phoneme symbols, not {max_phonemes}")
    said = False
    for sentence in _sentences(text):
        counts = [len(p) for p in text_to_phonemes(sentence, voice)]
        for piece in _sentence_pieces(list(zip(sentence, counts)), max_phonemes, voice):
            said = True
            yield piece
    if not said:
        raise SpeechkitError(f"nothing to say in {_quote(text)}: no word espeak-ng can speak")


def split_text(text: str, max_phonemes: int = PIECE_PHONEMES, voice: str = "en-us") -> list[str]:
    """Every piece of :func:`iter_pieces` at once."""
    return list(iter_pieces(text, max_phonemes, voice))


def _sentences(text: str) -> Iterator[list[str]]:
    """The clauses of each sentence of ``text``, stripped."""
    sentence: list[str] = []
    for clause, mark in clause_texts(text):
        if clause.strip():
            sentence.append(clause.strip())
        if mark in SENTENCE_END and sentence:
            yield sentence
            sentence = []
    if sentence:
        yield sentence


def _sentence_pieces(clauses: list[tuple[str, int]], max_phonemes: int, voice: str) -> list[str]:
    """One sentence's clauses (text, phoneme symbols) → its pieces. Symbols add up: each clause
    alone ends with a mark, as it does inside the sentence, and joining two adds one word boundary.
    A clause with nothing to say ("🙂,") stays in place, joined to the clause before (or after) it."""
    units: list[tuple[str, int]] = []
    silent = ""
    for clause, n in clauses:
        if not n:
            if units:
                units[-1] = (f"{units[-1][0]} {clause}", units[-1][1])
            else:
                silent += f" {clause}"
            continue
        runs = [(clause, n)] if n <= max_phonemes else _word_runs(clause, n, max_phonemes, voice)
        units += [(f"{silent} {runs[0][0]}".lstrip(), runs[0][1]), *runs[1:]]
        silent = ""
    pieces: list[str] = []
    current, size = "", 0
    for unit, n in units:
        if current and size + 1 + n > max_phonemes:
            pieces.append(current.strip())
            current, size = "", 0
        current, size = (f"{current} {unit}", size + 1 + n) if current else (unit, n)
    return pieces + [current.strip()] if current else pieces


def _word_runs(clause: str, n: int, max_phonemes: int, voice: str) -> list[tuple[str, int]]:
    """A clause over the budget cut between words into the fewest near-equal runs that fit."""
    words = clause.split()
    sizes = [len(p) for p in text_to_phonemes(words, voice)]  # each word alone: its symbols + a mark
    if max(sizes) > max_phonemes:
        word = words[sizes.index(max(sizes))]
        raise SpeechkitError(f"the word {_quote(word)} has {max(sizes)} phoneme symbols, more than a piece may have "
                             f"({max_phonemes})")
    for runs in range(math.ceil(n / max_phonemes), len(words) + 1):
        cuts = _balanced_cuts(sizes, runs)
        pieces = [" ".join(words[a:b]) for a, b in zip(cuts, cuts[1:])]
        counts = [len(p) for p in text_to_phonemes(pieces, voice)]
        if max(counts) <= max_phonemes:  # a word can sound longer in context: then one run more
            break
    return list(zip(pieces, counts))  # at len(words) runs every word is alone, so it fits


def _balanced_cuts(sizes: list[int], runs: int) -> list[int]:
    """Word indices [0, ..., len(sizes)] cutting ``sizes`` into ``runs`` consecutive runs of about
    equal sum (a cut where the running sum passes the next share); every word alone from
    ``runs >= len(sizes)`` on."""
    if runs >= len(sizes):
        return list(range(len(sizes) + 1))
    total, cuts, acc = sum(sizes), [0], 0
    for i, s in enumerate(sizes[:-1]):
        acc += s
        if acc >= total * len(cuts) / runs and len(cuts) < runs:
            cuts.append(i + 1)
    return cuts + [len(sizes)]


def check_prompt(samples: np.ndarray, sample_rate: int, min_seconds: float = MIN_PROMPT_SECONDS) -> np.ndarray:
    """``samples`` as float32 mono (N,) when they can serve as a voice prompt; otherwise a one-line
    SpeechkitError: not 1-D floats, NaN or infinite samples, shorter than ``min_seconds``, or
    silent (RMS below ``SILENT_PROMPT_DB``)."""
    x = np.asarray(samples)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise SpeechkitError(f"a prompt must be mono float samples of shape (N,), got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise SpeechkitError("the prompt has NaN or infinite samples")
    seconds = len(x) / sample_rate
    if seconds < min_seconds:
        raise SpeechkitError(f"the prompt is {seconds:.2f} s long; a voice prompt needs at least {min_seconds:g} s")
    x = x.astype(np.float32, copy=False)
    rms_db = 10.0 * np.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)
    if rms_db < SILENT_PROMPT_DB:
        raise SpeechkitError(f"the prompt is silent (RMS {rms_db:.0f} dBFS, below {SILENT_PROMPT_DB:g} dBFS)")
    return x


def read_prompt(prompt: str | Path | np.ndarray, sample_rate: int) -> np.ndarray:
    """A prompt wav path (any rate, any channels: resampled and downmixed) or mono float32
    samples at ``sample_rate`` → checked float32 samples (:func:`check_prompt`); errors name the file."""
    if isinstance(prompt, np.ndarray):
        return check_prompt(prompt, sample_rate)
    from speechkit.audio.io import load_audio

    samples = load_audio(str(prompt), sample_rate, resample=True, downmix=True)[0]
    try:
        return check_prompt(samples, sample_rate)
    except SpeechkitError as e:
        raise SpeechkitError(f"{prompt}: {e}") from None


def max_frames(n_phones: int, frame_rate: float) -> int:
    """A generous length limit: 1 s plus 240 ms per phoneme symbol."""
    return int(frame_rate * (1.0 + 0.24 * n_phones))
