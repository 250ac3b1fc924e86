"""A trained speaker encoder on disk: ``model.pt`` holds the encoder's weights and the config they
were built from (``encoder: ecapa`` + ``encoder_conf``), so loading needs nothing but the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from speechkit.checkpoint import load_checkpoint, save_atomic
from speechkit.config import from_dict, to_dict
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.speaker.ecapa import ENCODERS, EcapaConfig, EcapaTdnn

FAMILY = "speaker"


def encoder_config_from_dict(encoder: str, conf: dict | None, source: str = "<config>",
                             lines: dict[str, int] | None = None) -> EcapaConfig:
    """``encoder`` + ``encoder_conf`` → the encoder's typed config; one-line errors."""
    lines = lines or {}
    if encoder not in ENCODERS:
        where = f"{source}:{lines['encoder']}" if "encoder" in lines else source
        raise ConfigError(f"{where}: unknown encoder '{encoder}' (known: {', '.join(ENCODERS)})")
    return from_dict(EcapaConfig, conf or {}, source=source, lines=lines, prefix="encoder_conf.")


def save_speaker_encoder(state: dict[str, torch.Tensor], cfg: EcapaConfig, path: str | Path) -> None:
    save_atomic({"family": FAMILY, "model": state, "config": {"encoder": "ecapa", "encoder_conf": to_dict(cfg)}}, path)


def load_speaker_encoder(path: str | Path, device: str | torch.device = "cpu") -> EcapaTdnn:
    """An experiment dir (its ``model.pt``), a ``model.pt`` or a training ``checkpoint.pt`` → the
    encoder in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ck = load_checkpoint(path)
    config = ck.get("config")
    if ck.get("family") != FAMILY or not isinstance(config, dict):
        raise SpeechkitError(f"{path}: not a speaker encoder (family '{ck.get('family')}')")
    cfg = encoder_config_from_dict(config.get("encoder", "ecapa"), config.get("encoder_conf"), str(path))
    state = ck["model"]
    if any(k.startswith("encoder.") for k in state):  # a checkpoint.pt: the classifier, head included
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    model = EcapaTdnn(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()
