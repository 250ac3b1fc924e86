"""How close a resynthesised (codec) waveform is to its original: STOI (Taal et al. 2011), wideband
PESQ (ITU-T P.862.2), mel cepstral distortion (Kubichek 1993), the streaming ASR model's WER on
the output, and a stacked spectrogram picture for looking at them side by side.

Every metric takes mono float arrays and first trims both to the shorter length, because codecs
may return a few samples more or fewer than they were given. pystoi, pesq and matplotlib come
with the ``eval`` extra (``pip install -e '.[eval]'``) and are imported only where used.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soxr

PESQ_RATE = 16000  # P.862.2 (wideband) is defined at 16 kHz only

# Mel cepstral distortion, as computed by ``mel_cepstral_distortion``.
MCD_WINDOW_S = 0.025
MCD_HOP_S = 0.005
MCD_MELS = 80
MCD_COEFFS = 24  # c1..c24; c0 (overall level) is left out
MCD_SILENCE_DB = 40.0  # reference frames this far below its loudest frame are not scored
MCD_POWER_FLOOR = 1e-10  # keeps log() finite where a band holds exact digital silence

# Spectrogram pictures.
PLOT_WIDTH_PX = 1000
PLOT_ROW_PX = 150
PLOT_DPI = 100
PLOT_MELS = 80
PLOT_RANGE_DB = 80.0  # colour scale: the loudest bin of all items down to this many dB below it
PLOT_COLOURS = 32  # 2.5 dB steps: fewer distinct pixels keep a noisy spectrogram's PNG small


def _trimmed(ref: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, deg = np.asarray(ref, dtype=np.float32), np.asarray(deg, dtype=np.float32)
    if ref.ndim != 1 or deg.ndim != 1:
        raise ValueError(f"expected mono 1-D arrays, got shapes {ref.shape} and {deg.shape}")
    n = min(len(ref), len(deg))
    return ref[:n], deg[:n]


def stoi(ref: np.ndarray, deg: np.ndarray, sample_rate: int) -> float:
    """Classic (not extended) STOI in [0, 1], higher is more intelligible. Any rate: pystoi
    resamples to its own 10 kHz internally."""
    from pystoi import stoi as _stoi

    ref, deg = _trimmed(ref, deg)
    return float(_stoi(ref, deg, sample_rate, extended=False))


def pesq_wb(ref: np.ndarray, deg: np.ndarray, sample_rate: int = PESQ_RATE) -> float:
    """Wideband PESQ (MOS-LQO, about 1.0 to 4.64; identical signals score 4.64). Other rates are
    resampled to 16 kHz with soxr first. Returns nan where PESQ itself gives up (its
    ``PesqError``s: no utterances found, buffer too short), so one bad clip doesn't stop a
    whole evaluation; callers should count and report the nans."""
    from pesq import PesqError, pesq

    ref, deg = _trimmed(ref, deg)
    if sample_rate != PESQ_RATE:
        ref, deg = _trimmed(soxr.resample(ref, sample_rate, PESQ_RATE), soxr.resample(deg, sample_rate, PESQ_RATE))
    try:
        with np.errstate(invalid="ignore"):  # pesq divides by the joint peak: 0/0 for all-zero input, which it then rejects
            return float(pesq(PESQ_RATE, ref, deg, "wb"))
    except PesqError:
        return math.nan


def _mel_power(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, MCD_MELS) mel power, frames without centre padding so frame i of two equally
    long signals covers the same samples."""
    import librosa

    win = round(MCD_WINDOW_S * sample_rate)
    n_fft = 1 << (win - 1).bit_length()  # zero-padded so that no low mel filter falls between FFT bins
    if len(x) < n_fft:
        return np.zeros((0, MCD_MELS), dtype=np.float32)
    mel = librosa.feature.melspectrogram(y=x, sr=sample_rate, n_fft=n_fft, win_length=win, hop_length=round(MCD_HOP_S * sample_rate),
                                         window="hann", center=False, power=2.0, n_mels=MCD_MELS)
    return mel.T


def _mel_cepstrum(mel_power: np.ndarray) -> np.ndarray:
    """(frames, MCD_MELS) cepstra of the natural-log mel *amplitude*, scaled so that
    ln|X(m)| = c0 + 2 * sum_n c_n cos(pi n (m + 1/2) / M), the convention the 10/ln10 * sqrt(2 ...)
    MCD constant assumes (it is SPTK's)."""
    from scipy.fft import dct

    log_amplitude = 0.5 * np.log(np.maximum(mel_power, MCD_POWER_FLOOR))
    return dct(log_amplitude, type=2, axis=-1, norm=None) / (2 * MCD_MELS)  # scipy's unnormalised DCT-II carries a factor 2


def mel_cepstral_distortion(ref: np.ndarray, deg: np.ndarray, sample_rate: int) -> float:
    """Mel cepstral distortion in dB (0 for identical signals, lower is closer).

    Both signals are cut into 25 ms Hann frames every 5 ms (no padding), an 80-band mel power
    spectrum (librosa's Slaney mels, 0 to Nyquist) is taken per frame, its natural-log amplitude
    (half the log power) goes through a DCT-II scaled to cosine-series cepstra (``_mel_cepstrum``),
    and c1..c24 are kept (c0, the overall level, is not). Frames are paired 1:1, because codec
    output is time-aligned, and a frame is scored only where the reference's mel energy is within
    40 dB of its loudest frame. Per frame, MCD = 10 / ln 10 * sqrt(2 * sum_n (c_n - c'_n)^2); the
    result is the mean over scored frames. Returns nan where no frame is scored (a digitally
    silent reference, or one shorter than a frame).

    With these cepstra, 2 * sum (dc)^2 is the mean squared difference of the two (smoothed,
    level-normalised) log mel amplitude envelopes, so 1 dB of MCD is about 2 dB RMS of log mel
    power difference.
    """
    ref, deg = _trimmed(ref, deg)
    ref_mel, deg_mel = _mel_power(ref, sample_rate), _mel_power(deg, sample_rate)
    energy = ref_mel.sum(axis=1)
    energy_db = 10.0 * np.log10(np.maximum(energy, MCD_POWER_FLOOR))
    voiced = (energy_db > energy_db.max(initial=-np.inf) - MCD_SILENCE_DB) & (energy > MCD_POWER_FLOOR)
    if not voiced.any():
        return math.nan
    diff = (_mel_cepstrum(ref_mel[voiced]) - _mel_cepstrum(deg_mel[voiced]))[:, 1 : MCD_COEFFS + 1]
    per_frame = 10.0 / np.log(10.0) * np.sqrt(2.0 * (diff**2).sum(axis=1))
    return float(per_frame.mean())


def _log_mel_db(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """(PLOT_MELS, frames) log-mel power in dB (25 ms frames every 10 ms), and the hop in seconds."""
    import librosa

    win, hop = round(0.025 * sample_rate), round(0.010 * sample_rate)
    n_fft = 1 << (win - 1).bit_length()
    mel = librosa.feature.melspectrogram(y=np.asarray(x, dtype=np.float32), sr=sample_rate, n_fft=n_fft, win_length=win,
                                         hop_length=hop, n_mels=PLOT_MELS, power=2.0)
    return 10.0 * np.log10(np.maximum(mel, MCD_POWER_FLOOR)), hop / sample_rate


def spectrogram_comparison(items: list[tuple[str, np.ndarray]], sample_rate: int, out_png: str | Path, title: str = "") -> Path:
    """One log-mel spectrogram row per ``(label, waveform)`` item, all on one colour scale (the
    loudest bin of any item down to 80 dB below it) and one time axis in seconds, written as a
    PNG about 1000 px wide. Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import librosa
    import matplotlib.pyplot as plt
    from PIL import Image  # a matplotlib dependency

    if not items:
        raise ValueError("no items to plot")
    specs = [(label, *_log_mel_db(x, sample_rate)) for label, x in items]
    vmax = max(float(s.max()) for _, s, _ in specs)
    vmin = vmax - PLOT_RANGE_DB
    # Mel rows are evenly spaced in mel, so frequency ticks sit at their mel positions.
    nyquist_mel = librosa.hz_to_mel(sample_rate / 2)
    ticks_hz = [f for f in (0, 1000, 2000, 4000, 8000, 16000) if f <= sample_rate / 2]
    ticks_row = [librosa.hz_to_mel(f) / nyquist_mel * PLOT_MELS for f in ticks_hz]

    height_px = PLOT_ROW_PX * len(specs) + 60
    fig, axes = plt.subplots(len(specs), 1, sharex=True, squeeze=False, layout="constrained",
                             figsize=(PLOT_WIDTH_PX / PLOT_DPI, height_px / PLOT_DPI), dpi=PLOT_DPI)
    cmap = matplotlib.colormaps["magma"].resampled(PLOT_COLOURS)
    for ax, (label, spec, hop_s) in zip(axes[:, 0], specs):
        image = ax.imshow(spec, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                          extent=(0.0, spec.shape[1] * hop_s, 0, PLOT_MELS), interpolation="nearest")
        ax.set_yticks(ticks_row, [f"{f // 1000}k" if f else "0" for f in ticks_hz])
        ax.set_ylabel("Hz", fontsize=8)
        ax.set_title(label, fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("time (s)", fontsize=8)
    bar = fig.colorbar(image, ax=axes[:, 0].tolist(), pad=0.01, aspect=30 * len(specs) ** 0.5)
    bar.set_label("dB", fontsize=8)
    bar.ax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=PLOT_DPI)
    plt.close(fig)
    # A 256-colour palette PNG is under half the size of RGB and loses nothing visible: the
    # spectrograms use PLOT_COLOURS colours, the rest is anti-aliased text and lines.
    Image.open(png).convert("RGB").quantize(256).save(out_png, optimize=True)
    return out_png


def asr_wer(wavs: list[np.ndarray], refs: list[str], model_dir: str | Path, batch_size: int = 16) -> dict:
    """WER and CER (%) of the streaming ASR model in ``model_dir`` on 16 kHz waveforms, decoded
    ``batch_size`` at a time, against ``refs`` written as the model writes (lower-case words).
    Returns {"wer", "cer", "utterances", "hyps"}; scoring is ``speechkit.eval.wer.score_texts``."""
    from speechkit.eval.wer import score_texts
    from speechkit.runtime import OnlineRecognizer

    if len(wavs) != len(refs):
        raise ValueError(f"{len(wavs)} waveforms but {len(refs)} reference texts")
    rec = OnlineRecognizer(model_dir)
    hyps: list[str] = []
    for i in range(0, len(wavs), batch_size):
        hyps += rec.transcribe_batch([np.asarray(w, dtype=np.float32) for w in wavs[i : i + batch_size]])
    result = score_texts(refs, hyps)
    return {"wer": result["wer"], "cer": result["cer"], "utterances": result["utterances"], "hyps": hyps}
