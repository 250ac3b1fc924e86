"""Acoustic effects for data augmentation: rooms, added noise and transmission channels.

Every function takes its parameters explicitly (random ones draw from the ``rng`` it is given),
works on float32 mono samples at one rate, keeps their length and returns samples within
[-1, 1]. Which parameters to draw, and how often, is ``speechkit.data.augment``'s business.

Libraries: room impulse responses by the image method of pyroomacoustics (Allen & Berkley,
1979); coloured noise from colorednoise; microphone filters and clipping from audiomentations;
band limits from scipy; μ-law from librosa; GSM, MP3 and Opus through the sox or ffmpeg binaries.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from speechkit.audio.io import resample_audio
from speechkit.errors import AudioError

SPEED_OF_SOUND = 343.0  # m/s, the value pyroomacoustics uses
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # exponent β of a 1/f^β power spectrum
CODECS = ("gsm", "mp3", "opus")
TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
SILENCE_POWER = 1e-4  # -40 dBFS: the reference level a silent signal's SNR is taken against


def fit_range(samples: np.ndarray) -> np.ndarray:
    """float32, finite, and scaled down (never up) so the peak is within [-1, 1]."""
    y = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    return y / peak if peak > 1.0 else y


def fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad to ``n`` samples."""
    return samples[:n] if len(samples) >= n else np.pad(samples, (0, n - len(samples)))


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0


def _unit_rms(x: np.ndarray) -> np.ndarray:
    p = _power(x)
    return (x / np.sqrt(p)).astype(np.float32) if p > 0 else x.astype(np.float32)


# ---- rooms ----------------------------------------------------------------------------------

def room_impulse_response(size_m: tuple[float, float, float], rt60_s: float, source: np.ndarray, mic: np.ndarray,
                          sample_rate: int, max_order: int) -> tuple[np.ndarray, int]:
    """Image-method RIR of a shoebox room whose walls absorb alike (Sabine's formula for ``rt60_s``).

    ``max_order`` caps the reflection order (cost grows with its cube); where Sabine asks for
    more, the tail is cut where the first missing images would arrive.
    Returns (h of shape (L,), the direct path's delay in samples).
    """
    import pyroomacoustics as pra

    absorption, order = pra.inverse_sabine(rt60_s, size_m)
    room = pra.ShoeBox(list(size_m), fs=sample_rate, materials=pra.Material(absorption), max_order=min(order, max_order))
    room.add_source(list(source))
    room.add_microphone(list(mic))
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float64)
    # pyroomacoustics centres each image's fractional-delay filter, which adds half its length.
    delay = int(np.linalg.norm(np.asarray(source) - np.asarray(mic)) / SPEED_OF_SOUND * sample_rate)
    return h, delay + pra.constants.get("frac_delay_length") // 2


def reverberate(samples: np.ndarray, h: np.ndarray, direct_delay: int) -> np.ndarray:
    """Convolve with ``h`` from its direct path on, so the output stays aligned with the input;
    same length (the tail past the end is cut) and the same RMS as the input."""
    from scipy.signal import fftconvolve

    y = fftconvolve(samples.astype(np.float64), h[direct_delay:])[: len(samples)]
    p_in, p_out = _power(samples), _power(y)
    if p_out > 0:
        y *= np.sqrt(p_in / p_out)
    return fit_range(y)


# ---- noise ----------------------------------------------------------------------------------

def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a 1/f^β power spectrum (white β=0, pink 1, brown 2); unit RMS, (n,)."""
    import colorednoise

    if n < 2:
        return rng.standard_normal(n).astype(np.float32)
    return _unit_rms(colorednoise.powerlaw_psd_gaussian(NOISE_COLOURS[colour], n, random_state=rng))


def babble(sources: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Several talkers at once: each source at unit RMS, looped from a random start to ``n``
    samples, summed; unit RMS, (n,)."""
    out = np.zeros(n, dtype=np.float64)
    for s in sources:
        if _power(s) == 0:
            continue
        start = int(rng.integers(len(s)))
        out += np.resize(np.roll(_unit_rms(s), -start), n)
    return _unit_rms(out)


def synth_music(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Background music made here: a chord progression in a random key and tempo, played as pads
    or arpeggios by an additive instrument of random timbre, over a bass line and, half the
    time, a kick and hi-hat; unit RMS, (n,)."""
    out = np.zeros(n, dtype=np.float64)
    beat = int(sample_rate * 60.0 / rng.uniform(70.0, 160.0))
    root = int(rng.integers(45, 58))  # MIDI note of the key, A2..A#3
    scale = (0, 2, 4, 5, 7, 9, 11) if rng.random() < 0.5 else (0, 2, 3, 5, 7, 8, 10)
    progression = rng.choice(7, size=4)
    harmonics = np.arange(1, int(rng.integers(3, 13)) + 1)
    amps = harmonics ** -rng.uniform(0.6, 2.5)
    if rng.random() < 0.3:  # odd partials only: a hollow, clarinet-like timbre
        amps[1::2] = 0.0
    timbre = (amps, rng.uniform(0.003, 0.08), rng.uniform(0.15, 1.5))  # partials, attack s, decay s
    arpeggio = rng.random() < 0.5
    drums = rng.random() < 0.5
    bar = 4 * beat
    for i, start in enumerate(range(0, n, bar)):
        degree = int(progression[i % 4])
        chord = [root + 12 + scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
        if arpeggio:
            for j in range(8):
                _add_note(out, start + j * beat // 2, chord[j % 3], beat // 2 * 3, sample_rate, timbre, 0.5)
        else:
            for note in chord:
                _add_note(out, start, note, bar, sample_rate, timbre, 0.4)
        for j in range(4):
            _add_note(out, start + j * beat, chord[0] - 24, beat, sample_rate, (np.array([1.0, 0.3]), 0.01, 0.4), 0.6)
            if drums:
                _add_drums(out, start + j * beat, beat, sample_rate, rng, kick=j % 2 == 0)
    return _unit_rms(out)


def _add_note(out: np.ndarray, start: int, midi: int, length: int, sample_rate: int, timbre, level: float) -> None:
    amps, attack, decay = timbre
    length = min(length, len(out) - start)
    if length <= 0:
        return
    f0 = 440.0 * 2.0 ** ((midi - 69) / 12)
    t = np.arange(length) / sample_rate
    k = np.arange(1, len(amps) + 1)
    keep = k * f0 < 0.45 * sample_rate
    wave = np.sin(2 * np.pi * f0 * np.outer(t, k[keep])) @ amps[keep]
    env = np.minimum(t / attack, 1.0) * np.exp(-t / decay)
    out[start : start + length] += level * env * wave / max(np.abs(amps[keep]).sum(), 1e-9)


def _add_drums(out: np.ndarray, start: int, beat: int, sample_rate: int, rng: np.random.Generator, kick: bool) -> None:
    if kick:  # a sine sweeping down from 120 to 50 Hz
        n = min(int(0.15 * sample_rate), len(out) - start)
        t = np.arange(max(n, 0)) / sample_rate
        out[start : start + n] += 0.8 * np.sin(2 * np.pi * (50 * t + 70 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.05)
    at = start + beat // 2  # a hi-hat off the beat: differentiated noise, very short
    n = min(int(0.03 * sample_rate), len(out) - at)
    if n > 1:
        hat = np.diff(rng.standard_normal(n + 1))
        out[at : at + n] += 0.1 * hat * np.exp(-np.arange(n) / (0.008 * sample_rate))


def add_at_snr(samples: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """samples + noise scaled so that 10·log10(P_samples / P_noise) = ``snr_db`` (a silent
    input counts as -40 dBFS). noise: (n,), as long as samples."""
    p_signal = _power(samples) or SILENCE_POWER
    p_noise = _power(noise)
    scale = np.sqrt(p_signal / p_noise / 10.0 ** (snr_db / 10.0)) if p_noise > 0 else 0.0
    return fit_range(samples.astype(np.float64) + scale * noise)


# ---- channels -------------------------------------------------------------------------------

def mic_response(samples: np.ndarray, sample_rate: int, highpass_hz: float, lowpass_hz: float,
                 bands: list[tuple[float, float, float]]) -> np.ndarray:
    """A microphone's frequency response: a 12 dB/octave high-pass and low-pass (Butterworth)
    around peaking filters ``bands`` of (centre Hz, gain dB, Q)."""
    from audiomentations import HighPassFilter, LowPassFilter, PeakingFilter

    # Each transform gets a one-point range, so the global RNG audiomentations draws from decides nothing.
    steps = [HighPassFilter(min_cutoff_freq=highpass_hz, max_cutoff_freq=highpass_hz, min_rolloff=12, max_rolloff=12, p=1.0),
             LowPassFilter(min_cutoff_freq=lowpass_hz, max_cutoff_freq=lowpass_hz, min_rolloff=12, max_rolloff=12, p=1.0)]
    steps += [PeakingFilter(min_center_freq=f, max_center_freq=f, min_gain_db=g, max_gain_db=g, min_q=q, max_q=q, p=1.0)
              for f, g, q in bands]
    y = samples.astype(np.float32)
    for step in steps:
        y = step(y, sample_rate)
    return fit_range(y)


def clip_samples(samples: np.ndarray, percent: int) -> np.ndarray:
    """Hard clipping of about ``percent`` % of the samples, half at each end (audiomentations)."""
    from audiomentations import ClippingDistortion

    return fit_range(ClippingDistortion(min_percentile_threshold=percent, max_percentile_threshold=percent, p=1.0)(
        samples.astype(np.float32), 16000))  # the rate is not used by this transform


def telephone(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """A narrow-band telephone line: 300-3400 Hz band-pass (zero phase), 8 kHz, 8-bit μ-law
    (G.711), and back up to ``sample_rate``."""
    import librosa
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, TELEPHONE_BAND_HZ, btype="bandpass", fs=sample_rate, output="sos")
    y = sosfiltfilt(sos, samples.astype(np.float64), padlen=min(len(samples) - 1, 3 * 2 * len(sos))) if len(samples) > 1 else samples
    narrow = np.clip(resample_audio(np.asarray(y, dtype=np.float32), sample_rate, TELEPHONE_RATE), -1.0, 1.0)
    narrow = librosa.mu_expand(librosa.mu_compress(narrow, mu=255, quantize=True), mu=255, quantize=True)
    return fit_range(fit_length(resample_audio(narrow.astype(np.float32), TELEPHONE_RATE, sample_rate), len(samples)))


@functools.lru_cache(maxsize=None)
def codec_tools() -> dict[str, str | None]:
    """Which binary encodes each codec here ('sox', 'ffmpeg' or None); looked up once per process."""
    sox_formats: set[str] = set()
    ff_encoders: set[str] = set()
    if shutil.which("sox"):
        out = subprocess.run(["sox", "-h"], capture_output=True, text=True).stdout
        line = next((ln for ln in out.splitlines() if ln.startswith("AUDIO FILE FORMATS:")), "")
        sox_formats = set(line.split()[3:])
    if shutil.which("ffmpeg"):
        out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
        ff_encoders = {parts[1] for parts in (ln.split() for ln in out.splitlines()) if len(parts) > 1}
    return {
        "gsm": "sox" if "gsm" in sox_formats else "ffmpeg" if "libgsm" in ff_encoders else None,
        "mp3": "ffmpeg" if "libmp3lame" in ff_encoders else "sox" if "mp3" in sox_formats else None,
        "opus": "ffmpeg" if "libopus" in ff_encoders else None,
    }


CODEC_NEEDS = {"gsm": "sox (or ffmpeg with libgsm)", "mp3": "ffmpeg with libmp3lame (or sox with mp3 support)",
               "opus": "ffmpeg with libopus"}


def codec_roundtrip(samples: np.ndarray, sample_rate: int, codec: str, kbps: int = 0) -> np.ndarray:
    """Encode with ``codec`` ('gsm': 13 kbit/s at 8 kHz; 'mp3', 'opus' at ``kbps``) and decode
    back to ``sample_rate``, re-aligned against the codec's delay; same length."""
    tool = codec_tools()[codec]
    if tool is None:
        raise AudioError(f"codec '{codec}' needs {CODEC_NEEDS[codec]}, which is not installed")
    ext = {"gsm": "gsm", "mp3": "mp3", "opus": "ogg"}[codec]
    with tempfile.TemporaryDirectory(prefix="speechkit-codec-") as tmp:
        raw_in, coded, raw_out = Path(tmp, "in.f32"), Path(tmp, f"coded.{ext}"), Path(tmp, "out.f32")
        samples.astype("<f4").tofile(raw_in)
        for cmd in _codec_commands(tool, codec, kbps, sample_rate, raw_in, coded, raw_out):
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                reason = (run.stderr.strip().splitlines() or ["no message"])[-1]
                raise AudioError(f"{codec} through {tool} failed: {reason}")
        y = np.fromfile(raw_out, dtype="<f4").astype(np.float64)
    return fit_range(_align(y, samples, max_lag=int(0.1 * sample_rate)))


def _codec_commands(tool: str, codec: str, kbps: int, rate: int, raw_in: Path, coded: Path, raw_out: Path) -> list[list[str]]:
    if tool == "sox":  # -D: no dither, -R: repeatable; both keep the output a function of the input
        sox = ["sox", "-V1", "-D", "-R"]
        raw = ["-t", "f32", "-r", str(rate), "-c", "1"]
        enc = ["-r", str(TELEPHONE_RATE)] if codec == "gsm" else ["-C", str(kbps)]
        return [[*sox, *raw, str(raw_in), *enc, str(coded)], [*sox, str(coded), *raw, str(raw_out)]]
    ff = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    raw = ["-f", "f32le", "-ar", str(rate), "-ac", "1"]
    enc = {"gsm": ["-c:a", "libgsm", "-ar", str(TELEPHONE_RATE), "-f", "gsm"],
           "mp3": ["-c:a", "libmp3lame", "-b:a", f"{kbps}k"],
           "opus": ["-c:a", "libopus", "-b:a", f"{kbps}k"]}[codec]
    return [[*ff, *raw, "-i", str(raw_in), *enc, str(coded)], [*ff, "-i", str(coded), *raw, str(raw_out)]]


def _align(y: np.ndarray, ref: np.ndarray, max_lag: int) -> np.ndarray:
    """Shift ``y`` by the lag (within ±max_lag) that best matches ``ref``, then fit its length."""
    from scipy.signal import correlate

    n = len(ref)
    if n < 2 or len(y) < 2:
        return fit_length(y, n)
    corr = correlate(y, ref.astype(np.float64), mode="full", method="fft")  # index n-1 is lag 0
    lo, hi = max(0, n - 1 - max_lag), min(len(corr), n + max_lag)
    lag = int(np.argmax(corr[lo:hi])) + lo - (n - 1)
    y = y[lag:] if lag >= 0 else np.pad(y, (-lag, 0))
    return fit_length(y, n)
