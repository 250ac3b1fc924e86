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


def comma_list(kind=int, positive: bool = False):
    """An argparse ``type``: "4,10" → [4, 10] of ``kind`` (at least one value; ``positive``: all ≥ 1)."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {kind.__name__}") from None
        if not values or (positive and min(values) < 1):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {'positive ' if positive else ''}{kind.__name__}")
        return values

    return parse

