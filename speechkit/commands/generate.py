"""`speechkit generate MODEL --text "..." --seconds 10 --out O.wav [--mode magnet|hybrid|ar] [--rescore W]`:
text-to-music with an exported model (ONNX, run without torch)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("generate", help="text-to-music: generate audio from a caption with an exported MAGNeT model")
