"""SpecAugment (Park et al., 2019) on batched features: frequency and time masks.

It draws from the global generator of the features' device (no host round trip, so no device
sync), so a resumed run that restores the RNG states masks the same frames as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SpecAugConfig:
    num_freq_masks: int = 2
    freq_mask_width: int = 27
    num_time_masks: int = 10
    time_mask_ratio: float = 0.05  # widest time mask as a fraction of the utterance


class SpecAugment(nn.Module):
    def __init__(self, cfg: SpecAugConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """feats (B, T, F), lengths (B,) → masked copy (masked bins set to 0, the CMVN mean)."""
        if not self.training:
            return feats
        b, t, f = feats.shape
        dev = feats.device
        keep = torch.ones(b, t, f, dtype=torch.bool, device=dev)
        bins = torch.arange(f, device=dev)
        frames = torch.arange(t, device=dev)
        for _ in range(self.cfg.num_freq_masks):
            width = torch.randint(0, self.cfg.freq_mask_width + 1, (b, 1), device=dev)
            start = (torch.rand(b, 1, device=dev) * (f - width).clamp(min=1)).long()
            keep &= ~((bins >= start) & (bins < start + width)).unsqueeze(1)
        max_w = (lengths.float() * self.cfg.time_mask_ratio).long().clamp(min=0).unsqueeze(1)  # (B, 1)
        for _ in range(self.cfg.num_time_masks):
            width = (torch.rand(b, 1, device=dev) * (max_w + 1)).long()
            start = (torch.rand(b, 1, device=dev) * (lengths.unsqueeze(1) - width).clamp(min=1)).long()
            keep &= ~((frames >= start) & (frames < start + width)).unsqueeze(2)
        return feats * keep
