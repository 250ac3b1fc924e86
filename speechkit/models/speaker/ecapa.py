"""ECAPA-TDNN (Desplanques et al., 2020): SE-Res2Net blocks with growing dilations, multi-layer
feature aggregation and attentive statistics pooling with global context, from fbank to one
fixed-size speaker embedding; and the additive angular margin softmax (AAM, ArcFace) it is
trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechkit.errors import ConfigError

ENCODERS = ("ecapa",)


@dataclass(frozen=True)
class EcapaConfig:
    num_mel_bins: int = 80
    channels: int = 512  # of the SE-Res2Net blocks
    kernel_size: int = 3  # of the Res2Net convs
    dilations: tuple[int, ...] = (2, 3, 4)  # one SE-Res2Net block per dilation
    res2_scale: int = 8  # channel groups of a Res2Net conv (channels must divide by it)
    se_channels: int = 128  # squeeze-excitation bottleneck
    mfa_channels: int = 1536  # multi-layer feature aggregation: the pooled channels
    attention_channels: int = 128  # attentive statistics pooling's hidden size
    embed_dim: int = 192


@dataclass(frozen=True)
class AamConfig:
    margin: float = 0.2  # m: the target's angle is penalised by m radians
    scale: float = 30.0  # s: logits are s * cos(angle)


class TdnnBlock(nn.Module):
    """Conv1d → ReLU → BatchNorm; 'same' padding, so the frame count is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.norm = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net's hierarchy inside one conv: the channels in ``scale`` groups, the first passed on
    as it is, each other one convolved after adding the previous group's output, so one block
    sees several receptive fields at once."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int):
        super().__init__()
        self.scale = scale
        self.blocks = nn.ModuleList(TdnnBlock(channels // scale, channels // scale, kernel, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.chunk(self.scale, dim=1)
        out, y = [parts[0]], None
        for part, block in zip(parts[1:], self.blocks):
            y = block(part if y is None else part + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SqueezeExcitation(nn.Module):
    """Channel gates from the utterance's mean over time."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.down = nn.Conv1d(channels, bottleneck, 1)
        self.up = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.up(F.relu(self.down(x.mean(dim=2, keepdim=True)))))
        return x * gate


class SeRes2Block(nn.Module):
    """1x1 TDNN → Res2Net conv (dilated) → 1x1 TDNN → SE, plus the residual."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int, se_channels: int):
        super().__init__()
        self.pre = TdnnBlock(channels, channels, 1)
        self.res2 = Res2Conv(channels, kernel, dilation, scale)
        self.post = TdnnBlock(channels, channels, 1)
        self.se = SqueezeExcitation(channels, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.post(self.res2(self.pre(x))))


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over time; the attention of each frame also
    sees the utterance's plain mean and deviation (the paper's global context)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.hidden = TdnnBlock(3 * channels, hidden, 1)
        self.score = nn.Conv1d(hidden, channels, 1)

    @staticmethod
    def _stats(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (x * w).sum(dim=2)
        var = ((x - mean.unsqueeze(2)) ** 2 * w).sum(dim=2)
        return mean, var.clamp(min=1e-6).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T) → (B, 2C): weighted mean, then weighted standard deviation."""
        t = x.shape[2]
        mean, std = self._stats(x, torch.full_like(x[:, :1], 1.0 / t))
        context = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, t), std.unsqueeze(2).expand(-1, -1, t)], dim=1)
        w = torch.softmax(self.score(torch.tanh(self.hidden(context))), dim=2)
        return torch.cat(self._stats(x, w), dim=1)


class EcapaTdnn(nn.Module):
    """fbank (B, T, F) → speaker embedding (B, embed_dim), whatever T (at least one frame).
    Each input is mean-normalised over its own frames first (cepstral mean normalisation), so
    the embedding ignores a fixed channel or gain."""

    def __init__(self, cfg: EcapaConfig):
        super().__init__()
        if cfg.channels % cfg.res2_scale:
            raise ConfigError(f"encoder_conf.channels ({cfg.channels}) must be a multiple of res2_scale ({cfg.res2_scale})")
        self.cfg = cfg
        self.stem = TdnnBlock(cfg.num_mel_bins, cfg.channels, 5)
        self.blocks = nn.ModuleList(SeRes2Block(cfg.channels, cfg.kernel_size, d, cfg.res2_scale, cfg.se_channels)
                                    for d in cfg.dilations)
        self.mfa = TdnnBlock(len(cfg.dilations) * cfg.channels, cfg.mfa_channels, 1)
        self.pool = AttentiveStatsPooling(cfg.mfa_channels, cfg.attention_channels)
        self.pool_norm = nn.BatchNorm1d(2 * cfg.mfa_channels)
        self.proj = nn.Linear(2 * cfg.mfa_channels, cfg.embed_dim)
        self.out_norm = nn.BatchNorm1d(cfg.embed_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """B: batch, T: frames (no padding: every row is T real frames), F: mel bins.
        feats (B, T, F) → embedding (B, D), not normalised (the AAM head and ``embed`` normalise)."""
        x = (feats - feats.mean(dim=1, keepdim=True)).transpose(1, 2)
        x = self.stem(x)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        return self.out_norm(self.proj(self.pool_norm(self.pool(x))))

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, T, F) → L2-normalised embedding (B, D): the one that cosine scores compare."""
        return F.normalize(self(feats), dim=-1)


class AamSoftmax(nn.Module):
    """Additive angular margin softmax: class centres on the unit sphere, the target's logit
    s·cos(θ + m), the others' s·cos(θ). Computed in float32 whatever the autocast."""

    def __init__(self, embed_dim: int, num_classes: int, cfg: AamConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_normal_(self.weight)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, margin: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """emb (B, D), labels (B,) class indices; margin overrides cfg.margin (a warm-up) → (loss, accuracy)."""
        m = self.cfg.margin if margin is None else margin
        with torch.autocast(emb.device.type, enabled=False):
            cos = F.linear(F.normalize(emb.float(), dim=-1), F.normalize(self.weight.float(), dim=-1)).clamp(-1 + 1e-7, 1 - 1e-7)
            target = cos.gather(1, labels[:, None])
            sin = (1.0 - target**2).sqrt()
            shifted = target * math.cos(m) - sin * math.sin(m)  # cos(θ + m)
            # past θ = π − m, cos(θ + m) would rise again: continue it linearly instead
            shifted = torch.where(target > math.cos(math.pi - m), shifted, target - math.sin(math.pi - m) * m)
            logits = cos.scatter(1, labels[:, None], shifted) * self.cfg.scale
            loss = F.cross_entropy(logits, labels)
        accuracy = (cos.argmax(dim=1) == labels).float().mean()
        return loss, accuracy


class SpeakerClassifier(nn.Module):
    """The encoder with its training head: what the training engine updates; ``model.pt`` keeps
    the encoder alone."""

    def __init__(self, cfg: EcapaConfig, head: AamConfig, num_speakers: int):
        super().__init__()
        self.encoder = EcapaTdnn(cfg)
        self.head = AamSoftmax(cfg.embed_dim, num_speakers, head)

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, margin: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), labels (B,) → (AAM loss, training accuracy)."""
        return self.head(self.encoder(feats), labels, margin)
