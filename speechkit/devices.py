"""Where a model runs: the ``cpu`` / ``cuda`` / ``cuda:N`` names every ``--device`` and
``device=`` takes. Light on purpose (no ONNX Runtime, no torch): the CLI's parser uses it."""

from __future__ import annotations

import argparse
import re

from speechkit.errors import SpeechkitError

DEVICES = "cpu, cuda or cuda:N (N: the GPU's index, cuda = cuda:0)"


def parse_device(device: str) -> tuple[str, int]:
    """``cpu``, ``cuda`` or ``cuda:N`` → (kind, index): ("cpu", 0), ("cuda", 0), ("cuda", N); a
    one-line error for anything else."""
    if device in ("cpu", "cuda"):
        return device, 0
    match = re.fullmatch(r"cuda:([0-9]+)", device) if isinstance(device, str) else None
    if match is None:
        raise SpeechkitError(f"device must be {DEVICES}, got {device!r}")
    return "cuda", int(match.group(1))


def device_arg(text: str) -> str:
    """An argparse ``type`` for an ONNX Runtime ``--device``: the text as given, once
    :func:`parse_device` takes it (argparse's one-line error otherwise)."""
    try:
        parse_device(text)
    except SpeechkitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
