"""MAGNeT's training masks (arXiv 2401.04577, sec. 3.1 and appendix C): a mask rate from the
cosine schedule, met on average by spans of ``span`` frames whose starts are drawn at random.

How many starts. m distinct starts drawn uniformly from the T frames, each masking itself and the
``l - 1`` frames after it (cut at the end). Frame t stays unmasked when no start falls among the
n_t = min(t + 1, l) frames that would cover it, which has probability C(T - n_t, m) / C(T, m).
So the expected masked fraction is

    E(m) = 1 - (1 / T) * sum_t C(T - n_t, m) / C(T, m)

(away from the start every n_t = l, giving the paper's 1 - C(T - l, m) / C(T, m); we keep the
first frames' shorter n_t so that E is exact for every T). E grows with m, from 0 to 1; for a
target rate r we take m_lo, the largest m with E(m) <= r, and m_lo + 1 with probability
(r - E(m_lo)) / (E(m_lo + 1) - E(m_lo)), so that the mean masked fraction is r itself rather than
r rounded to the nearest attainable E(m). C(T - n, m) / C(T, m) = prod_{j<m} (T - n - j) / (T - j)
is formed as a running product (no overflow).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_rate(u: Tensor) -> Tensor:
    """The cosine schedule γ(u) = cos(π u / 2): u = 0 masks everything, u = 1 nothing."""
    return torch.cos(u * (math.pi / 2))


def sample_mask_rate(batch: int, device=None, generator: torch.Generator | None = None) -> Tensor:
    """Training mask rates [B]: γ(u) with u ~ U(0, 1) per item."""
    return cosine_rate(torch.rand(batch, device=device, generator=generator))


@lru_cache(maxsize=64)
def expected_coverage(frames: int, span: int) -> np.ndarray:
    """E(m) for m = 0 .. T (float64 [T + 1]): the mean fraction of ``frames`` masked by m distinct
    uniform span starts (see the module doc). Read-only; cached per (T, l)."""
    t, m = frames, np.arange(frames, dtype=np.float64)
    uncovered = np.zeros(frames + 1)
    for n in range(1, min(span, frames) + 1):
        # C(T - n, m) / C(T, m) for m = 0..T: the running product of (T - n - j) / (T - j), j < m
        ratio = np.concatenate([[1.0], np.cumprod(np.maximum(t - n - m, 0.0) / (t - m))])
        frames_with_n = 1 if n < span else t - span + 1  # n_t = n for one frame each below l, l for the rest
        uncovered += frames_with_n * ratio
    table = 1.0 - uncovered / t
    table.setflags(write=False)
    return table


@lru_cache(maxsize=64)
def _coverage_on(frames: int, span: int, device: torch.device) -> Tensor:
    """``expected_coverage`` as a tensor on ``device``, copied there once (no copy per step)."""
    return torch.tensor(expected_coverage(frames, span), device=device)


def spans_for_rate(rate: Tensor, frames: int, span: int, generator: torch.Generator | None = None) -> Tensor:
    """Span starts m [B] (int64) whose expected masked fraction is ``rate`` [B] (in [0, 1]) on
    average: m_lo or m_lo + 1, drawn (see the module doc)."""
    table = _coverage_on(frames, span, rate.device)
    r = rate.to(torch.float64).clamp(0.0, 1.0)
    lo = (torch.searchsorted(table, r, right=True) - 1).clamp(0, frames - 1)
    e_lo, e_hi = table[lo], table[lo + 1]
    p_up = ((r - e_lo) / (e_hi - e_lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    up = torch.rand(rate.shape, device=rate.device, generator=generator, dtype=torch.float64) < p_up
    return lo + up.long()


def span_mask(rate: Tensor, frames: int, span: int, min_spans: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """B: batch, T: frames. Mask rates [B] → span mask [B, T] (bool, True = masked) whose masked
    fraction is ``rate`` on average; at least ``min_spans`` spans per item (training: every item
    has a loss)."""
    if frames < 1 or span < 1:
        raise ValueError(f"span_mask needs frames >= 1 and span >= 1, got {frames}, {span}")
    b = rate.shape[0]
    m = spans_for_rate(rate, frames, span, generator).clamp(min_spans, frames)
    # the positions holding the m smallest of a random permutation's values: a uniform m-subset
    perm = torch.rand(b, frames, device=rate.device, generator=generator).argsort(dim=-1)
    starts = (perm < m[:, None]).float()
    covered = F.max_pool1d(F.pad(starts[:, None], (span - 1, 0)), span, stride=1)[:, 0]
    return covered > 0
