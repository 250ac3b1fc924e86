#!/usr/bin/env python3
"""A word n-gram model fused into the streaming model's CTC beam search, swept over LM weight and
word bonus on one data dir, with an honest figure for the choice: the data dir's speakers are split
in two folds, the setting is chosen on one fold and scored on the other (and the other way round),
so the "cross-validated" WER never scores a setting on the utterances that chose it. The WER of
the best setting on the whole set is printed too, labelled as tuned on itself.

    python3 egs/synth/asr/local/lm_fusion_sweep.py models/asr-stream-synth REAL_DEV LM.arpa --out DIR \\
        [--weights 0.2,0.35,0.5,0.8] [--bonuses 0,1,2.5] [--beam 16] [--nj 2]

Writes DIR/<setting>/hyp for every decode and DIR/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from speechkit.data.kaldi import load_data_dir, read_table
from speechkit.eval.wer import utterance_errors


def decode(model: str, data: str, out: Path, nj: int, extra: list[str]) -> dict[str, str]:
    """``speechkit decode-stream`` into ``out`` (once: a finished decode is reused) → key → text."""
    if not (out / "hyp").is_file():
        cmd = ["speechkit", "decode-stream", model, data, str(out), "--nj", str(nj), *extra]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
            sys.exit(f"lm_fusion_sweep: {' '.join(cmd)} failed (its error is above)")
    return read_table(out / "hyp", allow_empty_value=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("lm")
    p.add_argument("--out", required=True)
    p.add_argument("--weights", default="0.2,0.35,0.5,0.8")
    p.add_argument("--bonuses", default="0,1,2.5")
    p.add_argument("--beam", type=int, default=16)
    p.add_argument("--nj", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    utts = load_data_dir(args.data)
    keys = [u.utt_id for u in utts]
    refs = {u.utt_id: u.text for u in utts}
    speakers = sorted({u.speaker for u in utts})
    fold_of = {s: i % 2 for i, s in enumerate(speakers)}  # alternate speakers, sorted by name
    fold = {u.utt_id: fold_of[u.speaker] for u in utts}
    words = {f: sum(len(refs[k].split()) for k in keys if fold[k] == f) for f in (0, 1)}

    def errors(hyps: dict[str, str]) -> dict[str, int]:
        return dict(zip(keys, utterance_errors([refs[k] for k in keys], [hyps.get(k, "") for k in keys])))

    runs = {"greedy": ["--beam", "1"], f"beam{args.beam}": ["--beam", str(args.beam)]}
    grid = [(float(w), float(b)) for w in args.weights.split(",") for b in args.bonuses.split(",")]
    for w, b in grid:
        runs[f"lm_w{w:g}_b{b:g}"] = ["--beam", str(args.beam), "--lm", args.lm, "--lm-weight", str(w), "--word-bonus", str(b)]
    errs = {}
    for i, (name, extra) in enumerate(runs.items(), 1):
        print(f"[{i}/{len(runs)}] {name}", file=sys.stderr, flush=True)
        errs[name] = errors(decode(args.model, args.data, out / name, args.nj, extra))
    total_words = sum(words.values())
    wer = {name: round(100.0 * sum(e.values()) / total_words, 2) for name, e in errs.items()}
    lm_names = [n for n in runs if n.startswith("lm_")]
    chosen, cv_errors = {}, 0
    for f in (0, 1):  # choose on the other fold, score on this one
        other = 1 - f
        best = min(lm_names, key=lambda n: sum(e for k, e in errs[n].items() if fold[k] == other))
        chosen[f] = best
        cv_errors += sum(e for k, e in errs[best].items() if fold[k] == f)
    best_all = min(lm_names, key=lambda n: wer[n])
    report = {"data": args.data, "lm": args.lm, "beam": args.beam, "utterances": len(keys), "words": total_words,
              "speakers_per_fold": [sum(1 for s in speakers if fold_of[s] == f) for f in (0, 1)], "wer": wer,
              "cross_validated": {"wer": round(100.0 * cv_errors / total_words, 2), "chosen": {str(f): n for f, n in chosen.items()}},
              "best_on_all": {"setting": best_all, "wer": wer[best_all], "note": "tuned on the set itself: optimistic"}}
    (out / "sweep.json").write_text(json.dumps(report, indent=1) + "\n")
    for name in runs:
        print(f"{name:<22} WER {wer[name]:6.2f} %")
    print(f"cross-validated over two speaker folds: WER {report['cross_validated']['wer']:.2f} % "
          f"(settings chosen on the other fold: {chosen[0]}, {chosen[1]})")
    print(f"best on the whole set (tuned on itself): {best_all} {wer[best_all]:.2f} %")


if __name__ == "__main__":
    main()
