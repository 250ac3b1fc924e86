"""Continuous integrate-and-fire (CIF, Dong & Xu 2020), as Paraformer uses it.

Each encoder frame t carries a weight α_t. Weights are summed left to right; every time the sum
crosses a multiple of the threshold β a token "fires", and its acoustic embedding is the
α-weighted sum of the frames integrated since the previous fire, a frame's weight split between
the two tokens at the crossing.

We write this without a loop: with C_t = α_1 + … + α_t, frame t gives token k the length of the
overlap of [C_{t-1}, C_t] with [(k-1)β, kβ]. The overlap matrix W (K, T) is exact (a frame may
even fire several tokens), differentiable in α, and exports to ONNX as plain tensor ops, so the
integrate-and-fire step lives inside the exported graph. Embeddings are W @ h.

At the end of an utterance a residual sum r < β is left over; a tail token fires when
r ≥ β - tail_threshold (FunASR's rule of adding tail_threshold to the sum), its embedding the
residual integration.
"""

from __future__ import annotations

import torch
from torch import nn


class CifPredictor(nn.Module):
    """α from the encoder: depthwise-context conv + ReLU with a residual, a linear map, sigmoid."""

    def __init__(self, d_model: int, kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, 1)

    def forward(self, enc: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        """enc (B, T, D), enc_lens (B,) → α (B, T) float32, zero on padding."""
        mask = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
        x = enc.masked_fill(~mask[..., None], 0.0)
        x = x + torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        alphas = torch.sigmoid(self.proj(self.dropout(x)).squeeze(-1).float())
        return alphas * mask


def scale_alphas(alphas: torch.Tensor, target_lens: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Training: rescale each utterance's α so they sum to exactly target_len · β."""
    total = alphas.sum(dim=1, keepdim=True).clamp(min=1e-6)
    return alphas * (target_lens[:, None].to(alphas.dtype) * threshold / total)


def quantity_loss(alphas: torch.Tensor, target_lens: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """|Σα / β − N| summed over the batch and divided by B (the trainer's normalisation)."""
    return (alphas.sum(dim=1) / threshold - target_lens.to(alphas.dtype)).abs().sum() / alphas.shape[0]


def token_counts(alphas: torch.Tensor, threshold: float = 1.0, tail_threshold: float = 0.45) -> torch.Tensor:
    """Tokens CIF fires for each utterance, tail included: (B,) int64."""
    total = alphas.sum(dim=1) / threshold
    fired = torch.floor(total + 1e-4)  # a sum of exactly k must fire k tokens despite rounding
    tail = (total - fired) >= (1.0 - tail_threshold)
    return (fired + tail.to(fired.dtype)).long()


def cif_weights(alphas: torch.Tensor, num_tokens: torch.Tensor | int, threshold: float = 1.0) -> torch.Tensor:
    """α (B, T) → W (B, K, T): the share of frame t integrated into token k.

    ``num_tokens`` is K, a Python int or a 0-d tensor (kept as a tensor so ONNX sees a dynamic
    size). Rows past an utterance's own token count hold its leftover weight or zeros; callers mask
    them by the per-utterance count.
    """
    alphas = alphas.float()
    upper_c = torch.cumsum(alphas, dim=1)  # C_t
    lower_c = upper_c - alphas  # C_{t-1}
    levels = torch.arange(num_tokens, device=alphas.device, dtype=alphas.dtype) * threshold  # (K,) = (k-1)β
    hi = torch.minimum(upper_c[:, None, :], levels[None, :, None] + threshold)
    lo = torch.maximum(lower_c[:, None, :], levels[None, :, None])
    return (hi - lo).clamp(min=0.0)


def cif(enc: torch.Tensor, alphas: torch.Tensor, num_tokens: torch.Tensor | int, threshold: float = 1.0) -> torch.Tensor:
    """Integrate-and-fire: enc (B, T, D), α (B, T) → token embeddings (B, K, D) in float32."""
    return torch.bmm(cif_weights(alphas, num_tokens, threshold), enc.float())
