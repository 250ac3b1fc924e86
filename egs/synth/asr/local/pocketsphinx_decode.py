#!/usr/bin/env python3
"""Transcribe a Kaldi data dir with pocketsphinx's bundled US English model (the baseline a speech
engineer would try first): writes OUT/hyp in Kaldi text format.

    local/pocketsphinx_decode.py DATA OUT [--nj N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speechkit.audio.io import load_audio
from speechkit.data.kaldi import read_table
from speechkit.eval.tts_judges import PocketsphinxJudge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="Kaldi data dir (wav.scp)")
    ap.add_argument("out", help="output dir; OUT/hyp is written")
    ap.add_argument("--nj", type=int, default=1, help="parallel pocketsphinx processes (default 1)")
    args = ap.parse_args()
    wavs = read_table(Path(args.data) / "wav.scp")
    keys = sorted(wavs)
    clips = [load_audio(wavs[k], 16000, resample=True, downmix=True)[0] for k in keys]
    hyps = PocketsphinxJudge().transcribe_many(clips, 16000, jobs=args.nj)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hyp").write_text("".join(f"{k} {h}\n" for k, h in zip(keys, hyps)))
    print(f"{out}/hyp: {len(keys)} utterances")


if __name__ == "__main__":
    main()
