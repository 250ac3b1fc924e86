#!/usr/bin/env python3
"""CLEAR's latents, made where the model is and judged where the codec and the ASR are.

``generate`` (on the GPU machine, no codec needed) writes, for held-out prepared utterances with a
prompt from another utterance of the same speaker:

- ``tf``: teacher-forced latents — the transformer sees the real latents so far and the flow head
  samples each next one (10 Euler steps, no guidance, temperature 0), with their mean squared
  error to the real ones in the model's normalised units (the latents have unit variance there);
- ``free``: free-running synthesis with the product's defaults (10 steps, guidance 1.5,
  temperature 0.8), with its length relative to the real utterance;
- ``real``: the real latents (the codec resynthesis reference).

``judge`` (here) decodes every condition with the codec and scores it with the project ASR (WER):

    python tools/tts_latents.py generate EXP PREP OUT.npz [--utts 24] [--device cuda]
    python tools/tts_latents.py judge OUT.npz --codec DIR [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def generate(args) -> None:
    import torch
    from tts_alignment import examples

    from speechkit.models.tts.data import collate, load_prepared
    from speechkit.models.tts.fast import FastGenerator
    from speechkit.models.tts.options import SynthOptions
    from speechkit.models.tts.train import load_tts, to_device
    from speechkit.text.phonemes import PhonemeVocab

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, symbols, _ = load_tts(args.exp, dev)
    utts = load_prepared(args.prep)[0][: args.utts]
    mean, std = model.latent_mean.cpu().numpy(), model.latent_std.cpu().numpy()
    ex = examples(utts, PhonemeVocab(symbols), mean, std, 0)
    opts = SynthOptions()
    fast = FastGenerator(model)
    out: dict[str, np.ndarray] = {}
    mse, ratio = [], []
    gen = torch.Generator(dev).manual_seed(args.seed)
    with torch.no_grad():
        for u, (ids, prompt, z) in zip(utts, ex):
            b = to_device(collate([(ids, prompt, z)]), dev)
            h, _ = model.run(model.embed(b["kinds"], b["phones"], b["latents"]))
            c, t = h[b["flow_mask"]], b["targets"][b["flow_mask"]]
            tf = model.head.sample(c, 10, 1.0, 0.0)
            mse.append(float(((tf - t) ** 2).mean()))
            free = list(fast.generate(torch.from_numpy(ids), torch.from_numpy(prompt * std + mean), steps=opts.steps,
                                      cfg_scale=opts.cfg_scale, temperature=opts.temperature, generator=gen))
            free = torch.stack(free).numpy() if free else np.zeros((0, len(mean)), np.float32)
            ratio.append(len(free) / len(z))
            out[f"{u.utt}/tf"] = model.denormalize(tf).cpu().numpy()
            out[f"{u.utt}/free"] = free
            out[f"{u.utt}/real"] = z * std + mean
    meta = {"exp": str(args.exp), "prep": str(args.prep), "utts": [u.utt for u in utts], "texts": [u.text for u in utts],
            "tf_mse": round(float(np.mean(mse)), 4), "free_length_ratio_median": round(float(np.median(ratio)), 3),
            "free_options": {"steps": opts.steps, "cfg_scale": opts.cfg_scale, "temperature": opts.temperature}}
    np.savez_compressed(args.out, meta=np.array(json.dumps(meta)), **out)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("utts", "texts")}))


def judge(args) -> None:
    from speechkit.eval.audio_quality import asr_wer
    from speechkit.runtime.codec import CodecRuntime

    data = np.load(args.npz)
    meta = json.loads(str(data["meta"]))
    codec = CodecRuntime(args.codec)
    result = {k: meta[k] for k in ("exp", "tf_mse", "free_length_ratio_median")}
    for cond in ("real", "tf", "free"):
        audio = [codec.decode(data[f"{u}/{cond}"].T.astype(np.float32)) if len(data[f"{u}/{cond}"]) else np.zeros(640, np.float32)
                 for u in meta["utts"]]
        if args.wav_dir:
            import soundfile as sf

            d = Path(args.wav_dir) / cond
            d.mkdir(parents=True, exist_ok=True)
            for u, a in zip(meta["utts"][:4], audio):
                sf.write(d / f"{u}.wav", a, codec.sample_rate)
        result[f"wer_{cond}"] = round(asr_wer(audio, meta["texts"], args.asr_model)["wer"], 2)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="teacher-forced and free-running latents of held-out utterances")
    g.add_argument("exp", help="experiment dir (model.pt)")
    g.add_argument("prep", help="prepared held-out dir")
    g.add_argument("out", help="output .npz")
    g.add_argument("--utts", type=int, default=24, help="utterances (default 24)")
    g.add_argument("--device", help="default: cuda when there is one")
    g.add_argument("--seed", type=int, default=0)
    j = sub.add_parser("judge", help="decode the latents and score them with the ASR")
    j.add_argument("npz")
    j.add_argument("--codec", required=True, help="the codec the model was trained on (exported dir)")
    j.add_argument("--asr-model", default="models/asr-stream-synth", help="exported ASR model of the WER judge")
    j.add_argument("--wav-dir", help="also write the first 4 utterances of each condition here")
    j.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    generate(args) if args.cmd == "generate" else judge(args)


if __name__ == "__main__":
    main()
