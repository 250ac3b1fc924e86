"""Text-to-music decoding loops on numpy, shared by the torch models (``models/audiogen``) and a
later ONNX runtime: MAGNeT's iterative span decoding (arXiv 2401.04577, sec. 3.3) with optional
rescoring by the AR model, the delay-pattern autoregressive loop (MusicGen), and the hybrid
(the first frames autoregressively, the rest by MAGNeT given them).

The models come in as callables over numpy arrays (B: batch, K: codebooks, T: frames):
  logits_fn(tokens [B, K, T] int64 with MASK = card, stage: int, null_text: bool) -> logits [B, T, card]
  rescore_fn(tokens [B, K, T]) -> log-probs [B, K, T] of the given tokens (MASK where unknown)
  init_fn(null_text: bool) -> cache;  step_fn(tokens [B, K] int64, cache) -> (logits [B, K, card], cache)

MAGNeT, stage by stage (codebook 0 .. K-1, the higher codebooks MASK as in training, prompt frames
included). The stage's frames after the prompt are cut into spans of ``span`` frames, all masked at
first. Step i of n: the model sees the current tokens; every masked frame is sampled; each
sampled frame's confidence is its token's log-probability under the guided logits at temperature 1
(plus rescoring, below); a span's score is the *mean* of its frames' confidences (``span_score``:
the log of the geometric mean probability, fair to a shorter last span; ``"max"`` also offered);
floor(N cos(π/2 (i+1)/n)) of the N spans stay masked, the least confident among those sampled in
this step, and the others are kept for good (a kept span is never masked again). The last step
leaves none masked.

Schedules, both following the mask rate r_i (the fraction of spans masked when step i starts,
1 at the first step, small at the last):
  guidance  logits = null + s (cond - null) with s = s_end + (s_start - s_end) r_i (default 3 → 1:
            strong while little is fixed, none at the end); s = 1 skips the null call
  sampling  temperature t = t_end + (t_start - t_end) r_i (default 3 → 0.1, as MAGNeT starts hot:
            wrong early draws are re-masked by their low confidence), then top-k, then top-p
Rescoring: a frame's confidence is (1 - w) log p_magnet + w log p_ar (log domain); w = 0 never
calls ``rescore_fn``, so the result is plain MAGNeT's, bit for bit. Randomness: one
``rng.random((B, T))`` per step (MAGNeT) or ``(B, K)`` per step (AR), whatever is masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from speechkit.errors import SpeechkitError

SPAN_SCORES = ("mean", "max")

LogitsFn = Callable[[np.ndarray, int, bool], np.ndarray]
RescoreFn = Callable[[np.ndarray], np.ndarray]
InitFn = Callable[[bool], Any]
StepFn = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]


def _check_sampling(top_k: int | None, top_p: float | None) -> None:
    if top_k is not None and top_k < 1:
        raise SpeechkitError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise SpeechkitError(f"top_p must be in (0, 1] (or None), got {top_p}")


@dataclass(frozen=True)
class MagnetOptions:
    steps: tuple[int, ...] = (20, 10, 10, 10)  # decoding steps of each stage (one per codebook)
    span: int = 3  # frames per span (the model's training span)
    cfg: tuple[float, float] = (3.0, 1.0)  # guidance scale at mask rate 1 → 0
    temperature: tuple[float, float] = (3.0, 0.1)  # at mask rate 1 → 0
    top_k: int | None = None
    top_p: float | None = 0.9
    span_score: str = "mean"  # "mean" | "max" of the frames' confidences
    rescore_weight: float = 0.0  # w: confidence = (1 - w) log p_magnet + w log p_rescore

    def __post_init__(self):
        if not self.steps or any(int(s) < 1 for s in self.steps):
            raise SpeechkitError(f"steps must give each stage at least one step, got {list(self.steps)}")
        if self.span < 1:
            raise SpeechkitError(f"span must be at least one frame, got {self.span}")
        if self.span_score not in SPAN_SCORES:
            raise SpeechkitError(f"unknown span_score mode '{self.span_score}' (known: {', '.join(SPAN_SCORES)})")
        if len(self.cfg) != 2 or len(self.temperature) != 2 or min(self.temperature) < 0:
            raise SpeechkitError(f"cfg and temperature are (start, end) pairs, temperatures >= 0; got {self.cfg}, {self.temperature}")
        if not 0.0 <= self.rescore_weight <= 1.0:
            raise SpeechkitError(f"rescore_weight must be in [0, 1], got {self.rescore_weight}")
        _check_sampling(self.top_k, self.top_p)


@dataclass(frozen=True)
class ArOptions:
    cfg: float = 3.0  # guidance scale (1: none)
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = 250
    top_p: float | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise SpeechkitError(f"temperature must be >= 0, got {self.temperature}")
        _check_sampling(self.top_k, self.top_p)


# ---- sampling ---------------------------------------------------------------------------------

def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sample_tokens(logits: np.ndarray, u: np.ndarray, temperature: float, top_k: int | None, top_p: float | None) -> np.ndarray:
    """N rows, V entries. logits [N, V], one uniform u [N] per row → ids [N] (int64), drawn by
    inverting the cumulative distribution of softmax(logits / temperature) cut to the top-k
    entries, then to the smallest set holding top-p of the mass. Temperature 0: argmax."""
    if temperature <= 0:
        return logits.argmax(axis=-1).astype(np.int64)
    z = logits.astype(np.float64) / temperature
    v = z.shape[-1]
    if top_k is not None and top_k < v:
        kth = np.partition(z, v - top_k, axis=-1)[:, v - top_k : v - top_k + 1]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    order = None
    if top_p is not None and top_p < 1.0:  # sorted, most probable first (only top-p needs the order)
        order = np.argsort(-p, axis=-1)
        p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(p, axis=-1) - p  # mass of the entries ranked above
        p = np.where(before < top_p * p.sum(axis=-1, keepdims=True), p, 0.0)
    c = np.cumsum(p, axis=-1)
    j = np.minimum((c <= u[:, None] * c[:, -1:]).sum(axis=-1), v - 1)  # the first entry past u of the mass
    return (j if order is None else order[np.arange(len(order)), j]).astype(np.int64)


class NumpySampler:
    """MAGNeT's per-step arithmetic on the logits (guidance, sampling the masked frames, each
    frame's log-probability) in numpy: the default, and the torch-free runtime's. A sampler for
    logits that stay on a GPU (``inference/audiogen.py``) offers the same three methods, so only
    the sampled ids and confidences ([B, T]) cross to the host."""

    def guided(self, cond, null, scale: float) -> np.ndarray:
        cond = np.asarray(cond, dtype=np.float32)
        return cond if null is None else np.asarray(null, dtype=np.float32) + np.float32(scale) * (cond - np.asarray(null, dtype=np.float32))

    def sample(self, logits: np.ndarray, where: np.ndarray, u: np.ndarray, temperature: float, top_k: int | None,
               top_p: float | None) -> np.ndarray:
        """logits [B, T, V], where [B, T] bool, u [B, T] → ids of the ``where`` frames [N] (int64)."""
        return sample_tokens(logits[where], u[where], temperature, top_k, top_p)

    def token_logprob(self, logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """log p(tokens [B, T]) under softmax(logits [B, T, V]) → [B, T] float64."""
        return np.take_along_axis(log_softmax(logits), tokens[..., None], axis=-1)[..., 0]


NUMPY_SAMPLER = NumpySampler()


def _guided(logits_fn: LogitsFn, tokens: np.ndarray, stage: int, scale: float, sampler=NUMPY_SAMPLER):
    cond = logits_fn(tokens, stage, False)
    return sampler.guided(cond, None if scale == 1.0 else logits_fn(tokens, stage, True), scale)


# ---- MAGNeT -------------------------------------------------------------------------------------

def masked_spans(spans: int, step: int, steps: int) -> int:
    """Spans still masked after step ``step`` (0-based) of ``steps``: floor(N cos(π/2 (step+1)/steps)),
    0 after the last step."""
    return 0 if step + 1 >= steps else int(math.floor(spans * math.cos(math.pi / 2 * (step + 1) / steps)))


def span_starts(frames: int, prompt: int, span: int) -> np.ndarray:
    """First frame of each span tiling frames ``prompt`` .. ``frames - 1`` (the last may be shorter)."""
    return np.arange(prompt, frames, span)


def span_scores(conf: np.ndarray, starts: np.ndarray, mode: str) -> np.ndarray:
    """Frame confidences [B, T] → span scores [B, N] over the spans beginning at ``starts`` (the
    last running to T): the mean or the max of their frames."""
    seg = conf[:, starts[0] :]
    rel = starts - starts[0]
    if mode == "max":
        return np.maximum.reduceat(seg, rel, axis=1)
    lengths = np.diff(np.append(rel, seg.shape[1]))
    return np.add.reduceat(seg, rel, axis=1) / lengths


def least_confident(scores: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` lowest-scored spans among ``candidates`` [B, N] (bool) of each row → [B, N]
    bool (ties: the earlier span)."""
    order = np.argsort(np.where(candidates, scores, np.inf), axis=1, kind="stable")
    chosen = np.zeros_like(candidates)
    np.put_along_axis(chosen, order[:, :count], True, axis=1)
    return chosen


def _check_prompt(prompt: np.ndarray | None, batch: int, k: int, card: int) -> np.ndarray:
    if prompt is None:
        return np.zeros((batch, k, 0), dtype=np.int64)
    prompt = np.asarray(prompt)
    if prompt.ndim != 3 or prompt.shape[:2] != (batch, k):
        raise SpeechkitError(f"prompt must be codes [{batch}, {k}, P], got shape {list(prompt.shape)}")
    if prompt.size and (prompt.min() < 0 or prompt.max() >= card):
        raise SpeechkitError(f"prompt codes must be in 0..{card - 1}")
    return prompt.astype(np.int64)


def _check_sizes(batch: int, frames: int, k: int, card: int) -> None:
    if batch < 1 or frames < 1 or k < 1 or card < 2:
        raise SpeechkitError(f"need batch >= 1, frames >= 1, K >= 1 and card >= 2; got batch={batch}, frames={frames}, K={k}, card={card}")


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def magnet_generate(logits_fn: LogitsFn, batch: int, frames: int, k: int, card: int, options: MagnetOptions = MagnetOptions(),
                    prompt: np.ndarray | None = None, rescore_fn: RescoreFn | None = None,
                    rng: np.random.Generator | int | None = None, sampler=None) -> np.ndarray:
    """Codes [B, K, frames] (int64) by MAGNeT's decoding (see the module doc). ``prompt`` [B, K, P]
    (P < frames): frames kept as given. ``rng``: a Generator, a seed, or None (seed 0).
    ``sampler``: where the per-step arithmetic runs (default :class:`NumpySampler`; ``logits_fn``
    then returns arrays numpy can read)."""
    sampler = sampler or NUMPY_SAMPLER
    _check_sizes(batch, frames, k, card)
    if len(options.steps) != k:
        raise SpeechkitError(f"steps must give one count per codebook ({k}), got {len(options.steps)}: {list(options.steps)}")
    if options.rescore_weight > 0 and rescore_fn is None:
        raise SpeechkitError(f"rescore_weight {options.rescore_weight} needs a rescore_fn")
    prompt = _check_prompt(prompt, batch, k, card)
    p = prompt.shape[2]
    if p >= frames:
        raise SpeechkitError(f"the prompt ({p} frames) must be shorter than the {frames} frames to generate")
    rng = _rng(rng)
    mask = card
    tokens = np.full((batch, k, frames), mask, dtype=np.int64)
    starts = span_starts(frames, p, options.span)
    span_of = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, frames)))  # frame p + i → its span
    for stage, steps in enumerate(options.steps):
        row = tokens[:, stage]  # a view: writes go into ``tokens``
        row[:, :p] = prompt[:, stage]
        masked = np.ones((batch, len(starts)), dtype=bool)
        for i in range(steps):
            u = rng.random((batch, frames))
            if not masked.any():  # more steps than spans: nothing left to sample
                continue
            rate = masked.sum(axis=1).max() / len(starts)  # every row masks the same number of spans
            scale = options.cfg[1] + (options.cfg[0] - options.cfg[1]) * rate
            temp = options.temperature[1] + (options.temperature[0] - options.temperature[1]) * rate
            frame_masked = np.zeros((batch, frames), dtype=bool)
            frame_masked[:, p:] = masked[:, span_of]
            row[frame_masked] = mask
            logits = _guided(logits_fn, tokens, stage, scale, sampler)
            row[frame_masked] = sampler.sample(logits, frame_masked, u, temp, options.top_k, options.top_p)
            conf = sampler.token_logprob(logits, row)
            if options.rescore_weight > 0:
                ar = np.asarray(rescore_fn(tokens.copy()), dtype=np.float64)[:, stage]
                conf = (1.0 - options.rescore_weight) * conf + options.rescore_weight * ar
            masked = least_confident(span_scores(conf, starts, options.span_score), masked, masked_spans(len(starts), i, steps))
    return tokens


# ---- delay-pattern AR -----------------------------------------------------------------------------

def apply_delay(codes: np.ndarray, fill: int) -> np.ndarray:
    """codes [B, K, T] → the delay pattern [B, K, T + K - 1]: codebook k at steps k .. k + T - 1."""
    b, k, t = codes.shape
    out = np.full((b, k, t + k - 1), fill, dtype=codes.dtype)
    for q in range(k):
        out[:, q, q : q + t] = codes[:, q]
    return out


def undo_delay(delayed: np.ndarray) -> np.ndarray:
    """The delay pattern [B, K, S] → codes [B, K, S - K + 1]."""
    k, t = delayed.shape[1], delayed.shape[2] - delayed.shape[1] + 1
    return np.stack([delayed[:, q, q : q + t] for q in range(k)], axis=1)


def ar_generate(init_fn: InitFn, step_fn: StepFn, batch: int, frames: int, k: int, card: int, options: ArOptions = ArOptions(),
                prompt: np.ndarray | None = None, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Codes [B, K, frames] (int64) one delay-pattern step at a time (frames + K - 1 steps); the
    pattern's empty slots are EMPTY = card + 1 (also the start token), ``prompt`` [B, K, P] (P <=
    frames) is fed instead of sampled. Guidance: null + cfg (cond - null), two caches."""
    _check_sizes(batch, frames, k, card)
    prompt = _check_prompt(prompt, batch, k, card)
    if prompt.shape[2] > frames:
        raise SpeechkitError(f"the prompt ({prompt.shape[2]} frames) is longer than the {frames} frames to generate")
    rng = _rng(rng)
    empty, free = card + 1, -1
    codes = np.full((batch, k, frames), free, dtype=np.int64)
    codes[:, :, : prompt.shape[2]] = prompt
    forced = apply_delay(codes, empty)  # EMPTY slots and prompt tokens; ``free`` where to sample
    guided = options.cfg != 1.0
    cache = init_fn(False)
    null_cache = init_fn(True) if guided else None
    x = np.full((batch, k), empty, dtype=np.int64)
    out = np.empty_like(forced)
    for j in range(forced.shape[2]):
        logits, cache = step_fn(x, cache)
        logits = np.asarray(logits, dtype=np.float32)
        if guided:
            null, null_cache = step_fn(x, null_cache)
            logits = np.asarray(null, dtype=np.float32) + np.float32(options.cfg) * (logits - np.asarray(null, dtype=np.float32))
        u = rng.random((batch, k))
        drawn = sample_tokens(logits.reshape(batch * k, card), u.reshape(-1), options.temperature, options.top_k, options.top_p)
        x = np.where(forced[:, :, j] == free, drawn.reshape(batch, k), forced[:, :, j])
        out[:, :, j] = x
    return undo_delay(out)


def hybrid_generate(logits_fn: LogitsFn, init_fn: InitFn, step_fn: StepFn, batch: int, frames: int, k: int, card: int,
                    ar_frames: int, magnet: MagnetOptions = MagnetOptions(), ar: ArOptions = ArOptions(),
                    prompt: np.ndarray | None = None, rescore_fn: RescoreFn | None = None,
                    rng: np.random.Generator | int | None = None, sampler=None) -> np.ndarray:
    """Codes [B, K, frames]: the first ``ar_frames`` autoregressively (after ``prompt``, if any),
    the rest by MAGNeT with all of them as its fixed prompt."""
    _check_sizes(batch, frames, k, card)
    p = 0 if prompt is None else np.asarray(prompt).shape[-1]
    if not p < ar_frames < frames:
        raise SpeechkitError(f"ar_frames must lie between the prompt ({p} frames) and the {frames} frames to generate, got {ar_frames}")
    rng = _rng(rng)
    head = ar_generate(init_fn, step_fn, batch, ar_frames, k, card, ar, prompt=prompt, rng=rng)
    return magnet_generate(logits_fn, batch, frames, k, card, magnet, prompt=head, rescore_fn=rescore_fn, rng=rng, sampler=sampler)
