#!/usr/bin/env python3
"""Print what run.sh just trained beside the shipped model of this recipe on the same test sets
(run.sh's last stage decodes them with the shipped model first), and add the table to RESULTS.md.

  local/compare_shipped.py --exp EXP --data DATA --decodes EXP/shipped [--config conf/train_cpu.yaml] [--ngpu 0]
"""

import argparse
import os
import sys
from pathlib import Path

from speechkit.errors import SpeechkitError
from speechkit.eval.compare import compare, console_lines, markdown_lines, write_results_section

ROOT = Path(__file__).resolve().parents[4]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="this run's experiment dir (model_info.json, metrics.jsonl, decode_*/wer.json)")
    p.add_argument("--data", required=True, help="this run's corpus: DATA/train/utt2dur, DATA/<split>/text")
    p.add_argument("--decodes", required=True, help="the shipped model's decodes: DECODES/decode_<split>/wer.json")
    p.add_argument("--model", default=str(ROOT / "models" / "asr-stream-synth"), help="the shipped model dir, with its card.json")
    p.add_argument("--config", default="conf/train_cpu.yaml", help="this run's config, for its label")
    p.add_argument("--ngpu", type=int, default=0, help="GPUs this run trained on (0: the CPU cores of this machine)")
    p.add_argument("--splits", default="test test_unseen", help="test splits, space-separated (default: test test_unseen)")
    p.add_argument("--results", default=None, help="RESULTS.md to add the table to (replacing an earlier one)")
    args = p.parse_args()

    device = "GPU" if args.ngpu else "CPU"
    hardware = f"{args.ngpu} GPU" if args.ngpu else f"{os.cpu_count()} cores"
    splits = args.splits.split()
    try:
        title, rows, notes = compare(args.exp, args.data, args.model, args.decodes, f"this run ({device}, {args.config})",
                                     hardware, splits, device=device)
    except (SpeechkitError, OSError) as e:
        print(f"{sys.argv[0]}: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(console_lines(title, rows, notes, splits)))
    if args.results:
        write_results_section(args.results, markdown_lines(title, rows, notes, splits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
