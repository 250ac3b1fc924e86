"""Benchmarks of the shipped runtimes (speed, latency, memory on this machine): each prints its
figures, then (with --json) the result as one JSON line, last."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON line, last")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON result to FILE")


def emit(result: dict, lines: list[str], args: argparse.Namespace) -> None:
    """Print the report lines, write ``--out``, print the JSON line with ``--json``."""
    for line in lines:
        print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result), flush=True)
