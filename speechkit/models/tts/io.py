"""A trained CLEAR on disk: ``model.pt`` (weights, config, phoneme vocabulary, the codec it was
trained on) written and read back. Used by training, export, synthesis and the benches alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from speechkit.checkpoint import load_checkpoint, save_atomic
from speechkit.config import from_dict, to_dict
from speechkit.errors import SpeechkitError
from speechkit.models.tts.clear import ClearConfig, ClearTTS

FAMILY = "tts-clear"


def save_tts(model: ClearTTS, vocab_symbols: list[str], codec: str, path: str | Path) -> None:
    save_atomic({"model": model.state_dict(), "config": to_dict(model.cfg), "phones": vocab_symbols, "codec": codec,
                 "family": FAMILY}, path)


def clear_config_from_dict(d: dict) -> ClearConfig:
    return from_dict(ClearConfig, d, source="model.pt")


def load_tts(path: str | Path, device: str | torch.device = "cpu") -> tuple[ClearTTS, list[str], str]:
    """An experiment dir (its model.pt) or a model.pt → (model in eval mode, phoneme symbols, codec dir)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ck = load_checkpoint(path)
    if ck.get("family") != FAMILY:
        raise SpeechkitError(f"{path}: not a CLEAR TTS checkpoint")
    model = ClearTTS(clear_config_from_dict(ck["config"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), list(ck["phones"]), ck["codec"]
