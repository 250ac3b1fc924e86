"""Training losses of a neural audio codec (SEANet/EnCodec, DAC): waveform L1, multi-resolution STFT
loss (spectral convergence + log magnitude, Yamamoto et al. 2020), multi-scale log-mel L1, and the
hinge adversarial and relative feature-matching losses of EnCodec (Défossez et al. 2022).

Waveforms are mono, shaped (B, 1, T). Spectral losses always run in float32, also under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LOG_CLAMP = 1e-5  # magnitude floor before the log, so silence gives a finite log and gradient


def stft_magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """x (N, T) → |STFT| (N, n_fft // 2 + 1, frames) in float32, frames = T // hop + 1.

    Centered with reflect padding, so T must exceed n_fft // 2.
    """
    # bf16 has no FFT and too few mantissa bits for log spectra; autocast must not cast back.
    with torch.autocast(device_type=x.device.type, enabled=False):
        window = torch.hann_window(win, device=x.device)
        return torch.stft(x.float(), n_fft, hop_length=hop, win_length=win, window=window, return_complex=True).abs()


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over STFT resolutions of spectral convergence + L1 of log magnitudes."""

    def __init__(self, fft_sizes: tuple[int, ...] = (512, 1024, 2048), hop_sizes: tuple[int, ...] = (128, 256, 512),
                 win_sizes: tuple[int, ...] = (512, 1024, 2048)):
        super().__init__()
        if not len(fft_sizes) == len(hop_sizes) == len(win_sizes):
            raise ValueError(f"one hop and window size per FFT size: {fft_sizes}, {hop_sizes}, {win_sizes}")
        self.resolutions = tuple(zip(fft_sizes, hop_sizes, win_sizes))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y_hat, y (B, 1, T) reconstruction and target waveforms → float32 scalar."""
        losses = []
        for n_fft, hop, win in self.resolutions:
            mag_hat = stft_magnitude(y_hat.squeeze(1), n_fft, hop, win).clamp_min(LOG_CLAMP)
            mag = stft_magnitude(y.squeeze(1), n_fft, hop, win).clamp_min(LOG_CLAMP)
            # Norms over the whole batch as in Parallel WaveGAN; the floor keeps silence from dividing by 0.
            convergence = torch.linalg.vector_norm(mag - mag_hat) / torch.linalg.vector_norm(mag)
            losses.append(convergence + F.l1_loss(mag_hat.log(), mag.log()))
        return torch.stack(losses).mean()


class LogMelSpectrogram(nn.Module):
    """Log of the mel-filtered STFT magnitude (hop n_fft // 4, window n_fft), in float32."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int):
        super().__init__()
        # Imported here: librosa pulls in scipy.signal (~2 s), which users of the adversarial losses need not pay.
        from librosa.filters import mel

        self.n_fft = n_fft
        filters = mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
        self.register_buffer("filters", torch.from_numpy(filters).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, T) waveforms → (N, n_mels, frames) log mel, frames = T // (n_fft // 4) + 1."""
        mag = stft_magnitude(x, self.n_fft, self.n_fft // 4, self.n_fft)
        # Out of autocast, which would run the filter matmul in bf16.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return (self.filters.float() @ mag).clamp_min(LOG_CLAMP).log()


class MelL1Loss(nn.Module):
    """Multi-scale mel loss (EnCodec, DAC): L1 between log mels, averaged over the FFT sizes."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, fft_sizes: tuple[int, ...] = (512, 1024, 2048)):
        super().__init__()
        self.scales = nn.ModuleList(LogMelSpectrogram(sample_rate, n_fft, n_mels) for n_fft in fft_sizes)

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y_hat, y (B, 1, T) reconstruction and target waveforms → float32 scalar."""
        losses = [F.l1_loss(mel(y_hat.squeeze(1)), mel(y.squeeze(1))) for mel in self.scales]
        return torch.stack(losses).mean()


def waveform_l1(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y_hat, y (B, 1, T) → float32 scalar mean absolute sample error."""
    return F.l1_loss(y_hat.float(), y.float())


def hinge_d_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Discriminator hinge loss, mean over discriminators of E[relu(1 - D(x))] + E[relu(1 + D(x̂))].

    One logits tensor per discriminator (any shape); fake logits come from a detached x̂.
    """
    losses = [F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()
              for real, fake in zip(real_logits, fake_logits, strict=True)]
    return torch.stack(losses).mean()


def hinge_g_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Generator hinge loss as in EnCodec, mean over discriminators of E[relu(1 - D(x̂))]."""
    return torch.stack([F.relu(1 - fake.float()).mean() for fake in fake_logits]).mean()


def feature_matching_loss(real_feats: list[list[torch.Tensor]], fake_feats: list[list[torch.Tensor]]) -> torch.Tensor:
    """Relative feature matching (EnCodec): mean over discriminators and layers of
    E|D_l(x) - D_l(x̂)| / E|D_l(x)|, so layers of every scale count alike. Real features are detached.

    real_feats, fake_feats: per discriminator, a list of feature maps of matching shapes.
    """
    losses = []
    for real_maps, fake_maps in zip(real_feats, fake_feats, strict=True):
        for real, fake in zip(real_maps, fake_maps, strict=True):
            real = real.detach().float()
            # The floor only guards against a map of exact zeros (a dead layer); EnCodec has none.
            losses.append(F.l1_loss(fake.float(), real) / real.abs().mean().clamp_min(1e-8))
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class CodecLossWeights:
    # mel 15 : feature matching 2 : adversarial 1 is DAC's balance, the mel loss being the main reconstruction
    # signal; waveform L1 0.1 is EnCodec's λ_t, STFT 1 Parallel WaveGAN's. DAC sums its terms over scales and
    # discriminators where these average them, so the ratios are a starting point, not a tuned result.
    waveform_l1: float = 0.1
    stft: float = 1.0
    mel: float = 15.0
    adversarial: float = 1.0
    feature_matching: float = 2.0


def generator_loss(y_hat: torch.Tensor, y: torch.Tensor, disc: nn.Module | None, weights: CodecLossWeights,
                   stft_loss: MultiResolutionSTFTLoss, mel_loss: MelL1Loss) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """y_hat, y (B, 1, T) reconstruction and target → (weighted float32 total, unweighted parts).

    The parts (keys: the ``CodecLossWeights`` field names) are detached scalars for logging; there is
    no ``.item()`` here, so no device sync. ``disc`` None trains on reconstruction alone (no
    adversarial or feature-matching parts). ``disc`` returns (logits per discriminator, feature maps
    per discriminator); its parameters receive gradients here too, so step only the generator's
    optimizer on this loss and zero the discriminator's gradients before its own step.
    """
    if y_hat.shape != y.shape:
        raise ValueError(f"reconstruction {tuple(y_hat.shape)} and target {tuple(y.shape)} differ; trim first")
    parts = {"waveform_l1": waveform_l1(y_hat, y), "stft": stft_loss(y_hat, y), "mel": mel_loss(y_hat, y)}
    if disc is not None:
        fake_logits, fake_feats = disc(y_hat)
        with torch.no_grad():
            _, real_feats = disc(y)
        parts["adversarial"] = hinge_g_loss(fake_logits)
        parts["feature_matching"] = feature_matching_loss(real_feats, fake_feats)
    total = sum(getattr(weights, name) * value for name, value in parts.items())
    return total, {name: value.detach() for name, value in parts.items()}
