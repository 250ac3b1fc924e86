"""EnCodec's multi-scale STFT discriminator (Défossez et al. 2022): one 2-D conv net per STFT scale
reads the complex spectrogram (real and imaginary parts as two channels), so it judges phase as well
as magnitude, and returns patch logits plus the feature maps used for feature matching.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

KERNEL = (3, 9)  # (time, frequency): wide in frequency, where harmonics spread
DILATIONS = (1, 2, 4)  # in time: the stack spans 21 frames without pooling frames away
NEGATIVE_SLOPE = 0.2


def _conv(in_channels: int, out_channels: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
          dilation: tuple[int, int] = (1, 1)) -> nn.Conv2d:
    """Weight-normed conv with 'same' padding, so only the stride changes the map size."""
    padding = ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)
    return weight_norm(nn.Conv2d(in_channels, out_channels, kernel, stride=stride, dilation=dilation, padding=padding))


class STFTDiscriminator(nn.Module):
    """One scale: STFT (hann window n_fft, hop n_fft // 4, no centering), a 3x9 conv, three time-dilated
    3x9 convs that halve the frequency axis, a 3x3 conv, and a 3x3 conv to one logit channel."""

    def __init__(self, filters: int, n_fft: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([_conv(2, filters, KERNEL)])
        self.convs.extend(_conv(filters, filters, KERNEL, stride=(1, 2), dilation=(d, 1)) for d in DILATIONS)
        self.convs.append(_conv(filters, filters, (3, 3)))
        self.conv_post = _conv(filters, 1, (3, 3))
        self.activation = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, 1, T) waveform, T >= n_fft → logits (B, 1, frames, freq), frames = (T - n_fft) // hop + 1,
        freq = n_fft // 16 + 1, and the 5 activated feature maps (B, filters, frames, ·)."""
        # FFTs have no bf16 kernels; the convs after it may run under autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(x.squeeze(1).float(), self.n_fft, hop_length=self.hop, window=self.window.float(),
                              normalized=True, center=False, return_complex=True)
        z = torch.view_as_real(spec).permute(0, 3, 2, 1)  # (B, freq, frames, re/im) → (B, 2, frames, freq)
        feats = []
        for conv in self.convs:
            z = self.activation(conv(z))
            feats.append(z)
        return self.conv_post(z), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    """One STFTDiscriminator per FFT size; EnCodec's five scales 2048 … 128 by default."""

    def __init__(self, filters: int = 32, n_ffts: tuple[int, ...] = (2048, 1024, 512, 256, 128)):
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(filters, n_fft) for n_fft in n_ffts)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """x (B, 1, T) waveform, T >= max(n_ffts) → per scale the logits (B, 1, frames, freq) and the list
        of feature maps (see STFTDiscriminator)."""
        logits, feats = [], []
        for disc in self.discriminators:
            scale_logits, scale_feats = disc(x)
            logits.append(scale_logits)
            feats.append(scale_feats)
        return logits, feats
