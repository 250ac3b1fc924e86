"""Audio → one L2-normalised speaker embedding per file, at any sample rate and channel count.

A file is read a block at a time, so memory does not grow with its length: files up to
``1.5 × WINDOW_SECONDS`` are embedded in one pass, longer ones window by window and the window
embeddings averaged, each weighted by its seconds of speech (the speech-activity gate's), so
silence and noise count for nothing. A file shorter than ``MIN_SECONDS`` or without speech is a
one-line ``AudioError``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speechkit.audio.fbank import FbankConfig, compute_fbank
from speechkit.audio.io import audio_duration, read_blocks
from speechkit.audio.vad import SpeechGate
from speechkit.errors import AudioError
from speechkit.models.speaker.ecapa import EcapaTdnn
from speechkit.runtime.speaker import windows

MIN_SECONDS = 0.5
WINDOW_SECONDS = 20.0
SAMPLE_RATE = FbankConfig().sample_rate


def fbank_config(model: EcapaTdnn) -> FbankConfig:
    return FbankConfig(num_mel_bins=model.cfg.num_mel_bins)


@torch.no_grad()
def embed_feats(model: EcapaTdnn, feats: np.ndarray) -> np.ndarray:
    """fbank (T, F) → the L2-normalised embedding (D,)."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))[None].to(device)
    return model.embed(x)[0].float().cpu().numpy()


def embed_samples(model: EcapaTdnn, samples: np.ndarray) -> np.ndarray:
    """float32 mono samples at ``SAMPLE_RATE`` → the L2-normalised embedding (D,), in one pass."""
    return embed_feats(model, compute_fbank(samples, fbank_config(model)))


def embed_file(model: EcapaTdnn, path: str | Path) -> np.ndarray:
    """One audio file → its L2-normalised embedding (D,); see the module's docstring."""
    seconds = audio_duration(path)
    if seconds < MIN_SECONDS:
        raise AudioError(f"{path}: {seconds:.2f} s of audio; a speaker embedding needs at least {MIN_SECONDS} s")
    gate = SpeechGate(SAMPLE_RATE)
    blocks = (x for x, _ in read_blocks(path, 1.0, SAMPLE_RATE, resample=True, downmix=True))
    total = np.zeros(model.cfg.embed_dim, dtype=np.float64)
    speech = start = 0.0
    for piece in windows(blocks, int(WINDOW_SECONDS * SAMPLE_RATE)):
        end = start + len(piece) / SAMPLE_RATE
        gate.accept(piece)
        weight = gate.speech_seconds(start, end)
        if weight > 0:
            total += weight * embed_samples(model, piece)
            speech += weight
        start = end
    if speech < gate.cfg.min_speech:
        raise AudioError(f"{path}: no speech found ({speech:.2f} s speech-like in {start:.2f} s: silent, or only noise or tones)")
    return (total / np.linalg.norm(total)).astype(np.float32)
