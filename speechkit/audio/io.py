"""Audio loading and saving on soundfile + soxr, with the checks that give one-line errors.

``load_audio`` is strict by default (DESIGN.md, "data in, clear errors out"): a file at the
wrong rate or with several channels is refused unless the caller asks to resample or downmix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speechkit.errors import AudioError


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    *,
    resample: bool = False,
    downmix: bool = False,
) -> tuple[np.ndarray, int]:
    """Read ``path`` into float32 mono samples in [-1, 1].

    sample_rate: the rate the caller needs; ``None`` keeps the file's own.
    resample / downmix: allow converting a file whose rate or channel count differs; when
    False such a file is an ``AudioError``.
    Returns (samples of shape (N,), rate).
    """
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for unreadable input
        raise AudioError(f"{path}: unreadable audio ({_reason(e)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if data.shape[1] > 1:
        if not downmix:
            raise AudioError(f"{path}: {data.shape[1]} channels, expected mono")
        data = data.mean(axis=1, keepdims=True)
    samples = data[:, 0]
    if not np.isfinite(samples).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if sample_rate is not None and sr != sample_rate:
        if not resample:
            raise AudioError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz")
        samples = resample_audio(samples, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(samples, dtype=np.float32), sr


def read_blocks(
    path: str | Path,
    block_seconds: float = 1.0,
    sample_rate: int | None = None,
    *,
    resample: bool = False,
    downmix: bool = False,
) -> Iterator[tuple[np.ndarray, int]]:
    """Read ``path`` a block at a time, never the whole file: yields (float32 mono samples (N,) in
    [-1, 1], rate), about ``block_seconds`` each; memory does not grow with the file's length.

    sample_rate / resample / downmix as in :func:`load_audio` (a stream resampler carries its
    state across blocks, so no sample is lost or doubled at block edges). Unreadable, empty,
    wrong-rate or NaN audio, also part-way through the file, is a one-line ``AudioError``.
    """
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # soundfile raises several types for unreadable input
        raise AudioError(f"{path}: unreadable audio ({_reason(e)})") from None
    with f:
        if f.frames == 0:
            raise AudioError(f"{path}: empty audio (0 samples)")
        if f.channels > 1 and not downmix:
            raise AudioError(f"{path}: {f.channels} channels, expected mono")
        stream = None
        if sample_rate is not None and f.samplerate != sample_rate:
            if not resample:
                raise AudioError(f"{path}: sample rate {f.samplerate} Hz, expected {sample_rate} Hz")
            stream = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
        rate = sample_rate or f.samplerate
        blocks = f.blocks(blocksize=max(1, int(block_seconds * f.samplerate)), dtype="float32", always_2d=True)
        while True:
            try:
                block = next(blocks, None)
            except Exception as e:  # a read failing part-way: a truncated or corrupt file
                raise AudioError(f"{path}: unreadable audio after {f.tell() / f.samplerate:.1f} s ({_reason(e)})") from None
            if block is None:
                break
            x = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
            if not np.isfinite(x).all():
                raise AudioError(f"{path}: contains NaN or infinite samples")
            if stream is not None:
                x = stream.resample_chunk(x)
            if len(x):
                yield np.ascontiguousarray(x, dtype=np.float32), rate
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield tail.astype(np.float32, copy=False), rate


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def resample_audio(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality resampling with soxr; a no-op when the rates match."""
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32)


def save_audio(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM WAV (the Kaldi convention), clipping to [-1, 1]."""
    samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    sf.write(str(path), samples, sample_rate, subtype="PCM_16")


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header, without decoding the samples."""
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise AudioError(f"{path}: unreadable audio ({_reason(e)})") from None
    return info.frames / info.samplerate
