"""Conformer encoder (Gulati et al., 2020): macaron feed-forwards around relative-position
self-attention and a depthwise convolution module, after 4x convolutional subsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkit.errors import SpeechkitError
from speechkit.nn.attention import RelPositionalEncoding, RelPositionMultiHeadAttention
from speechkit.nn.subsampling import Conv2dSubsampling4


@dataclass(frozen=True)
class ConformerConfig:
    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 1024
    num_blocks: int = 12
    cnn_module_kernel: int = 31
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    subsampling_channels: int | None = None


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm (batch-independent, unlike BatchNorm), SiLU, pointwise."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        assert kernel_size % 2 == 1, "cnn_module_kernel must be odd"
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pad_mask (B, T) True on valid frames → (B, T, D)."""
        x = nn.functional.glu(self.pointwise_in(x.transpose(1, 2)), dim=1)
        x = x.masked_fill(~pad_mask.unsqueeze(1), 0.0)  # padding must not leak into valid frames
        x = self.depthwise(x)
        x = nn.functional.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        return self.pointwise_out(x).transpose(1, 2)


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        d = cfg.output_size
        self.ff1 = FeedForward(d, cfg.linear_units, cfg.dropout_rate)
        self.ff2 = FeedForward(d, cfg.linear_units, cfg.dropout_rate)
        self.attn = RelPositionMultiHeadAttention(d, cfg.attention_heads, cfg.attention_dropout_rate)
        self.conv = ConvolutionModule(d, cfg.cnn_module_kernel)
        self.norm_ff1, self.norm_attn, self.norm_conv, self.norm_ff2, self.norm_out = (nn.LayerNorm(d) for _ in range(5))
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, att_mask: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.dropout(self.ff1(self.norm_ff1(x)))
        y = self.norm_attn(x)
        x = x + self.dropout(self.attn(y, y, pos_emb, att_mask))
        x = x + self.dropout(self.conv(self.norm_conv(x), pad_mask))
        x = x + 0.5 * self.dropout(self.ff2(self.norm_ff2(x)))
        return self.norm_out(x)


class ConformerEncoder(nn.Module):
    """Full-context conformer: every frame attends to the whole utterance."""

    def __init__(self, cfg: ConformerConfig, input_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = Conv2dSubsampling4(input_size, cfg.output_size, cfg.subsampling_channels)
        self.pos_enc = RelPositionalEncoding(cfg.output_size, cfg.dropout_rate)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_blocks))
        self.xscale = cfg.output_size**0.5

    @property
    def output_size(self) -> int:
        return self.cfg.output_size

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, att_context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """B: batch, T: feature frames, F: mel bins, T': T/4, D: output_size.

        feats (B, T, F), feat_lens (B,) valid frames → (B, T', D), valid lengths (B,).
        ``att_context`` must be None or (-1, -1): this encoder only has full context.
        """
        if att_context is not None and tuple(att_context) != (-1, -1):
            raise SpeechkitError(f"the conformer encoder has full context only, not {tuple(att_context)}; train a streaming_conformer")
        x, lens = self.embed(feats, feat_lens)
        x = x * self.xscale
        t = x.shape[1]
        pad_mask = torch.arange(t, device=x.device)[None, :] < lens[:, None]  # (B, T')
        att_mask = pad_mask.unsqueeze(1)  # (B, 1, T'): every query sees every valid key
        pos_emb = self.pos_enc(t, t, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, pos_emb, att_mask, pad_mask)
        return x, lens
