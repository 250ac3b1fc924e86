"""Token times from CIF weights, in numpy so the torch-free runtime shares them with training code.

A token fires at the first encoder frame whose running α sum reaches kβ (the tail token at the
last frame with weight). It integrates the frames after the previous fire; silence before a word
adds small weights there, so its start is the first frame of that span whose α reaches
``onset_ratio`` of the span's largest α — the acoustic onset, not the previous fire.
"""

from __future__ import annotations

import numpy as np

from speechkit.text.tokenizer import SPACE


def fire_frames(alphas: np.ndarray, num_tokens: int, threshold: float = 1.0) -> list[int]:
    """alphas (T,) of one utterance → the frame each of its ``num_tokens`` tokens fired at."""
    alphas = np.asarray(alphas, dtype=np.float64)
    running = np.cumsum(alphas)
    levels = np.arange(1, num_tokens + 1) * threshold - 1e-4
    idx = np.searchsorted(running, levels, side="left")
    nonzero = np.flatnonzero(alphas > 0)
    last = int(nonzero[-1]) if len(nonzero) else 0
    return [min(int(i), last) for i in idx]


def token_spans(alphas: np.ndarray, num_tokens: int, threshold: float = 1.0, onset_ratio: float = 0.5) -> list[tuple[int, int]]:
    """→ (start, fire) encoder frame of each token of one utterance."""
    alphas = np.asarray(alphas, dtype=np.float64)
    spans, prev = [], -1
    for f in fire_frames(alphas, num_tokens, threshold):
        lo = min(prev + 1, f)
        seg = alphas[lo : f + 1]
        start = lo + int(np.argmax(seg >= onset_ratio * seg.max())) if len(seg) else f
        spans.append((start, f))
        prev = f
    return spans


def word_times(pieces: list[str], spans: list[tuple[int, int]], frame_seconds: float) -> list[tuple[str, float, float]]:
    """Token pieces (▁ starts a word) and their spans → (word, start s, end s) per word."""
    words: list[list] = []  # [text, start frame, end frame]
    new_word = True
    for piece, (start, fire) in zip(pieces, spans):
        new_word = new_word or piece.startswith(SPACE)
        text = piece.replace(SPACE, "")
        if not text:  # a bare separator (char tokens): the next piece opens the word
            continue
        if new_word:
            words.append([text, start, fire])
            new_word = False
        else:
            words[-1][0] += text
            words[-1][2] = fire
    return [(w, s * frame_seconds, (e + 1) * frame_seconds) for w, s, e in words]
