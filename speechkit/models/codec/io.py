"""A trained codec on disk: ``model.pt`` holds the weights and the codec config they were built
from, so loading needs nothing but the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from speechkit.checkpoint import load_checkpoint, save_atomic
from speechkit.config import to_dict
from speechkit.errors import SpeechkitError
from speechkit.models.codec.model import CODECS, CodecConfig, RvqCodec, VaeCodec, build_codec, codec_config_from_dict


def save_codec(state: dict[str, torch.Tensor], cfg: CodecConfig, path: str | Path) -> None:
    """A codec's state dict and its config as one file (``model.pt``)."""
    save_atomic({"model": state, "config": to_dict(cfg)}, path)


def load_codec(path: str | Path, device: str | torch.device = "cpu") -> VaeCodec | RvqCodec:
    """An experiment dir (its ``model.pt``) or a checkpoint file → the codec in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ckpt = load_checkpoint(path)
    if "config" not in ckpt or ckpt["config"].get("codec") not in CODECS:
        raise SpeechkitError(f"{path}: not a codec checkpoint")
    cfg = codec_config_from_dict(ckpt["config"], str(path))
    model = build_codec(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
