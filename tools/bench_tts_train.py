#!/usr/bin/env python3
"""Training speed of CLEAR variants on synthetic batches (no corpus needed): steps/s of the real
training step (batch making on the CPU, forward, backward, AdamW) for the GPU config with and
without the text encoder and the alignment prior, the time the CPU spends making batches, and a
profiler table of the slowest ops for the full config.

    python tools/bench_tts_train.py [--config egs/synth/tts/conf/train_clear_gpu.yaml] [--steps 60] [--json OUT]

Utterances: lengths like the synthetic corpus (3-9 s at 25 latents/s, ~13 phonemes/s), 400
speakers x 10 utterances, random latents and phonemes.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from speechkit.models.tts.clear import ClearTTS
from speechkit.models.tts.data import TtsBank, Utt
from speechkit.models.tts.io import to_device
from speechkit.text.phonemes import PhonemeVocab
from speechkit.train.tts import load_tts_experiment


def synthetic_utts(n_spk: int = 400, per_spk: int = 10, dim: int = 64, seed: int = 0) -> list[Utt]:
    rng = np.random.default_rng(seed)
    symbols = [chr(0x61 + i) for i in range(26)] + [chr(0x250 + i) for i in range(40)]
    utts = []
    for s in range(n_spk):
        for k in range(per_spk):
            sec = rng.uniform(3, 9)
            frames = int(sec * 25)
            phones = list(rng.choice(symbols, int(sec * 13)))
            utts.append(Utt(f"s{s}-{k}", f"s{s}", rng.standard_normal((frames, dim)).astype(np.float16), phones, ""))
    return utts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="egs/synth/tts/conf/train_clear_gpu.yaml")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per variant (after 10 warm-up steps)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    exp = load_tts_experiment(args.config)
    tc = exp.train_conf
    utts = synthetic_utts()
    vocab = PhonemeVocab.build([u.phones for u in utts])
    bank = TtsBank(utts, vocab, (38, 75))
    mean, std = bank.stats()
    dev = torch.device(args.device)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    base = replace(exp.model, vocab_size=len(vocab), latent_dim=64)
    variants = {
        "plain (run 1)": replace(base, text_layers=0, align_layers=(), align_weight=0.0),
        "text encoder": replace(base, align_layers=(), align_weight=0.0),
        "alignment prior": replace(base, text_layers=0),
        "both (run 3)": base,
    }
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for s in range(20):
        bank.batch(tc.max_tokens, 0, s, mean, std)
    batch_ms = (time.perf_counter() - t0) / 20 * 1000
    result = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
              "max_tokens": tc.max_tokens, "batch_making_ms": round(batch_ms, 2), "variants": {}}
    print(f"batch making (CPU): {batch_ms:.1f} ms per batch of {tc.max_tokens} positions")
    def run(cfg, profile: bool) -> float:
        torch.manual_seed(0)
        model = ClearTTS(cfg).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(i: int) -> None:
            batch = to_device(bank.batch(tc.max_tokens, 0, i, mean, std), dev)
            with amp:
                loss, _ = model(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        for i in range(10):
            step(i)
        sync()
        t0 = time.perf_counter()
        for i in range(args.steps):
            step(10 + i)
        sync()
        sps = args.steps / (time.perf_counter() - t0)
        if profile:
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with torch.profiler.profile(activities=acts) as prof:
                for i in range(5):
                    step(1000 + i)
                sync()
            key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=key, row_limit=15)
            print(table)
            result["profile_top"] = table
        del model, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return sps

    # two passes over the variants, the second one reported: the first variants of a fresh process
    # pay for the GPU's clocks, the allocator and kernel selection for new shapes
    for rnd in range(2):
        for name, cfg in variants.items():
            sps = run(cfg, profile=rnd == 1 and name == "both (run 3)")
            if rnd == 1:
                result["variants"][name] = {"steps_per_s": round(sps, 2), "params_m": round(sum(p.numel() for p in ClearTTS(cfg).parameters()) / 1e6, 2)}
                print(f"{name:18s} {sps:6.2f} steps/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
