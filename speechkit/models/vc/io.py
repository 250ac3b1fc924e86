"""A trained voice-conversion model on disk: ``model.pt`` holds the weights (the latent statistics
included, as buffers) and the ``VcConfig`` they were built from, plus where its features came from
(the codec, the content encoder and its layer, the speaker encoder), so loading needs only the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from speechkit.checkpoint import load_checkpoint, save_atomic
from speechkit.config import from_dict, to_dict
from speechkit.errors import SpeechkitError
from speechkit.models.vc.model import MeanVC, VcConfig

FAMILY = "vc"


def save_vc(state: dict[str, torch.Tensor], cfg: VcConfig, features: dict, path: str | Path) -> None:
    """``features``: the dump's provenance (codec, asr, content_layer, att_context, speaker_model)."""
    save_atomic({"family": FAMILY, "model": state, "config": to_dict(cfg), "features": dict(features)}, path)


def load_vc(path: str | Path, device: str | torch.device = "cpu") -> tuple[MeanVC, dict]:
    """An experiment dir (its ``model.pt``), a ``model.pt`` or a training ``checkpoint.pt`` →
    (the model in eval mode, its feature provenance)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ck = load_checkpoint(path)
    if ck.get("family") != FAMILY or not isinstance(ck.get("config"), dict):
        raise SpeechkitError(f"{path}: not a voice-conversion model (family '{ck.get('family')}')")
    cfg = from_dict(VcConfig, ck["config"], source=str(path))
    model = MeanVC(cfg)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), dict(ck.get("features") or {})
