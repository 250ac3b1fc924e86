"""A MusicGen-style autoregressive baseline (arXiv 2306.05284) over the same token streams: the
delay pattern shifts codebook k right by k frames, so one causal step predicts all K codebooks
(codebook k of frame j - k at step j) and a T-frame clip takes T + K - 1 steps.

The causal transformer uses MAGNeT's block (``magnet.MusicBlock``) with the same caption encoder.
Input tables have card + 2 rows per codebook: MASK = card (a token not known: MAGNeT's higher
codebooks when this model rescores a partial sequence) and EMPTY = card + 1 (the pattern's empty
slots and the start token). Training feeds ``mask_higher_prob`` of the items with their codebooks
above a random level q as MASK (loss on levels <= q only), so ``score`` of a sequence whose
higher codebooks are unknown is a proper conditional, not a guess.

KV cache (explicit tensors; N layers, B streams, H heads, M cached steps, L caption states):
  keys, values         [N, B, H, M, d]  self-attention (keys rotated), grows by one step per call
  text_keys, text_vals [N, B, H, L, d]  each layer's cross-attention of the caption, computed once
  text_mask            [B, L]           bool
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechkit.errors import SpeechkitError
from speechkit.models.audiogen.config import DelayArConfig
from speechkit.models.audiogen.magnet import MusicBlock
from speechkit.models.audiogen.text import PAD, TextEncoder, null_captions
from speechkit.nn.attention import sinusoidal_positions
from speechkit.nn.dit import RMSNorm, rotary_tables


def apply_delay(codes: Tensor, fill: int) -> Tensor:
    """codes [B, K, T] → the delay pattern [B, K, T + K - 1]: codebook k at steps k .. k + T - 1,
    ``fill`` elsewhere."""
    b, k, t = codes.shape
    out = codes.new_full((b, k, t + k - 1), fill)
    for q in range(k):
        out[:, q, q : q + t] = codes[:, q]
    return out


def undo_delay(delayed: Tensor) -> Tensor:
    """The delay pattern [B, K, S] → codes [B, K, S - K + 1] (inverse of ``apply_delay``)."""
    k, t = delayed.shape[1], delayed.shape[2] - delayed.shape[1] + 1
    return torch.stack([delayed[:, q, q : q + t] for q in range(k)], dim=1)


class ArCache(NamedTuple):
    keys: Tensor
    values: Tensor
    text_keys: Tensor
    text_values: Tensor
    text_mask: Tensor


class DelayAR(nn.Module):
    def __init__(self, cfg: DelayArConfig):
        super().__init__()
        self.cfg = cfg
        k, card, d = cfg.codebooks, cfg.card, cfg.d_model
        self.text = TextEncoder(cfg.text, d, cfg.dropout)
        self.embed = nn.Embedding(k * (card + 2), d)
        self.register_buffer("offsets", torch.arange(k) * (card + 2), persistent=False)
        self.blocks = nn.ModuleList(MusicBlock(d, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers))
        self.norm = RMSNorm(d)
        self.heads = nn.Linear(d, k * card)

    @property
    def mask_id(self) -> int:
        return self.cfg.card

    @property
    def empty_id(self) -> int:
        return self.cfg.card + 1

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        """Input tokens [B, K, N] of steps ``start`` .. → the sum of their embeddings and absolute
        sinusoidal positions [B, N, D] (as MAGNeT's)."""
        x = self.embed(tokens + self.offsets[:, None]).sum(dim=1)
        return x + sinusoidal_positions(start + tokens.shape[2], x.shape[-1], x.device, x.dtype)[start:]

    def _logits(self, h: Tensor) -> Tensor:
        """Hidden [B, S, D] → [B, K, S, card]."""
        b, s, _ = h.shape
        return self.heads(self.norm(h)).view(b, s, self.cfg.codebooks, self.cfg.card).transpose(1, 2)

    def inputs(self, codes: Tensor) -> Tensor:
        """codes [B, K, T] (MASK allowed) → the teacher-forced input [B, K, T + K - 1]: the delay
        pattern shifted right by one step behind an EMPTY start column."""
        delayed = apply_delay(codes, self.empty_id)
        return torch.cat([torch.full_like(delayed[:, :, :1], self.empty_id), delayed[:, :, :-1]], dim=2)

    def forward(self, inputs: Tensor, text_states: Tensor, text_mask: Tensor) -> Tensor:
        """B: batch, K: codebooks, S: steps, L: caption states, D: d_model.

        inputs [B, K, S] (the delayed tokens of the step before; EMPTY at the start), text_states
        [B, L, D], text_mask [B, L] bool → logits [B, K, S, card] of each step's tokens (causal).
        """
        x = self._embed(inputs, 0)
        s = x.shape[1]
        cos, sin = rotary_tables(torch.arange(s, device=x.device), self.blocks[0].head_dim, x.dtype)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()[None, None]
        for block in self.blocks:
            x, _, _ = block(x, cos, sin, causal, *block.text_kv(text_states), text_mask)
        return self._logits(x)

    def loss(self, codes: Tensor, text_tokens: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """codes [B, K, T] int64 in 0..card-1, text_tokens [B, L], lengths [B] valid frames or None
        → (cross-entropy over every real slot of the pattern, metrics ``acc`` and ``acc_q{k}``:
        detached 0-d tensors)."""
        b, k, t = codes.shape
        if k != self.cfg.codebooks or t > self.cfg.max_frames:
            raise SpeechkitError(f"the AR model takes [B, {self.cfg.codebooks}, <= {self.cfg.max_frames}] codes, got {list(codes.shape)}")
        dev = codes.device
        level = torch.arange(k, device=dev)[None, :, None]
        known = torch.ones(b, k, t, dtype=torch.bool, device=dev)
        if lengths is not None:
            known = known & (torch.arange(t, device=dev)[None, None] < lengths[:, None, None])
        if self.training and self.cfg.mask_higher_prob > 0 and k > 1:
            top = torch.where(torch.rand(b, device=dev) < self.cfg.mask_higher_prob,
                              torch.randint(k - 1, (b,), device=dev), torch.full((b,), k - 1, device=dev))
            higher = level > top[:, None, None]
            codes_in, known = codes.masked_fill(higher, self.mask_id), known & ~higher
        else:
            codes_in = codes
        if self.training and self.cfg.cond_dropout > 0:
            text_tokens = null_captions(text_tokens, torch.rand(b, device=dev) < self.cfg.cond_dropout)
        logits = self(self.inputs(codes_in), *self.text(text_tokens))
        target = apply_delay(codes, 0)
        w = apply_delay(known, False).float()
        ce = F.cross_entropy(logits.float().permute(0, 3, 1, 2), target, reduction="none")
        loss = (ce * w).sum() / w.sum().clamp(min=1)
        with torch.no_grad():
            hit = (logits.argmax(-1) == target).float() * w
            metrics = {"acc": hit.sum() / w.sum().clamp(min=1)}
            for q in range(k):
                metrics[f"acc_q{q}"] = hit[:, q].sum() / w[:, q].sum().clamp(min=1)
        return loss, metrics

    @torch.no_grad()
    def score(self, codes: Tensor, text_tokens: Tensor) -> Tensor:
        """Teacher-forced log-probability of each given token: codes [B, K, T] (MASK where
        unknown: such tokens score 0 and are fed as MASK), captions [B, L] → logp [B, K, T]."""
        logp = self(self.inputs(codes), *self.text(text_tokens)).float().log_softmax(-1)
        target = apply_delay(codes, 0)
        got = logp.gather(-1, target.clamp(max=self.cfg.card - 1)[..., None])[..., 0]
        return undo_delay(got).masked_fill(codes >= self.cfg.card, 0.0)

    # -- incremental decoding

    def init_cache(self, text_states: Tensor, text_mask: Tensor) -> ArCache:
        """An empty cache for captions encoded by ``self.text`` ([B, L, D], [B, L])."""
        kv = [block.text_kv(text_states) for block in self.blocks]
        tk, tv = torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])
        n, b, h, _, d = tk.shape
        empty = tk.new_zeros(n, b, h, 0, d)
        return ArCache(empty, empty, tk, tv, text_mask)

    def step(self, tokens: Tensor, cache: ArCache) -> tuple[Tensor, ArCache]:
        """tokens [B, K] (one step) or [B, K, N] (N steps, e.g. a prompt on an empty cache): the
        inputs after the M cached steps → logits [B, K, card] (or [B, K, N, card]), the cache
        grown by N. Equals ``forward`` on the whole input."""
        one = tokens.dim() == 2
        tokens = tokens[..., None] if one else tokens
        m, n = cache.keys.shape[3], tokens.shape[2]
        x = self._embed(tokens, m)
        cos, sin = rotary_tables(torch.arange(m, m + n, device=x.device), self.blocks[0].head_dim, x.dtype)
        mask = torch.ones(n, m + n, dtype=torch.bool, device=x.device).tril(m)[None, None]
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, cos, sin, mask, cache.text_keys[i], cache.text_values[i], cache.text_mask, cache.keys[i], cache.values[i])
            keys.append(k)
            values.append(v)
        logits = self._logits(x)
        return (logits[:, :, 0] if one else logits), cache._replace(keys=torch.stack(keys), values=torch.stack(values))

    @torch.no_grad()
    def decoding_fns(self, text_tokens: Tensor) -> tuple[Callable[[bool], ArCache], Callable[[np.ndarray, ArCache], tuple[np.ndarray, ArCache]]]:
        """``init_fn(null_text) -> cache`` and ``step_fn(tokens [B, K], cache) -> (logits [B, K,
        card] float32, cache)`` on numpy for ``speechkit.decoding.magnet.ar_generate``, captions
        [B, L]. Call in eval mode."""
        cond = self.text(text_tokens)
        null = self.text(torch.full_like(text_tokens[:, :1], PAD))
        device = text_tokens.device

        def init_fn(null_text: bool) -> ArCache:
            return self.init_cache(*(null if null_text else cond))

        @torch.no_grad()
        def step_fn(tokens: np.ndarray, cache: ArCache) -> tuple[np.ndarray, ArCache]:
            logits, cache = self.step(torch.from_numpy(tokens).to(device), cache)
            return logits.float().cpu().numpy(), cache

        return init_fn, step_fn

    def rescore_fn(self, text_tokens: Tensor) -> Callable[[np.ndarray], np.ndarray]:
        """MAGNeT's ``rescore_fn``: numpy tokens [B, K, T] (MASK = card where not yet decoded) →
        log-probs [B, K, T] float32. Call in eval mode."""
        device = text_tokens.device

        def rescore(tokens: np.ndarray) -> np.ndarray:
            return self.score(torch.from_numpy(tokens).to(device), text_tokens).cpu().numpy()

        return rescore
