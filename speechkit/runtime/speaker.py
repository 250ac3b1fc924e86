"""An exported speaker encoder (ECAPA-TDNN) with no torch: kaldi-native-fbank features and ONNX
Runtime give the L2-normalised embedding ``speechkit.models.speaker.embed`` gives in PyTorch, so
the voice-conversion runtime can embed a reference voice.

    spk = SpeakerRuntime("exp/speaker/onnx")
    e = spk.embed_file("reference.wav")     # (D,), unit length

``embed_file`` reads a file a block at a time and windows it as ``embed.embed_file`` does (one
pass up to 1.5 windows, else window by window, each window weighted by its seconds of speech), so
memory does not grow with the file's length; the window and minimum lengths come from the
export's metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from speechkit.audio.fbank import compute_fbank
from speechkit.audio.io import audio_duration, read_blocks, resample_audio
from speechkit.audio.vad import SpeechGate
from speechkit.errors import AudioError, SpeechkitError
from speechkit.runtime.session import open_model

MODEL_FILE = "speaker.onnx"
FAMILY = "speaker"
READ_SECONDS = 1.0  # file blocks


def windows(blocks: Iterable[np.ndarray], window: int) -> Iterator[np.ndarray]:
    """Consecutive blocks → pieces of ``window`` samples, the last one 0.5 to 1.5 windows long
    (the split of ``embed._windows``, which lives in a torch module)."""
    buf: list[np.ndarray] = []
    held = 0
    for x in blocks:
        buf.append(x)
        held += len(x)
        if held >= window + window // 2:
            joined = np.concatenate(buf)
            yield joined[:window]
            buf, held = [joined[window:]], len(joined) - window
    if held:
        yield np.concatenate(buf)


def is_exported_speaker(path: str | Path) -> bool:
    return (Path(path) / MODEL_FILE).is_file()


class SpeakerRuntime:
    def __init__(self, model_dir: str | Path, num_threads: int = 1):
        model_dir = Path(model_dir)
        if not is_exported_speaker(model_dir):
            raise SpeechkitError(f"{model_dir}: not an exported speaker encoder (no {MODEL_FILE}; export one with "
                                 "`speechkit speaker export MODEL OUT`)")
        self.session, self.meta, self.fbank_cfg = open_model(model_dir, MODEL_FILE, FAMILY, "speaker encoder", num_threads)
        self.sample_rate = self.fbank_cfg.sample_rate
        self.embed_dim = int(self.meta["embed_dim"])
        self.min_seconds = float(self.meta["min_seconds"])
        self.window_seconds = float(self.meta["window_seconds"])

    def embed_feats(self, feats: np.ndarray) -> np.ndarray:
        """fbank (T, F) → the L2-normalised embedding (D,)."""
        x = np.ascontiguousarray(feats, dtype=np.float32)[None]
        return self.session.run(None, {"feats": x})[0][0]

    def embed(self, samples: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """float32 mono samples in [-1, 1] at ``sample_rate`` (default: the model's) → the
        L2-normalised embedding (D,), in one pass as ``embed.embed_samples``; no speech gate (that
        is ``embed_file``'s). Under ``min_seconds`` is a one-line ``AudioError``."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"expected mono samples of shape (N,), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise AudioError("samples contain NaN or infinite values")
        rate = sample_rate or self.sample_rate
        if len(x) < self.min_seconds * rate:
            raise AudioError(f"{len(x) / rate:.2f} s of audio; a speaker embedding needs at least {self.min_seconds:g} s")
        return self.embed_feats(compute_fbank(resample_audio(x, rate, self.sample_rate), self.fbank_cfg))

    def embed_file(self, path: str | Path) -> np.ndarray:
        """One audio file, any rate and channel count → its L2-normalised embedding (D,); a file
        under ``min_seconds`` or without speech is a one-line ``AudioError``."""
        seconds = audio_duration(path)
        if seconds < self.min_seconds:
            raise AudioError(f"{path}: {seconds:.2f} s of audio; a speaker embedding needs at least {self.min_seconds:g} s")
        rate = self.sample_rate
        gate = SpeechGate(rate)
        blocks = (x for x, _ in read_blocks(path, READ_SECONDS, rate, resample=True, downmix=True))
        total = np.zeros(self.embed_dim, dtype=np.float64)
        speech = start = 0.0
        for piece in windows(blocks, int(self.window_seconds * rate)):
            end = start + len(piece) / rate
            gate.accept(piece)
            weight = gate.speech_seconds(start, end)
            if weight > 0:
                total += weight * self.embed_feats(compute_fbank(piece, self.fbank_cfg))
                speech += weight
            start = end
        if speech < gate.cfg.min_speech:
            raise AudioError(f"{path}: no speech found ({speech:.2f} s speech-like in {start:.2f} s: silent, or only noise or tones)")
        return (total / np.linalg.norm(total)).astype(np.float32)
