"""Benchmarks of the shipped runtimes (speed, latency, memory on this machine): each prints its
figures, then (with --json) the result as one JSON line, last."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process now, from /proc; for this process the peak (ru_maxrss)
    where /proc is missing."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        if pid != "self":
            raise
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far, from /proc."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
