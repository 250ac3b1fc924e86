"""A causal log-mel front end and the encoder of a mel-input VAE codec.

A waveform encoder is free to put the signal's phase into its latents, and with a waveform L1
loss it is paid to; an autoregressive TTS model then has to predict that phase frame by frame,
and whatever it averages decodes to babble. An encoder that only sees the log-mel cannot: its
latents are a (learned, compressed) spectral envelope and the decoder becomes a vocoder. This
is that encoder: a causal STFT as a fixed strided convolution (so it exports to ONNX as a Conv
and streams like the SEANet convs), mel filters and a log, then SEANet stages down to the
codec's hop.

Streaming follows the SEANet contract (``init_state``/``forward_chunk``, whole frames in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechkit.nn.seanet import CausalConv1d, EncoderStage, SeanetConfig, State, _Projection, _Streaming

LOG_FLOOR = 1e-5  # mel power floor before the log (silence → about -11.5)
LOG_SHIFT, LOG_SCALE = 5.0, 4.0  # (log mel + shift) / scale: speech's range to about -1.6 .. 2


@dataclass(frozen=True)
class MelEncoderConfig:
    n_mels: int = 80
    frame_hop: int = 160  # samples per mel frame (10 ms at 16 kHz); the codec's hop is frame_hop × prod(strides)
    win: int = 640  # window and FFT size (40 ms): frame t covers the win samples that end with its hop
    channels: int = 128  # after the input conv; doubled by every down-sampling stage
    strides: tuple[int, ...] = (2, 2)  # mel frames → latent frames
    dilations: tuple[int, ...] = (1, 3)
    kernel_size: int = 3

    @property
    def hop(self) -> int:
        return self.frame_hop * math.prod(self.strides)


class CausalLogMel(nn.Module):
    """Waveform [B, 1, T] → scaled log mel power [B, n_mels, T / frame_hop], float32 even under
    autocast. The windowed DFT is a fixed conv (cos and sin rows), so the STFT needs no complex
    ops in the exported graph."""

    def __init__(self, sample_rate: int, cfg: MelEncoderConfig):
        super().__init__()
        from librosa.filters import mel  # lazily: librosa imports scipy.signal

        if cfg.win < cfg.frame_hop:
            raise ValueError(f"mel window {cfg.win} shorter than its hop {cfg.frame_hop}")
        n = np.arange(cfg.win)
        k = np.arange(cfg.win // 2 + 1)[:, None]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.win)  # periodic Hann
        basis = np.concatenate([np.cos(2 * np.pi * k * n / cfg.win), -np.sin(2 * np.pi * k * n / cfg.win)]) * window
        filters = mel(sr=sample_rate, n_fft=cfg.win, n_mels=cfg.n_mels)
        # Not persistent: rebuilt from the config, so they are neither trained nor saved.
        self.register_buffer("basis", torch.from_numpy(basis[:, None, :]).float(), persistent=False)
        self.register_buffer("filters", torch.from_numpy(filters).float(), persistent=False)
        self.hop, self.context, self.bins = cfg.frame_hop, cfg.win - cfg.frame_hop, cfg.win // 2 + 1

    def _logmel(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = F.conv1d(x.float(), self.basis, stride=self.hop)
            power = spec[:, : self.bins] ** 2 + spec[:, self.bins :] ** 2
            return (torch.matmul(self.filters, power).clamp_min(LOG_FLOOR).log() + LOG_SHIFT) / LOG_SCALE

    def forward(self, x: Tensor) -> Tensor:
        return self._logmel(F.pad(x, (self.context, 0)))

    def init_state(self, batch: int, device=None) -> State:
        return [torch.zeros(batch, 1, self.context, device=device)]

    def forward_chunk(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        xc = torch.cat([state[0], x], dim=-1)
        return self._logmel(xc), [xc[..., xc.shape[-1] - self.context :]]


class MelEncoder(_Streaming):
    """Waveform [B, 1, T] → [B, out_dim, T / hop] through the log mel; causal like SEANet's."""

    def __init__(self, sample_rate: int, cfg: MelEncoderConfig, out_dim: int):
        super().__init__()
        stages = SeanetConfig(channels=cfg.channels, strides=cfg.strides, latent_dim=out_dim, dilations=cfg.dilations,
                              kernel_size=cfg.kernel_size, shortcuts=False)
        top = cfg.channels * 2 ** len(cfg.strides)
        body: list[nn.Module] = [CausalLogMel(sample_rate, cfg), CausalConv1d(cfg.n_mels, cfg.channels, cfg.kernel_size)]
        body += [EncoderStage(cfg.channels * 2**i, s, stages) for i, s in enumerate(cfg.strides)]
        body += [nn.ELU(), _Projection(top, out_dim, 3, False)]
        self.body = nn.ModuleList(body)
        self.cfg, self.rate_in = cfg, cfg.hop

    def forward(self, x: Tensor) -> Tensor:
        for m in self.body:
            x = m(x)
        return x
