#!/usr/bin/env python3
"""Screenshot of the `speechkit serve` browser demo with a transcript on it (docs/serve-demo.png).

Builds the small synthetic corpus (or reuses --corpus), joins the best-recognised test
utterances into one wav with pauses between them, starts `speechkit serve` on a free port,
lets headless Chromium's fake microphone play the wav into the demo page, and saves a
screenshot when the page is done. Needs the Debian packages chromium and chromium-driver and the
Python package selenium (tools/test.sh installs them).

    .venv/bin/python tools/screenshot_serve.py                       # -> docs/serve-demo.png
    .venv/bin/python tools/screenshot_serve.py --utts 3 --out /tmp/demo.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers live beside the test that uses them

from test_serve_browser import (MODEL, RATE, browser_problem, chromium, padded_wav, run_page, served,  # noqa: E402
                                synth_test_utterances, wer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "serve-demo.png", help="PNG to write (default docs/serve-demo.png)")
    ap.add_argument("--model", type=Path, default=MODEL, help="model dir to serve (default models/asr-stream-synth)")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="synthetic corpus dir to use (built there if it has no test/text; default: a temporary dir)")
    ap.add_argument("--seed", type=int, default=3, help="corpus seed (default 3)")
    ap.add_argument("--utts", type=int, default=2, help="how many test utterances to speak, pauses between them (default 2)")
    ap.add_argument("--size", default="1100x800", help="viewport WIDTHxHEIGHT (default 1100x800)")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the page to finish (default 90)")
    args = ap.parse_args(argv)

    problem = browser_problem()
    if problem:
        print(f"screenshot_serve: {problem}", file=sys.stderr)
        return 1
    width, height = (int(v) for v in args.size.lower().split("x"))
    from speechkit.runtime import OnlineRecognizer

    rec = OnlineRecognizer(args.model)
    with tempfile.TemporaryDirectory(prefix="screenshot_serve_") as tmp:
        tmp = Path(tmp)
        utts = synth_test_utterances(args.corpus or tmp / "corpus", rec, seed=args.seed)[: args.utts]
        utts.sort(key=lambda u: u.utt_id)
        samples = padded_wav(utts, tmp / "mic.wav")
        ref = " ".join(u.text for u in utts)
        with served(args.model, log=tmp / "serve.log") as port, chromium(tmp / "mic.wav", (width, height)) as driver:
            run = run_page(driver, port, seconds=len(samples) / RATE, timeout=args.timeout)
            if run.state != "done":
                print(f"screenshot_serve: the page did not finish: {run.describe()}", file=sys.stderr)
                return 1
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
    print(f"{args.out}: {len(samples) / RATE:.1f} s of audio, {len(utts)} utterance(s); page WER {wer(ref, run.final_text):.3f}, "
          f"latency last · median {run.latency}")
    print(f"  ref:  {ref}\n  page: {run.final_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
