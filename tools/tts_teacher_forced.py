#!/usr/bin/env python3
"""How good is one step of a CLEAR model? Teacher-forced decoding on held-out prepared data: the
transformer sees the real latents so far (and the text and a prompt of the same speaker) and the
flow head samples every next latent; the samples, decoded by the codec, are judged by the
project ASR. Compared with the codec's own resynthesis and with the real latents plus isotropic
noise, this separates "the model cannot predict the next latent" from "free-running generation
drifts" (egs/synth/tts/RESULTS.md, "Why").

    python tools/tts_teacher_forced.py EXP PREP_DIR [--utts 12] [--codec DIR] [--json OUT]

PREP_DIR: `speechkit tts prepare` of held-out data with the model's codec. Prints one line per
condition: WER and, for the model's samples, their mean squared error to the real latents
(normalised units, in which the latents have unit variance).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tts_alignment import examples  # noqa: E402

from speechkit.models.tts.data import collate, load_prepared  # noqa: E402
from speechkit.models.tts.train import load_tts  # noqa: E402
from speechkit.runtime.codec import CodecRuntime  # noqa: E402
from speechkit.text.phonemes import PhonemeVocab  # noqa: E402

CONDITIONS = [(10, 1.0, 0.0), (10, 1.5, 0.0), (10, 1.5, 0.8)]  # flow steps, cfg scale, temperature


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp", help="experiment dir (model.pt)")
    ap.add_argument("prep", help="prepared held-out dir (latents.npy, utts.jsonl)")
    ap.add_argument("--utts", type=int, default=12, help="utterances (default 12)")
    ap.add_argument("--codec", help="codec dir (default: EXP/codec, else the one the model was trained on)")
    ap.add_argument("--asr-model", default="models/asr-stream-synth", help="exported ASR model of the WER judge")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    from speechkit.eval.audio_quality import asr_wer

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model, symbols, trained_codec = load_tts(args.exp)
    codec_dir = args.codec or (str(Path(args.exp) / "codec") if (Path(args.exp) / "codec").exists() else trained_codec)
    codec = CodecRuntime(codec_dir)
    utts = load_prepared(args.prep)[0][: args.utts]
    mean, std = model.latent_mean.numpy(), model.latent_std.numpy()
    ex = examples(utts, PhonemeVocab(symbols), mean, std, 0)
    refs = [u.text for u in utts]

    def wer(latents: list[np.ndarray]) -> float:
        audio = [codec.decode((z * std + mean).T.astype(np.float32)) for z in latents]
        return round(asr_wer(audio, refs, args.asr_model)["wer"], 2)

    result = {"exp": args.exp, "prep": args.prep, "codec": codec_dir, "utterances": len(ex), "wer_resynthesis": wer([e[2] for e in ex])}
    for s in (0.1, 0.3, 0.5):
        result[f"wer_noise_{s:g}"] = wer([e[2] + s * rng.standard_normal(e[2].shape).astype(np.float32) for e in ex])
    with torch.no_grad():
        hidden = []
        for e in ex:
            b = collate([e])
            h, _ = model.run(model.embed(b["kinds"], b["phones"], b["latents"]))
            hidden.append((h[b["flow_mask"]], b["targets"][b["flow_mask"]]))
        for steps, cfg, temp in CONDITIONS:
            samples = [model.head.sample(c, steps=steps, cfg_scale=cfg, temperature=temp) for c, _ in hidden]
            mse = float(np.mean([((z - t) ** 2).mean().item() for z, (_, t) in zip(samples, hidden)]))
            key = f"teacher_forced_steps{steps}_cfg{cfg:g}_temp{temp:g}"
            result[key] = {"wer": wer([z.numpy() for z in samples]), "mse": round(mse, 3)}
    for k, v in result.items():
        print(f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
