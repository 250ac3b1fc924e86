"""Where a model runs: the ``cpu`` / ``cuda[:N]`` / ``tensorrt[:N]`` names every ``--device`` and
``device=`` takes, and how many GPUs this process can see. Light on purpose (no ONNX Runtime, no
torch): the CLI's parser uses it."""

from __future__ import annotations

import argparse
import ctypes
import re

from speechkit.errors import SpeechkitError

DEVICES = "cpu, cuda, cuda:N, tensorrt or tensorrt:N (N: the GPU's index, cuda = cuda:0, tensorrt = tensorrt:0)"


def parse_device(device: str) -> tuple[str, int]:
    """``cpu``, ``cuda[:N]`` or ``tensorrt[:N]`` → (kind, index): ("cpu", 0), ("cuda", N),
    ("tensorrt", N), N 0 when left out; a one-line error for anything else. Every kind but cpu is a GPU."""
    if device == "cpu":
        return device, 0
    match = re.fullmatch(r"(cuda|tensorrt)(?::([0-9]+))?", device) if isinstance(device, str) else None
    if match is None:
        raise SpeechkitError(f"device must be {DEVICES}, got {device!r}")
    return match.group(1), int(match.group(2) or 0)


def device_arg(text: str) -> str:
    """An argparse ``type`` for an ONNX Runtime ``--device``: the text as given, once
    :func:`parse_device` takes it (argparse's one-line error otherwise)."""
    try:
        parse_device(text)
    except SpeechkitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def visible_gpus() -> int | None:
    """How many GPUs CUDA shows this process (CUDA_VISIBLE_DEVICES applied), asked of the driver's
    libcuda without torch; None where there is no driver or it cannot say. For error messages only:
    it initialises CUDA in the process."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return count.value
