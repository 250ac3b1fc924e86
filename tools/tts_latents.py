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

``judge`` (here) decodes every condition with the codec and scores it with the project ASR (WER).

``probe`` does both in one place for a small set (where model, codec and ASR are together) and
adds the references that place a model's one-step error: the codec's resynthesis, the real
latents plus isotropic noise, and teacher-forced samples under several sampler settings. This
separates "the model cannot predict the next latent" from "free-running generation drifts"
(egs/synth/tts/RESULTS.md, "Why"):

    python tools/tts_latents.py generate EXP PREP OUT.npz [--utts 24] [--device cuda]
    python tools/tts_latents.py judge OUT.npz --codec DIR [--json OUT.json]
    python tools/tts_latents.py probe EXP PREP [--utts 12] [--codec DIR] [--json OUT.json]

PREP: `speechkit tts prepare` of held-out data with the model's codec. Errors are mean squared
errors to the real latents in the model's normalised units (the latents have unit variance there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROBE_CONDITIONS = [(10, 1.0, 0.0), (10, 1.5, 0.0), (10, 1.5, 0.8)]  # flow steps, cfg scale, temperature


def load_set(exp, prep, utts: int, dev):
    """The model, the first `utts` prepared utterances and their (phonemes, prompt, latents)
    examples in the model's normalised units (prompt: another utterance of the same speaker)."""
    from tts_alignment import examples

    from speechkit.models.tts.data import load_prepared
    from speechkit.models.tts.io import load_tts
    from speechkit.text.phonemes import PhonemeVocab

    model, symbols, trained_codec = load_tts(exp, dev)
    rows = load_prepared(prep)[0][:utts]
    mean, std = model.latent_mean.cpu().numpy(), model.latent_std.cpu().numpy()
    return model, trained_codec, rows, examples(rows, PhonemeVocab(symbols), mean, std, 0)


def teacher_forced_states(model, example, dev):
    """(hidden states at the latent positions, the latents they must predict) with the true past."""
    from speechkit.models.tts.data import collate
    from speechkit.data.batches import to_device

    b = to_device(collate([example]), dev)
    h, _ = model.run(model.embed(b["kinds"], b["phones"], b["latents"]))
    return h[b["flow_mask"]], b["targets"][b["flow_mask"]]


def decoded_wer(codec, latents: list[np.ndarray], texts: list[str], asr_model: str) -> tuple[float, list[np.ndarray]]:
    """WER of the project ASR on the codec's decode of denormalised latents (empty → a silent frame)."""
    from speechkit.eval.audio_quality import asr_wer

    audio = [codec.decode(z.T.astype(np.float32)) if len(z) else np.zeros(640, np.float32) for z in latents]
    return round(asr_wer(audio, texts, asr_model)["wer"], 2), audio


def generate(args) -> None:
    import torch

    from speechkit.decoding.tts_options import SynthOptions
    from speechkit.models.tts.fast import FastGenerator

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, _, utts, ex = load_set(args.exp, args.prep, args.utts, dev)
    mean, std = model.latent_mean.cpu().numpy(), model.latent_std.cpu().numpy()
    opts = SynthOptions()
    fast = FastGenerator(model)
    out: dict[str, np.ndarray] = {}
    mse, ratio = [], []
    gen = torch.Generator(dev).manual_seed(args.seed)
    with torch.no_grad():
        for u, (ids, prompt, z) in zip(utts, ex):
            c, t = teacher_forced_states(model, (ids, prompt, z), dev)
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
    from speechkit.runtime.codec import CodecRuntime

    data = np.load(args.npz)
    meta = json.loads(str(data["meta"]))
    codec = CodecRuntime(args.codec)
    result = {k: meta[k] for k in ("exp", "tf_mse", "free_length_ratio_median")}
    for cond in ("real", "tf", "free"):
        result[f"wer_{cond}"], audio = decoded_wer(codec, [data[f"{u}/{cond}"] for u in meta["utts"]], meta["texts"],
                                                   args.asr_model)
        if args.wav_dir:
            import soundfile as sf

            d = Path(args.wav_dir) / cond
            d.mkdir(parents=True, exist_ok=True)
            for u, a in zip(meta["utts"][:4], audio):
                sf.write(d / f"{u}.wav", a, codec.sample_rate)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def probe(args) -> None:
    import torch

    from speechkit.inference.tts import resolve_codec
    from speechkit.runtime.codec import CodecRuntime

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device("cpu")
    model, trained_codec, utts, ex = load_set(args.exp, args.prep, args.utts, dev)
    mean, std = model.latent_mean.numpy(), model.latent_std.numpy()
    codec_dir = str(args.codec or resolve_codec(Path(args.exp), trained_codec))
    codec = CodecRuntime(codec_dir)
    texts = [u.text for u in utts]

    def wer(latents: list[np.ndarray]) -> float:  # normalised latents
        return decoded_wer(codec, [z * std + mean for z in latents], texts, args.asr_model)[0]

    result = {"exp": args.exp, "prep": args.prep, "codec": codec_dir, "utterances": len(ex), "wer_resynthesis": wer([e[2] for e in ex])}
    for s in (0.1, 0.3, 0.5):
        result[f"wer_noise_{s:g}"] = wer([e[2] + s * rng.standard_normal(e[2].shape).astype(np.float32) for e in ex])
    with torch.no_grad():
        states = [teacher_forced_states(model, e, dev) for e in ex]
        for steps, cfg, temp in PROBE_CONDITIONS:
            samples = [model.head.sample(c, steps=steps, cfg_scale=cfg, temperature=temp) for c, _ in states]
            mse = float(np.mean([((z - t) ** 2).mean().item() for z, (_, t) in zip(samples, states)]))
            result[f"teacher_forced_steps{steps}_cfg{cfg:g}_temp{temp:g}"] = {"wer": wer([z.numpy() for z in samples]),
                                                                             "mse": round(mse, 3)}
    for k, v in result.items():
        print(f"{k}: {v}")
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
    p = sub.add_parser("probe", help="resynthesis, noise and teacher-forced references of one model, judged here")
    p.add_argument("exp", help="experiment dir (model.pt)")
    p.add_argument("prep", help="prepared held-out dir (latents.npy, utts.jsonl)")
    p.add_argument("--utts", type=int, default=12, help="utterances (default 12)")
    p.add_argument("--codec", help="codec dir (default: EXP/codec, else the one the model was trained on)")
    p.add_argument("--asr-model", default="models/asr-stream-synth", help="exported ASR model of the WER judge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    {"generate": generate, "judge": judge, "probe": probe}[args.cmd](args)


if __name__ == "__main__":
    main()
