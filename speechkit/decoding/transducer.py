"""Transducer (RNN-T) search on numpy, shared by the torch model and the ONNX runtimes: icefall's
modified greedy search and modified beam search (at most one symbol per encoder frame; beam
hypotheses with the same tokens merged by log-add), batched over streams and streaming: a stream's
state carries its search across chunks, so decoding chunk by chunk equals decoding it whole.

The networks come in as callables over numpy arrays (N: rows, C: context size, D: dims, V: vocabulary):
  decoder_fn(contexts (N, C) int64) -> (N, D)     the prediction network over the last C tokens
  joiner_fn(enc (N, D), dec (N, D)) -> logits (N, V)
A hypothesis starts from the context [PAD_ID, ..., PAD_ID, BLANK_ID] (icefall's and
sherpa-onnx's start; the decoder gives PAD_ID a zero embedding). Token times are encoder frame
indices from the start of the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from speechkit.decoding.ctc import BLANK_ID
from speechkit.errors import SpeechkitError

PAD_ID = -1  # a context slot before the first token

DecoderFn = Callable[[np.ndarray], np.ndarray]
JoinerFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def start_context(context_size: int) -> tuple[int, ...]:
    if context_size < 1:
        raise SpeechkitError(f"context_size must be at least 1, got {context_size}")
    return (PAD_ID,) * (context_size - 1) + (BLANK_ID,)


@dataclass(frozen=True)
class GreedyState:
    """One stream's greedy search: the last C tokens, the decoder output for them (None until
    first computed), the tokens so far with the encoder frame of each, and frames decoded."""

    context: tuple[int, ...]
    decoder_out: np.ndarray | None = field(default=None, compare=False)  # a function of context
    tokens: tuple[int, ...] = ()
    frames: tuple[int, ...] = ()
    frame: int = 0

    @classmethod
    def start(cls, context_size: int = 2) -> "GreedyState":
        return cls(start_context(context_size))


@dataclass(frozen=True)
class Hypothesis:
    ys: tuple[int, ...]  # the start context, then the tokens
    frames: tuple[int, ...]  # encoder frame of each token
    log_prob: float


@dataclass(frozen=True)
class BeamState:
    """One stream's beam: its hypotheses (at most ``beam``, best first) and frames decoded."""

    hyps: tuple[Hypothesis, ...]
    context_size: int
    frame: int = 0

    @classmethod
    def start(cls, context_size: int = 2) -> "BeamState":
        return cls((Hypothesis(start_context(context_size), (), 0.0),), context_size)

    def best(self, length_norm: bool = False) -> tuple[list[int], list[int], float]:
        """(tokens, their frames, log-prob) of the most probable hypothesis. ``length_norm`` ranks
        by log-prob / len(ys) with the start context counted, as icefall and sherpa-onnx pick."""
        key = (lambda h: h.log_prob / len(h.ys)) if length_norm else (lambda h: h.log_prob)
        h = max(self.hyps, key=key)
        return list(h.ys[self.context_size :]), list(h.frames), h.log_prob


def _is_symbol(token: int, unk_id: int | None) -> bool:
    """Blank, and unk when given, are not emitted (icefall and sherpa-onnx treat unk as blank)."""
    return token != BLANK_ID and token != unk_id


def _check_frames(enc_frames: Sequence[np.ndarray], states: Sequence, kind: type) -> list[np.ndarray]:
    if len(enc_frames) != len(states):
        raise SpeechkitError(f"got {len(enc_frames)} streams' encoder frames but {len(states)} states")
    for s in states:
        if not isinstance(s, kind):
            raise SpeechkitError(f"a {kind.__name__} was expected, got {type(s).__name__} (start one with {kind.__name__}.start())")
    frames = [np.asarray(e) for e in enc_frames]
    dims = {e.shape[1] for e in frames if e.ndim == 2}
    if any(e.ndim != 2 for e in frames) or len(dims) > 1:
        raise SpeechkitError(f"encoder frames must be (T, D) per stream with one D, got shapes {[e.shape for e in frames]}")
    return frames


def _decode(decoder_fn: DecoderFn, contexts: list[tuple[int, ...]]) -> np.ndarray:
    if len({len(c) for c in contexts}) > 1:
        raise SpeechkitError(f"streams decoded together must share one context size, got {sorted({len(c) for c in contexts})}")
    out = np.asarray(decoder_fn(np.array(contexts, dtype=np.int64)))
    if out.ndim != 2 or len(out) != len(contexts):
        raise SpeechkitError(f"decoder_fn must map ({len(contexts)}, C) contexts to ({len(contexts)}, D), got {out.shape}")
    return out


def _join(joiner_fn: JoinerFn, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
    out = np.asarray(joiner_fn(enc, dec))
    if out.ndim != 2 or len(out) != len(enc) or out.shape[1] < 2:
        raise SpeechkitError(f"joiner_fn must map ({len(enc)}, D) inputs to ({len(enc)}, V) logits, got {out.shape}")
    return out


def _rows(rows: list[np.ndarray]) -> np.ndarray:
    """The rows as one (N, D) array; one row is a view, not a copy (one stream is the usual call)."""
    return rows[0][None] if len(rows) == 1 else np.stack(rows)


def greedy_search(enc_frames: Sequence[np.ndarray], states: Sequence[GreedyState], decoder_fn: DecoderFn,
                  joiner_fn: JoinerFn, unk_id: int | None = None) -> list[GreedyState]:
    """S: streams, T_s: this call's encoder frames of stream s (may differ, may be 0), D: dim.

    enc_frames [(T_s, D)], states [S] → the states after these frames. At each frame the
    streams that have it share one joiner call, and those that emitted share one decoder call.
    """
    frames = _check_frames(enc_frames, states, GreedyState)
    contexts = [s.context for s in states]
    tokens = [list(s.tokens) for s in states]
    times = [list(s.frames) for s in states]
    dec = [s.decoder_out for s in states]
    missing = [i for i, d in enumerate(dec) if d is None]
    if missing:
        for i, row in zip(missing, _decode(decoder_fn, [contexts[i] for i in missing])):
            dec[i] = row
    lengths = [len(e) for e in frames]
    for t in range(max(lengths, default=0)):
        active = [i for i, n in enumerate(lengths) if n > t]
        best = _join(joiner_fn, _rows([frames[i][t] for i in active]), _rows([dec[i] for i in active])).argmax(-1)
        emitted = []
        for i, y in zip(active, best.tolist()):
            if _is_symbol(y, unk_id):
                contexts[i] = contexts[i][1:] + (y,)
                tokens[i].append(y)
                times[i].append(states[i].frame + t)
                emitted.append(i)
        if emitted:
            for i, row in zip(emitted, _decode(decoder_fn, [contexts[i] for i in emitted])):
                dec[i] = row
    return [GreedyState(contexts[i], np.array(dec[i]), tuple(tokens[i]), tuple(times[i]), s.frame + lengths[i])
            for i, s in enumerate(states)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    x -= np.log(np.exp(x).sum(-1, keepdims=True))
    return x


def _expand(hyps: tuple[Hypothesis, ...], scores: np.ndarray, beam: int, frame: int, unk_id: int | None) -> tuple[Hypothesis, ...]:
    """scores (H, V): each hypothesis's log-prob plus each token's → the best ``beam`` (hyp,
    token) pairs, merged by their token sequence (log-add; the better one's frames kept)."""
    flat = scores.ravel()
    neg = -flat
    k = min(beam, flat.size)
    top = np.argpartition(neg, k - 1)[:k]
    top = top[np.argsort(neg[top], kind="stable")]
    vocab = scores.shape[1]
    merged: dict[tuple[int, ...], Hypothesis] = {}
    for idx, score in zip(top.tolist(), flat[top].tolist()):
        row, y = divmod(idx, vocab)
        h = hyps[row]
        ys, times = (h.ys + (y,), h.frames + (frame,)) if _is_symbol(y, unk_id) else (h.ys, h.frames)
        old = merged.get(ys)
        merged[ys] = Hypothesis(ys, times, score) if old is None else Hypothesis(ys, old.frames, float(np.logaddexp(old.log_prob, score)))
    return tuple(sorted(merged.values(), key=lambda h: -h.log_prob))


def modified_beam_search(enc_frames: Sequence[np.ndarray], states: Sequence[BeamState], decoder_fn: DecoderFn,
                         joiner_fn: JoinerFn, beam: int = 4, unk_id: int | None = None) -> list[BeamState]:
    """S: streams, T_s: this call's encoder frames of stream s, D: dim, V: vocabulary.

    enc_frames [(T_s, D)], states [S] → the states after these frames. At each frame every
    hypothesis of every stream that has the frame goes through one joiner call; each stream
    keeps its ``beam`` best (hypothesis, token) extensions, blank or one symbol, merging those
    that give the same tokens. Decoder outputs are computed once per distinct context per call.
    """
    if not isinstance(beam, int) or beam < 1:
        raise SpeechkitError(f"beam must be a positive integer, got {beam!r}")
    frames = _check_frames(enc_frames, states, BeamState)
    hyps = [s.hyps for s in states]
    lengths = [len(e) for e in frames]
    cache: dict[tuple[int, ...], np.ndarray] = {}
    for t in range(max(lengths, default=0)):
        active = [i for i, n in enumerate(lengths) if n > t]
        rows = [(i, h) for i in active for h in hyps[i]]
        contexts = [h.ys[-states[i].context_size :] for i, h in rows]
        new = list(dict.fromkeys(c for c in contexts if c not in cache))
        if new:
            cache.update(zip(new, _decode(decoder_fn, new)))
        # one stream's hypotheses share its frame: one row repeated, not a stack of views
        enc = (np.repeat(frames[active[0]][t : t + 1], len(rows), axis=0) if len(active) == 1
               else np.stack([frames[i][t] for i, _ in rows]))
        logits = _join(joiner_fn, enc, np.stack([cache[c] for c in contexts]))
        scores = _log_softmax(logits) + np.array([h.log_prob for _, h in rows])[:, None]
        at = 0
        for i in active:
            n = len(hyps[i])
            hyps[i] = _expand(hyps[i], scores[at : at + n], beam, states[i].frame + t, unk_id)
            at += n
    return [BeamState(hyps[i], s.context_size, s.frame + lengths[i]) for i, s in enumerate(states)]
