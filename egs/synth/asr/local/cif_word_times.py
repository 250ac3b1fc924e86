#!/usr/bin/env python3
"""Paraformer word start times (from the CIF weights) against a CTC forced alignment.

The reference comes from another model: the reference transcript is Viterbi-aligned with the CTC
head of REF_EXP (the AR baseline's jointly trained CTC layer), a word starting at the frame of its
first character's first emission. Paraformer times are taken at inference: the hypothesis words
that match the reference (difflib alignment of the word sequences) are compared.

    python3 egs/synth/asr/local/cif_word_times.py PARA_EXP REF_EXP DATA_DIR [--out word_times.json]
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys

import numpy as np
import torch
from tqdm import tqdm

from speechkit.audio.fbank import compute_fbank
from speechkit.audio.io import load_audio
from speechkit.data.kaldi import load_data_dir
from speechkit.decoding.cif_times import word_times
from speechkit.decoding.ctc import ctc_forced_align
from speechkit.errors import SpeechkitError
from speechkit.inference.asr import Recognizer


def ctc_word_starts(rec: Recognizer, feats: np.ndarray, text: str, frame_seconds: float) -> list[float]:
    ids = rec.tokenizer.encode(text)
    pieces = [rec.tokenizer.id_to_piece(i) for i in ids]
    x = torch.from_numpy(feats)[None].to(rec.device)
    with torch.no_grad():
        lp, n = rec.model.ctc_log_probs(x, torch.tensor([len(feats)], device=rec.device))
    frames = ctc_forced_align(lp[0, : int(n[0])].cpu().numpy(), ids)
    spans = [(f, f) for f in frames]
    return [s for _, s, _ in word_times(pieces, spans, frame_seconds)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("para_exp")
    ap.add_argument("ref_exp", help="experiment with a CTC layer (its head's ctc_weight > 0) for the forced alignment")
    ap.add_argument("data_dir")
    ap.add_argument("--max-utts", type=int, default=500)
    ap.add_argument("--tolerance", type=float, default=0.1, help="seconds (default 0.1)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    para = Recognizer.from_exp_dir(args.para_exp)
    ref = Recognizer.from_exp_dir(args.ref_exp)
    if ref.model.ctc is None:
        raise SpeechkitError(f"{args.ref_exp}: no CTC layer to align with")
    fe = para.model.cfg.frontend_conf
    frame_seconds = para.model.encoder.embed.factor * fe.frame_shift_ms / 1000.0
    diffs, words_total, utts = [], 0, 0
    for u in tqdm(load_data_dir(args.data_dir)[: args.max_utts], desc="word times", file=sys.stderr):
        samples, _ = load_audio(u.wav, fe.sample_rate)
        feats = compute_fbank(samples, fe)
        x = torch.from_numpy(feats)[None].to(para.device)
        ids, spans = para.model.recognize_with_spans(x, torch.tensor([len(feats)], device=para.device))[0]
        hyp = word_times([para.tokenizer.id_to_piece(i) for i in ids], spans, frame_seconds)
        try:
            ref_starts = ctc_word_starts(ref, feats, u.text, frame_seconds)
        except ValueError:
            continue
        ref_words = u.text.split()
        words_total += len(ref_words)
        utts += 1
        matcher = difflib.SequenceMatcher(a=ref_words, b=[w for w, _, _ in hyp], autojunk=False)
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                diffs.append(hyp[block.b + k][1] - ref_starts[block.a + k])
    d = np.abs(np.array(diffs))
    result = {
        "reference": f"CTC forced alignment with the CTC head of {args.ref_exp}",
        "utterances": utts, "ref_words": words_total, "matched_words": len(diffs),
        "within_tolerance": float((d <= args.tolerance).mean()) if len(d) else 0.0, "tolerance_s": args.tolerance,
        "median_abs_diff_s": float(np.median(d)) if len(d) else None,
        "mean_signed_diff_s": float(np.mean(diffs)) if diffs else None,
        "p90_abs_diff_s": float(np.percentile(d, 90)) if len(d) else None,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
