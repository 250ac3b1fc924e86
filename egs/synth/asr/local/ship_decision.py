#!/usr/bin/env python3
"""Whether a retrained model replaces the shipped one (issue 19): replace when it is better on the
real-speech dev set and no worse on the synth test set, up to a stated tolerance in WER points.
Prints the comparison and the verdict, and writes them as JSON.

  local/ship_decision.py --new-real-dev NEW_REAL_DEV_WER.json --new-test NEW_TEST_WER.json \\
      --shipped-real-dev OLD_REAL_DEV_WER.json --shipped-test OLD_TEST_WER.json [--tolerance 0.5] [--out decision.json] \
      [--paired REAL_DEV_TEXT NEW_HYP SHIPPED_HYP]

Each file is a `speechkit score --out` wer.json. --paired adds, for the real dev set, how many
utterances each model gets better (words and characters) and a paired bootstrap over utterances:
the share of 10 000 resamples in which the new model makes fewer errors. The verdict stays the rule's.
"""

import argparse
import json
import sys
from pathlib import Path

from speechkit.errors import SpeechkitError
from speechkit.data.kaldi import read_table
from speechkit.eval.wer import paired_bootstrap, read_wer_json, utterance_errors

TOLERANCE = 0.5  # absolute WER points the synth test set may lose
_EPS = 1e-9  # wer.json rounds to 2 decimals: 13.63 - 13.13 must count as 0.5, not 0.5000000000000018


def decide(new: dict[str, float], shipped: dict[str, float], tolerance: float = TOLERANCE) -> dict:
    """The verdict for WER % on ``real_dev`` and ``test`` of the new and the shipped model:
    ``replace`` when the new one is strictly better on real dev and at most ``tolerance`` points
    worse on test, else ``keep``."""
    if tolerance < 0:
        raise SpeechkitError(f"--tolerance {tolerance}: must be >= 0 WER points")
    real_delta = new["real_dev"] - shipped["real_dev"]
    test_delta = new["test"] - shipped["test"]
    better_real = real_delta < -_EPS
    test_ok = test_delta <= tolerance + _EPS
    if better_real and test_ok:
        why = f"better on real dev ({real_delta:+.2f}) and within +{tolerance:g} on synth test ({test_delta:+.2f})"
    elif not better_real:
        why = f"not better on real dev ({real_delta:+.2f})"
    else:
        why = f"worse on synth test by {test_delta:+.2f}, over the +{tolerance:g} tolerance"
    return {
        "rule": f"replace when better on real dev and no worse than +{tolerance:g} WER points on synth test",
        "tolerance": tolerance,
        "new": new,
        "shipped": shipped,
        "delta": {"real_dev": round(real_delta, 2), "test": round(test_delta, 2)},
        "verdict": "replace" if better_real and test_ok else "keep",
        "why": why,
    }


def paired(ref_path: str, new_hyp: str, shipped_hyp: str, draws: int = 10_000) -> dict:
    """Per-utterance comparison of two hyp files on one reference (missing hypotheses are empty)."""
    ref = read_table(Path(ref_path), allow_empty_value=True)
    new, old = (read_table(Path(p), allow_empty_value=True) for p in (new_hyp, shipped_hyp))
    keys = sorted(k for k in ref if ref[k].strip())  # as scoring does: an empty reference is left out
    if not keys:
        raise SpeechkitError(f"{ref_path}: no utterance with a non-empty reference to compare on")
    out = {"utterances": len(keys), "draws": draws}
    refs = [ref[k] for k in keys]
    for unit in ("word", "char"):
        a = utterance_errors(refs, [new.get(k, "") for k in keys], unit)
        b = utterance_errors(refs, [old.get(k, "") for k in keys], unit)
        out[unit] = {"fewer": sum(x < y for x, y in zip(a, b)), "more": sum(x > y for x, y in zip(a, b)),
                     "errors_new": sum(a), "errors_shipped": sum(b), "p_fewer": paired_bootstrap(a, b, draws)}
    return out


def report_lines(d: dict) -> list[str]:
    lines = [f"ship decision: {d['rule']}"]
    for key, label in (("real_dev", "real dev"), ("test", "synth test")):
        lines.append(f"  {label:<10}  new {d['new'][key]:6.2f} %   shipped {d['shipped'][key]:6.2f} %   ({d['delta'][key]:+.2f})")
    if "paired" in d:
        for unit in ("word", "char"):
            p = d["paired"][unit]
            lines.append(f"  real dev, {unit} errors: fewer on {p['fewer']} of {d['paired']['utterances']} utterances, more on "
                         f"{p['more']}; {p['errors_new']} vs {p['errors_shipped']}; fewer in {100 * p['p_fewer']:.1f} % of "
                         f"{d['paired']['draws']} bootstrap draws")
    lines.append(f"VERDICT: {d['verdict'].upper()} the shipped model: {d['why']}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-real-dev", required=True, help="the new model's wer.json on the real-speech dev set")
    p.add_argument("--new-test", required=True, help="the new model's wer.json on the synth test set")
    p.add_argument("--shipped-real-dev", required=True, help="the shipped model's wer.json on the real-speech dev set")
    p.add_argument("--shipped-test", required=True, help="the shipped model's wer.json on the synth test set")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help=f"WER points the synth test may lose (default {TOLERANCE})")
    p.add_argument("--label", default="", help="a name for the comparison, kept in the JSON (e.g. the model dir)")
    p.add_argument("--out", default=None, help="write the decision here as JSON")
    p.add_argument("--paired", nargs=3, metavar=("REF", "NEW_HYP", "SHIPPED_HYP"), default=None,
                   help="real dev text and both models' hyp files: per-utterance counts and a paired bootstrap")
    args = p.parse_args()
    try:
        new = {"real_dev": read_wer_json(args.new_real_dev), "test": read_wer_json(args.new_test)}
        shipped = {"real_dev": read_wer_json(args.shipped_real_dev), "test": read_wer_json(args.shipped_test)}
        decision = decide(new, shipped, args.tolerance)
        if args.paired:
            decision["paired"] = paired(*args.paired)
    except SpeechkitError as e:
        print(f"{sys.argv[0]}: error: {e}", file=sys.stderr)
        return 2
    decision = {"label": args.label, **decision} if args.label else decision
    print("\n".join(report_lines(decision)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(decision, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
