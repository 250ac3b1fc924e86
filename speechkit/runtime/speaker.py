"""An exported speaker encoder (ECAPA-TDNN) with no torch: kaldi-native-fbank features and ONNX
Runtime give the L2-normalised embedding ``speechkit.models.speaker.embed`` gives in PyTorch, so
the voice-conversion runtime can embed a reference voice.

    spk = SpeakerRuntime("exp/speaker/onnx")
    e = spk.embed(samples, sample_rate=48000)   # (D,), unit length; = embed.embed_samples up to 30 s
    e = spk.embed_file("reference.wav")         # (D,), = embed.embed_file

Inputs longer than 1.5 windows are embedded window by window (the split of ``embed.embed_file``)
and the window embeddings averaged, so the encoder's working memory does not grow with the
input's length: ``embed_file`` weights each window by its seconds of speech (the speech gate's),
``embed`` and ``embed_batch`` by its seconds (no gate: a reference may be any sound). The window
and minimum lengths come from the export's metadata.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from speechkit.audio.fbank import compute_fbank
from speechkit.audio.io import audio_duration, read_blocks, resample_audio
from speechkit.audio.vad import SpeechGate
from speechkit.errors import AudioError, SpeechkitError
from speechkit.runtime.session import open_model

MODEL_FILE = "speaker.onnx"
FAMILY = "speaker"
READ_SECONDS = 1.0  # file blocks, and the blocks an in-memory input is windowed in


def windows(blocks: Iterable[np.ndarray], window: int) -> Iterator[np.ndarray]:
    """Consecutive blocks → pieces of ``window`` samples, the last one 0.5 to 1.5 windows long
    (the torch path, ``models/speaker/embed.py``, splits with this too)."""
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


def check_rate(sample_rate: object) -> int:
    """A positive whole number of Hz → int; else a one-line ``AudioError``."""
    if (isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real)
            or not float(sample_rate).is_integer() or sample_rate <= 0):
        raise AudioError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    return int(sample_rate)


class SpeakerRuntime:
    """``model_dir``: a folder written by ``speechkit speaker export`` (speaker.onnx, export.json).
    D: embedding dim; every embedding is float32 and unit length."""

    def __init__(self, model_dir: str | Path, num_threads: int = 1, device: str = "cpu"):
        model_dir = Path(model_dir)
        if not is_exported_speaker(model_dir):
            raise SpeechkitError(f"{model_dir}: not an exported speaker encoder (no {MODEL_FILE}; export one with "
                                 "`speechkit speaker export MODEL --out DIR`)")
        try:
            self.session, self.meta, self.fbank_cfg = open_model(model_dir, MODEL_FILE, FAMILY, "speaker encoder", num_threads,
                                                                 device=device)
        except SpeechkitError:
            raise
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's load failures share no base class
            raise SpeechkitError(f"{model_dir / MODEL_FILE}: not a readable ONNX file ({type(e).__name__})") from None
        self.sample_rate = self.fbank_cfg.sample_rate
        self.embed_dim = int(self.meta["embed_dim"])
        self.min_seconds = float(self.meta["min_seconds"])
        self.window_seconds = float(self.meta["window_seconds"])
        self.window = int(self.window_seconds * self.sample_rate)  # samples
        # the most frames one session call runs: the longest single pass (1.5 windows)
        self.max_call_frames = int(1.5 * self.window_seconds * self.fbank_cfg.frames_per_second)

    # features → embeddings

    def embed_feats(self, feats: np.ndarray) -> np.ndarray:
        """fbank (T, F) → the L2-normalised embedding (D,)."""
        return self._run(np.asarray(feats, dtype=np.float32)[None])[0]

    def _run(self, feats: np.ndarray) -> np.ndarray:
        """fbank (B, T, F), every row T real frames → (B, D)."""
        return self.session.run(None, {"feats": np.ascontiguousarray(feats, dtype=np.float32)})[0]

    # samples → embeddings

    def embed(self, samples: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """float32 mono samples (N,) in [-1, 1] at ``sample_rate`` (default: the model's) → the
        L2-normalised embedding (D,): ``embed.embed_samples`` (one pass) up to 1.5 windows, past
        that window by window (see the module's docstring); no speech gate (that is
        ``embed_file``'s). Under ``min_seconds``, not mono, not finite or a bad rate: a one-line
        ``AudioError``."""
        return self._embed_prepared(self._prepare(samples, sample_rate))

    def embed_batch(self, batch: Sequence[np.ndarray], sample_rate: int | None = None) -> np.ndarray:
        """N mono inputs at ``sample_rate`` → (N, D), row i = ``embed(batch[i])``. The graph has no
        lengths input (padding would enter the mean normalisation and the pooling), so inputs of
        the same frame count share session calls (up to ``max_call_frames`` frames a call) and
        the others run alone. Every input is checked before any is embedded; an error names the
        input's index."""
        xs = [self._prepare(x, sample_rate, f"input {i}: ") for i, x in enumerate(batch)]
        out = np.empty((len(xs), self.embed_dim), dtype=np.float32)
        by_frames: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, x in enumerate(xs):
            if self._is_long(x):
                out[i] = self._embed_prepared(x)
            else:
                feats = compute_fbank(x, self.fbank_cfg)
                by_frames.setdefault(len(feats), []).append((i, feats))
        for frames, rows in by_frames.items():
            per_call = max(1, self.max_call_frames // frames)
            for k in range(0, len(rows), per_call):
                part = rows[k : k + per_call]
                out[[i for i, _ in part]] = self._run(np.stack([f for _, f in part]))
        return out

    def _prepare(self, samples: np.ndarray, sample_rate: int | None, where: str = "") -> np.ndarray:
        """Checked samples → float32 (N,) at the model's rate."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"{where}expected mono samples of shape (N,), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise AudioError(f"{where}samples contain NaN or infinite values")
        rate = self.sample_rate if sample_rate is None else check_rate(sample_rate)
        if len(x) < self.min_seconds * rate:
            raise AudioError(f"{where}{len(x) / rate:.2f} s of audio; a speaker embedding needs at least {self.min_seconds:g} s")
        return resample_audio(x, rate, self.sample_rate)

    def _is_long(self, x: np.ndarray) -> bool:
        """More than one window piece (``windows`` splits from 1.5 windows on)."""
        return len(x) >= self.window + self.window // 2

    def _embed_prepared(self, x: np.ndarray) -> np.ndarray:
        """Samples at the model's rate → (D,): one pass, or the seconds-weighted mean of the
        window embeddings; features are computed a window at a time."""
        if not self._is_long(x):
            return self.embed_feats(compute_fbank(x, self.fbank_cfg))
        block = int(READ_SECONDS * self.sample_rate)
        total = np.zeros(self.embed_dim, dtype=np.float64)
        for piece in windows((x[i : i + block] for i in range(0, len(x), block)), self.window):
            total += len(piece) * self.embed_feats(compute_fbank(piece, self.fbank_cfg))
        return (total / np.linalg.norm(total)).astype(np.float32)

    # files → embeddings

    def embed_file(self, path: str | Path) -> np.ndarray:
        """One audio file, any rate and channel count → its L2-normalised embedding (D,), as
        ``embed.embed_file``; a file under ``min_seconds`` or without speech is a one-line
        ``AudioError``."""
        seconds = audio_duration(path)
        if seconds < self.min_seconds:
            raise AudioError(f"{path}: {seconds:.2f} s of audio; a speaker embedding needs at least {self.min_seconds:g} s")
        rate = self.sample_rate
        gate = SpeechGate(rate)
        blocks = (x for x, _ in read_blocks(path, READ_SECONDS, rate, resample=True, downmix=True))
        total = np.zeros(self.embed_dim, dtype=np.float64)
        speech = start = 0.0
        for piece in windows(blocks, self.window):
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
