"""Torch-free pieces shared by the torch synthesiser and the ONNX runtime: the synthesis options,
the prompt reader and the generation length limit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


STOP_THRESHOLD = 0.5  # generation ends before a latent once sigmoid(stop logit) exceeds this


@dataclass(frozen=True)
class SynthOptions:
    steps: int = 10  # Euler steps of the flow head per latent
    cfg_scale: float = 1.5  # classifier-free guidance (1 = none)
    temperature: float = 0.8  # scale of the starting noise
    chunk_frames: int = 4  # latents per streamed audio chunk (160 ms at 25 Hz)
    prompt_seconds: float = 3.0  # the prompt's first seconds are used
    seed: int = 0


def read_prompt(prompt: str | Path | np.ndarray, sample_rate: int) -> np.ndarray:
    """A prompt wav path or mono float32 samples at ``sample_rate``."""
    if isinstance(prompt, np.ndarray):
        return prompt.astype(np.float32)
    from speechkit.audio.io import load_audio

    return load_audio(str(prompt), sample_rate, resample=True, downmix=True)[0]


def max_frames(n_phones: int, frame_rate: float) -> int:
    """A generous length limit: 1 s plus 240 ms per phoneme symbol."""
    return int(frame_rate * (1.0 + 0.24 * n_phones))
