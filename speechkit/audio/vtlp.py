"""Vocal-tract-length perturbation that keeps f0: each frame's spectral envelope (its formants) is
moved along frequency while its harmonics stay where they are.

The envelope is the low-quefrency part of the log spectrum (cepstral smoothing); the frequency map
is VTLP's piecewise-linear warp (Jaitly & Hinton, 2013): ``f -> factor * f`` up to a cut-off, then
a straight line that pins the Nyquist frequency. A factor above 1 sounds like a shorter vocal tract.
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.032  # analysis frame: about four periods of a 120 Hz voice
LIFTER_S = 0.0018  # quefrencies kept for the envelope: shorter than the period of any f0 up to 550 Hz
WARP_CUT = 0.8  # fraction of the Nyquist frequency where the warp bends (for factors <= 1)
_EPS = 1e-6


def _frame_size(sample_rate: int) -> int:
    return 1 << round(np.log2(FRAME_S * sample_rate))


def warp_map(num_bins: int, factor: float) -> np.ndarray:
    """For each output bin, the (fractional) input bin whose envelope value it takes: the inverse of
    ``f -> factor * f`` below ``WARP_CUT`` (scaled down for factors > 1), bent to keep Nyquist fixed."""
    k = np.arange(num_bins, dtype=np.float64)
    nyquist = num_bins - 1.0
    cut = WARP_CUT * nyquist * min(1.0, 1.0 / factor)  # the input bin where the bend starts
    bent = cut + (k - factor * cut) * (nyquist - cut) / (nyquist - factor * cut)
    return np.where(k <= factor * cut, k / factor, bent)


def _stft(x: np.ndarray, n: int, hop: int, window: np.ndarray) -> np.ndarray:
    """(frames, n // 2 + 1) spectra of ``x`` padded by n // 2 on each side."""
    padded = np.pad(x, (n // 2, n // 2 + n))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n)[:: hop][: len(x) // hop + 2]
    return np.fft.rfft(frames * window, axis=1)


def _istft(spec: np.ndarray, n: int, hop: int, window: np.ndarray, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of ``_stft``, cut to ``length`` samples."""
    frames = np.fft.irfft(spec, n=n, axis=1) * window
    total = hop * (len(frames) - 1) + n
    out, weight = np.zeros(total), np.zeros(total)
    for i, frame in enumerate(frames):
        out[i * hop : i * hop + n] += frame
        weight[i * hop : i * hop + n] += window**2
    out /= np.maximum(weight, _EPS)
    return out[n // 2 : n // 2 + length]


def warp_formants(samples: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """Move the formants of mono ``samples`` (shape (N,)) by ``factor`` and keep f0, length and rate.

    Returns float32 samples of shape (N,); ``factor`` 1 returns the input unchanged.
    """
    x = np.asarray(samples, dtype=np.float32)
    if factor == 1.0 or len(x) == 0:
        return x
    n = _frame_size(sample_rate)
    hop = n // 4
    window = np.hanning(n + 1)[:n]  # periodic Hann: its squares overlap-add to a constant at n / 4
    spec = _stft(x.astype(np.float64), n, hop, window)
    log_mag = np.log(np.abs(spec) + _EPS)
    cepstrum = np.fft.irfft(log_mag, n=n, axis=1)
    lifter = max(2, round(LIFTER_S * sample_rate))
    cepstrum[:, lifter : n - lifter + 1] = 0.0
    envelope = np.fft.rfft(cepstrum, n=n, axis=1).real  # smooth log envelope, (frames, bins)
    source = warp_map(envelope.shape[1], factor)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, envelope.shape[1] - 1)
    frac = source - lower
    warped = envelope[:, lower] * (1.0 - frac) + envelope[:, upper] * frac
    y = _istft(spec * np.exp(warped - envelope), n, hop, window, len(x))
    return y.astype(np.float32)
