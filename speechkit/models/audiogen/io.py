"""A trained text-to-music model on disk: ``model.pt`` holds the kind (``magnet`` or ``ar``), its
weights and the config they were built from, the caption vocabulary, and where its tokens came from
(the RVQ codec, how many of its codebooks, the frame and sample rates), so loading needs only the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from speechkit.checkpoint import load_checkpoint, save_atomic
from speechkit.config import from_dict, to_dict
from speechkit.errors import SpeechkitError
from speechkit.models.audiogen.ar import DelayAR
from speechkit.models.audiogen.config import DelayArConfig, MagnetConfig
from speechkit.models.audiogen.magnet import Magnet
from speechkit.models.audiogen.text import CaptionTokenizer

FAMILY = "audiogen"
KINDS = {"magnet": (Magnet, MagnetConfig), "ar": (DelayAR, DelayArConfig)}


def build_model(kind: str, cfg: MagnetConfig | DelayArConfig) -> Magnet | DelayAR:
    if kind not in KINDS:
        raise SpeechkitError(f"unknown audiogen model kind '{kind}' (known: {', '.join(KINDS)})")
    return KINDS[kind][0](cfg)


def save_audiogen(state: dict[str, torch.Tensor], kind: str, cfg: MagnetConfig | DelayArConfig, tokenizer: CaptionTokenizer,
                  tokens: dict, path: str | Path) -> None:
    """``tokens``: the token dump's provenance (``codec``, ``codebooks``, ``frame_rate``, ``sample_rate``)."""
    if kind not in KINDS:
        raise SpeechkitError(f"unknown audiogen model kind '{kind}' (known: {', '.join(KINDS)})")
    save_atomic({"family": FAMILY, "kind": kind, "model": state, "config": to_dict(cfg), "words": list(tokenizer.words),
                 "tokens": dict(tokens)}, path)


def load_audiogen(path: str | Path, device: str | torch.device = "cpu") -> tuple[Magnet | DelayAR, CaptionTokenizer, dict]:
    """An experiment dir (its ``model.pt``) or a ``model.pt`` → (the model in eval mode, its caption
    tokenizer, its token provenance)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    ck = load_checkpoint(path)
    kind = ck.get("kind")
    if ck.get("family") != FAMILY or kind not in KINDS or not isinstance(ck.get("config"), dict):
        raise SpeechkitError(f"{path}: not a text-to-music model (family '{ck.get('family')}', kind '{kind}')")
    cls, cfg_cls = KINDS[kind]
    model = cls(from_dict(cfg_cls, ck["config"], source=str(path)))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), CaptionTokenizer(ck["words"]), dict(ck.get("tokens") or {})
