"""MAGNeT (arXiv 2401.04577): one non-autoregressive transformer over RVQ token streams, trained to
fill in masked spans of one codebook (the *stage*) given the codebooks below it and a caption.

Input: the sum of K codebook embeddings per frame (each table has card + 1 rows, the last is
MASK) and absolute sinusoidal positions; pre-norm blocks of self-attention (rotary), cross-attention
to the caption (``text.TextEncoder``) and an MLP; then the stage's output head. Stage q sees
codebooks < q as they are, codebook q span-masked and codebooks > q fully masked.

Restricted attention: stages >= 1 attend within +-``window`` frames only (fine RVQ levels depend
on local context; the paper's sec. 3.2), stage 0 everywhere. The mask is built from shapes and a
stage tensor, so ``forward`` traces to one ONNX graph for every stage.

Training (``loss``): per item a stage, a mask rate γ(u) = cos(π u / 2), a span mask meeting it on
average (``masking.py``); cross-entropy on the masked frames of the stage's codebook only;
``cond_dropout`` of the items get the empty caption, which is the null condition of
classifier-free guidance. Decoding lives in ``speechkit/decoding/magnet.py`` (numpy).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.functional import scaled_dot_product_attention

from speechkit.errors import SpeechkitError
from speechkit.models.audiogen.config import MagnetConfig
from speechkit.models.audiogen.masking import sample_mask_rate, span_mask
from speechkit.models.audiogen.text import PAD, TextEncoder, null_captions
from speechkit.nn.attention import sinusoidal_positions
from speechkit.nn.dit import RMSNorm, rotary_tables, rotate


def stage_tensor(stage: int | Tensor, batch: int, device) -> Tensor:
    """A stage as an int, a 0-d tensor or one per item [B] → [B] int64."""
    stage = stage.to(device, torch.long) if isinstance(stage, Tensor) else torch.tensor(stage, dtype=torch.long, device=device)
    return stage.reshape(-1).expand(batch)


def restricted_attention_mask(frames: int, window: int | None, stage: Tensor, lengths: Tensor | None = None) -> Tensor:
    """T: frames, B: batch. → [B, 1, T, T] bool, True where query frame i may attend key frame j:
    |i - j| <= ``window`` for items whose ``stage`` [B] is >= 1, every frame for stage 0 (and for
    every stage when ``window`` is None). Keys at or past ``lengths`` [B] are masked, except a
    frame's own key (no empty rows)."""
    idx = torch.arange(frames, device=stage.device)
    allowed = torch.ones(frames, frames, dtype=torch.bool, device=stage.device)[None]
    if window is not None:
        band = (idx[:, None] - idx[None, :]).abs() <= window
        allowed = band[None] | (stage == 0)[:, None, None]
    if lengths is not None:
        own = torch.eye(frames, dtype=torch.bool, device=stage.device)
        allowed = allowed & ((idx[None, :] < lengths[:, None])[:, None, :] | own[None])
    return allowed.expand(stage.shape[0], frames, frames)[:, None]


class MusicBlock(nn.Module):
    """Pre-norm self-attention (rotary), cross-attention to the caption states, MLP. Shared by
    MAGNeT (non-causal, banded) and the delay-pattern AR model (causal, with a KV cache)."""

    def __init__(self, d_model: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.norm_self = RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_self = nn.Linear(d_model, d_model)
        self.norm_cross = nn.LayerNorm(d_model)
        self.q_cross = nn.Linear(d_model, d_model)
        self.kv_cross = nn.Linear(d_model, 2 * d_model)
        self.out_cross = nn.Linear(d_model, d_model)
        self.norm_ff = RMSNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(approximate="tanh"), nn.Linear(ff, d_model))
        self.drop = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2).flatten(2)

    def text_kv(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """Caption states [B, L, D] → cross-attention keys, values [B, H, L, d]."""
        k, v = self.kv_cross(text).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, text_k: Tensor, text_v: Tensor,
                text_mask: Tensor, past_k: Tensor | None = None, past_v: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """N: positions of this call, M: cached positions before them, L: caption states.

        x [B, N, D]; cos, sin [N, d / 2] rotary tables of the N positions; mask [B|1, 1, N, M+N]
        bool (True = may attend) or None (everywhere); text_k, text_v [B, H, L, d]; text_mask
        [B, L] bool; past_k, past_v [B, H, M, d] (rotated) or None → x [B, N, D], the keys (rotated)
        and values [B, H, M+N, d] of the cache and this call together.
        """
        q, k, v = (self._heads(t) for t in self.qkv(self.norm_self(x)).chunk(3, dim=-1))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        x = x + self.drop(self.out_self(self._merge(scaled_dot_product_attention(q, k, v, attn_mask=mask))))
        qc = self._heads(self.q_cross(self.norm_cross(x)))
        a = scaled_dot_product_attention(qc, text_k, text_v, attn_mask=text_mask[:, None, None, :])
        x = x + self.drop(self.out_cross(self._merge(a)))
        return x + self.drop(self.ff(self.norm_ff(x))), k, v


class Magnet(nn.Module):
    def __init__(self, cfg: MagnetConfig):
        super().__init__()
        self.cfg = cfg
        k, card, d = cfg.codebooks, cfg.card, cfg.d_model
        self.text = TextEncoder(cfg.text, d, cfg.dropout)
        self.embed = nn.Embedding(k * (card + 1), d)  # codebook q's rows: q * (card + 1) ..; the last of each is MASK
        self.register_buffer("offsets", torch.arange(k) * (card + 1), persistent=False)
        self.blocks = nn.ModuleList(MusicBlock(d, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers))
        self.norm = RMSNorm(d)
        self.head_weight = nn.Parameter(torch.randn(k, card, d) * d**-0.5)  # one head per stage, gathered by stage
        self.head_bias = nn.Parameter(torch.zeros(k, card))

    @property
    def mask_id(self) -> int:
        return self.cfg.card

    def embed_codes(self, tokens: Tensor) -> Tensor:
        """tokens [B, K, T] (0..card-1, MASK = card) → the sum of the K embeddings and of absolute
        sinusoidal positions [B, T, D] (rotary attention alone is blind to where a fully masked
        clip starts and ends)."""
        x = self.embed(tokens + self.offsets[:, None]).sum(dim=1)
        return x + sinusoidal_positions(tokens.shape[2], x.shape[-1], x.device, x.dtype)

    def hidden(self, x: Tensor, text_states: Tensor, text_mask: Tensor, stage: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Embedded frames x [B, T, D] → final hidden states [B, T, D]; ``stage`` [B]."""
        frames = x.shape[1]
        cos, sin = rotary_tables(torch.arange(frames, device=x.device), self.blocks[0].head_dim, x.dtype)
        mask = restricted_attention_mask(frames, self.cfg.window, stage, lengths)
        for block in self.blocks:
            x, _, _ = block(x, cos, sin, mask, *block.text_kv(text_states), text_mask)
        return self.norm(x)

    def head(self, h: Tensor, stage: Tensor) -> Tensor:
        """Hidden [B, T, D] → the stage's logits [B, T, card]; ``stage`` [B]."""
        return torch.matmul(h, self.head_weight[stage].transpose(1, 2).to(h.dtype)) + self.head_bias[stage][:, None].to(h.dtype)

    def forward(self, tokens: Tensor, text_states: Tensor, text_mask: Tensor, stage: int | Tensor,
                lengths: Tensor | None = None) -> Tensor:
        """B: batch, K: codebooks, T: frames, L: caption states (``self.text``'s output), D: d_model.

        tokens [B, K, T] int64 (MASK = card where unknown), text_states [B, L, D], text_mask [B, L]
        bool, stage: int, 0-d or [B] tensor, lengths [B] valid frames or None (all) → logits of
        the stage's codebook [B, T, card].
        """
        stage = stage_tensor(stage, tokens.shape[0], tokens.device)
        return self.head(self.hidden(self.embed_codes(tokens), text_states, text_mask, stage, lengths), stage)

    def mask_for_stage(self, codes: Tensor, stage: Tensor, spans: Tensor) -> Tensor:
        """The training input: codes [B, K, T] with codebook ``stage`` [B] masked on ``spans``
        [B, T] and every higher codebook everywhere."""
        level = torch.arange(codes.shape[1], device=codes.device)[None, :, None]
        st = stage[:, None, None]
        return codes.masked_fill((level > st) | ((level == st) & spans[:, None, :]), self.mask_id)

    def loss(self, codes: Tensor, text_tokens: Tensor, stage: int | Tensor | None = None,
             lengths: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """B: batch, K: codebooks, T: frames, L: caption tokens.

        codes [B, K, T] int64 in 0..card-1, text_tokens [B, L] (PAD = 0), stage: int, [B] or None
        (per item, every stage in every batch of >= K items: (r + i) mod K with a random r),
        lengths [B] valid frames or None → (cross-entropy over the masked frames of each item's
        stage, metrics: ``acc`` and ``acc_q{k}`` on those frames, ``masked`` fraction; detached
        0-d tensors, no host sync).
        """
        b, k, t = codes.shape
        if k != self.cfg.codebooks or t > self.cfg.max_frames:
            raise SpeechkitError(f"MAGNeT takes [B, {self.cfg.codebooks}, <= {self.cfg.max_frames}] codes, got {list(codes.shape)}")
        dev = codes.device
        if stage is None:
            stage = (torch.randint(k, (1,), device=dev) + torch.arange(b, device=dev)) % k
        stage = stage_tensor(stage, b, dev)
        spans = span_mask(sample_mask_rate(b, dev), t, self.cfg.span)
        if lengths is not None:
            spans = spans & (torch.arange(t, device=dev)[None] < lengths[:, None])
        if self.training and self.cfg.cond_dropout > 0:
            text_tokens = null_captions(text_tokens, torch.rand(b, device=dev) < self.cfg.cond_dropout)
        logits = self(self.mask_for_stage(codes, stage, spans), *self.text(text_tokens), stage, lengths)
        target = codes.gather(1, stage[:, None, None].expand(b, 1, t))[:, 0]
        ce = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")
        w = spans.float()
        loss = (ce * w).sum() / w.sum().clamp(min=1)
        with torch.no_grad():
            hit = (logits.argmax(-1) == target).float() * w
            metrics = {"acc": hit.sum() / w.sum().clamp(min=1), "masked": w.mean()}
            for q in range(k):
                on = (stage == q).float()[:, None]
                metrics[f"acc_q{q}"] = (hit * on).sum() / (w * on).sum().clamp(min=1)
        return loss, metrics

    @torch.no_grad()
    def logits_fn(self, text_tokens: Tensor, on_device: bool = False) -> Callable[[np.ndarray, int, bool], np.ndarray | Tensor]:
        """The decoder's ``logits_fn`` (``speechkit.decoding.magnet``) for captions [B, L]: numpy
        tokens [B, K, T], stage, null_text → float32 logits [B, T, card], as numpy, or with
        ``on_device`` as a tensor left on the model's device (for a torch sampler). Call in eval mode."""
        cond = self.text(text_tokens)
        null = self.text(torch.full_like(text_tokens[:, :1], PAD))
        device = text_tokens.device

        @torch.no_grad()
        def logits(tokens: np.ndarray, stage: int, null_text: bool) -> np.ndarray:
            states, mask = null if null_text else cond
            out = self(torch.from_numpy(tokens).to(device), states, mask, stage).float()
            return out if on_device else out.cpu().numpy()

        return logits
