"""Checkpoint files: written atomically (temp file + rename), loaded with ``weights_only=True``, and
averaged (last N epochs, or best N by dev loss). Below models, so their ``model.pt`` I/O, training,
inference and export share it; torch, so the runtime never imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from speechkit.errors import SpeechkitError


def save_atomic(obj: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpeechkitError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SpeechkitError(f"{path}: cannot load checkpoint ({str(e).splitlines()[0]})") from None


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the float tensors of several model state dicts (integer buffers from the last)."""
    if not paths:
        raise SpeechkitError("no checkpoints to average")
    avg: dict[str, torch.Tensor] = {}
    for p in paths:
        state = load_checkpoint(p)["model"]
        for k, v in state.items():
            if v.is_floating_point():
                avg[k] = avg[k] + v.double() if k in avg else v.double()
            else:
                avg[k] = v
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in avg.items()}


def epoch_checkpoints(exp_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in exp_dir.glob("epoch_*.pt"):
        try:
            out.append((int(p.stem.split("_")[1]), p))
        except ValueError:
            continue
    return sorted(out)


def select_for_average(exp_dir: str | Path, last: int | None = None, best: int | None = None) -> list[Path]:
    """The last N epoch checkpoints, or the N with the lowest dev loss in ``metrics.jsonl``."""
    exp_dir = Path(exp_dir)
    epochs = epoch_checkpoints(exp_dir)
    if not epochs:
        raise SpeechkitError(f"{exp_dir}: no epoch_*.pt checkpoints")
    if best:
        dev: dict[int, float] = {}
        metrics = exp_dir / "metrics.jsonl"
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                rec = json.loads(line)
                if "dev_loss" in rec:
                    dev[rec["epoch"]] = rec["dev_loss"]
        ranked = sorted((dev[e], e, p) for e, p in epochs if e in dev)
        if not ranked:
            raise SpeechkitError(f"{exp_dir}/metrics.jsonl: no dev losses to rank checkpoints by")
        return [p for _, _, p in ranked[:best]]
    return [p for _, p in epochs[-(last or 1):]]
