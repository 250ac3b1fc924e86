"""Convolutional front ends that shorten the frame rate before the encoder blocks."""

from __future__ import annotations

import torch
from torch import nn


class Conv2dSubsampling4(nn.Module):
    """Two 3x3 stride-2 convolutions: 4x fewer frames (10 ms → 40 ms), then a projection to d_model."""

    factor = 4

    def __init__(self, input_size: int, d_model: int, channels: int | None = None):
        super().__init__()
        channels = channels or d_model
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, 2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2), nn.ReLU(),
        )
        freq = ((input_size - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq, d_model)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ((lengths - 1) // 2 - 1) // 2

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B: batch, T: frames, F: features, D: d_model.  x (B, T, F) → (B, T', D), T' = ((T-1)//2-1)//2."""
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        return x, self.output_lengths(lengths)
