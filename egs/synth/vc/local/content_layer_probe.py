#!/usr/bin/env python3
"""How much speaker identity each block of a streaming ASR encoder still carries: the check behind
the VC content layer (DESIGN.md: the content is the block whose output leaks the least timbre while
it still holds the words; the last block is what the CTC head reads).

For every block, each utterance's outputs (streamed at the given context, as `vc prepare` computes
them) are pooled to their mean and standard deviation over time; a logistic-regression speaker
classifier is fitted on half of each speaker's utterances and scored on the other half. Accuracy
near chance (1 / speakers) means the block has lost the voice. The input fbank itself is the first
row, for scale.

    python3 egs/synth/vc/local/content_layer_probe.py EXP [EXP ...] --data DATA_DIR [--context 64 4]
        [--min-utts 6] [--max-speakers 40] [--json OUT]
EXP: a directory with model.pt, config.yaml and tokens.txt (a training run, or
egs/synth/asr/local/onnx_to_checkpoint.py's output for a shipped int8 model).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from speechkit.audio.fbank import compute_fbank
from speechkit.audio.io import load_audio
from speechkit.data.kaldi import load_data_dir
from speechkit.errors import SpeechkitError
from speechkit.inference.asr import Recognizer


def pick(utts, min_utts: int, max_speakers: int, seed: int = 0):
    """Speakers with at least ``min_utts`` utterances (at most ``max_speakers``, drawn with the seed);
    each speaker's utterances split alternately into fit and score halves."""
    by_spk = defaultdict(list)
    for u in utts:
        by_spk[u.speaker].append(u)
    spks = sorted(s for s, us in by_spk.items() if len(us) >= min_utts)
    if len(spks) < 2:
        raise SpeechkitError(f"need two speakers with >= {min_utts} utterances; the data has {len(spks)}")
    rng = np.random.default_rng(seed)
    if len(spks) > max_speakers:
        spks = sorted(rng.choice(spks, max_speakers, replace=False).tolist())
    chosen = []
    for s in spks:
        us = sorted(by_spk[s], key=lambda u: u.utt_id)[: 2 * min_utts]
        chosen += [(u, s, i % 2 == 0) for i, u in enumerate(us)]
    return chosen, spks


def pooled(x: torch.Tensor) -> np.ndarray:
    """(T, D) → mean and standard deviation over time, (2 D,)."""
    return torch.cat([x.mean(0), x.std(0)]).numpy()


@torch.no_grad()
def block_features(rec: Recognizer, feats: np.ndarray, context) -> list[np.ndarray]:
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for b in rec.model.encoder.blocks]
    try:
        x = torch.from_numpy(feats)[None]
        rec.model.encode(x, torch.tensor([len(feats)]), context)
    finally:
        for h in hooks:
            h.remove()
    return [pooled(o[0].float()) for o in outs]


def accuracy(x: np.ndarray, y: np.ndarray, fit: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x[fit])
    clf = LogisticRegression(max_iter=3000, C=1.0).fit(sc.transform(x[fit]), y[fit])
    return float((clf.predict(sc.transform(x[~fit])) == y[~fit]).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exps", nargs="+", type=Path, help="model dirs (model.pt, config.yaml, tokens.txt) to probe")
    ap.add_argument("--data", required=True, type=Path, help="a data dir whose speakers the probe tells apart")
    ap.add_argument("--context", nargs=2, type=int, default=[64, 4], help="left and right chunks of the encoder (default 64 4)")
    ap.add_argument("--min-utts", type=int, default=6, help="utterances a speaker needs to take part; half fit, half scored (default 6)")
    ap.add_argument("--max-speakers", type=int, default=40, help="at most this many speakers, drawn with seed 0 (default 40)")
    ap.add_argument("--json", type=Path, help="write the accuracies here")
    args = ap.parse_args(argv)
    try:
        return _probe(args)
    except SpeechkitError as e:  # too few speakers, a bad data or model dir: one line, no traceback
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2


def _probe(args) -> int:
    chosen, spks = pick(load_data_dir(args.data), args.min_utts, args.max_speakers)
    y = np.array([spks.index(s) for _, s, _ in chosen])
    fit = np.array([f for _, _, f in chosen])
    report = {"data": str(args.data), "speakers": len(spks), "utterances": len(chosen), "chance": 1 / len(spks),
              "context": args.context, "models": {}}
    print(f"{len(spks)} speakers, {len(chosen)} utterances (half fit, half scored); chance {1 / len(spks):.3f}")
    for exp in args.exps:
        rec = Recognizer.from_exp_dir(exp, checkpoint="model.pt", device="cpu")
        fe = rec.model.cfg.frontend_conf
        rows, fbank_rows = None, []
        for u, _, _ in tqdm(chosen, desc=exp.name, file=sys.stderr):
            samples, _ = load_audio(u.wav, fe.sample_rate)
            feats = compute_fbank(samples, fe)
            fbank_rows.append(pooled(torch.from_numpy(feats)))
            per_block = block_features(rec, feats, tuple(args.context))
            rows = [[] for _ in per_block] if rows is None else rows
            for r, f in zip(rows, per_block):
                r.append(f)
        accs = {"fbank": accuracy(np.stack(fbank_rows), y, fit)}
        accs.update({f"block {i + 1}": accuracy(np.stack(r), y, fit) for i, r in enumerate(rows)})
        report["models"][str(exp)] = accs
        print(f"{exp}: " + ", ".join(f"{k} {v:.2f}" for k, v in accs.items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
