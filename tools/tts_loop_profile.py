#!/usr/bin/env python3
"""Where one latent of CLEAR's graphed CUDA loop spends its time (FastGenerator, one graph replay
per latent: stop check, guided flow head, transformer step on the static cache).

    python tools/tts_loop_profile.py CONFIG_OR_EXP [--steps 10] [--cfg-scale 1.5] [--replays 200]

Prints the GPU time of a replay (back-to-back replays, one sync at the end), the time of the
loop as FastGenerator runs it (a host sync per latent), and the kernels with the most GPU time in
a torch.profiler trace of a few replays. Random weights for a config: the speed is the same.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechkit.bench.tts_synth import load_model  # noqa: E402
from speechkit.models.tts.fast import FastGenerator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="training config YAML (random weights) or experiment dir")
    ap.add_argument("--codec", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--top", type=int, default=15, help="kernels listed (default 15)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("tts_loop_profile: needs a CUDA GPU")
    dev = torch.device("cuda")
    model, _, _, what = load_model(args.model, args.codec, dev)
    fast = FastGenerator(model)
    slot = fast.slot(400)
    with torch.no_grad():
        run = fast.runner(slot, args.steps, args.cfg_scale, 0.8)

        def replays(n: int) -> float:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                slot.cache.length.fill_(100)
                run()
            torch.cuda.synchronize()
            return 1000.0 * (time.perf_counter() - t0) / n

        replays(10)
        gpu_ms = replays(args.replays)
        phones = torch.arange(60) % (model.cfg.vocab_size - 1) + 1
        prompt = torch.zeros(75, model.cfg.latent_dim)
        for _ in fast.generate(phones, prompt, steps=args.steps, cfg_scale=args.cfg_scale, temperature=0.8,
                               max_frames=20, stop_threshold=2.0):
            pass
        first = []
        t0 = time.perf_counter()
        for z in fast.generate(phones, prompt, steps=args.steps, cfg_scale=args.cfg_scale, temperature=0.8,
                               max_frames=args.replays, stop_threshold=2.0):
            first.append(time.perf_counter())
        loop_ms = 1000.0 * (first[-1] - first[0]) / (len(first) - 1)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            replays(20)
    print(f"{what} on {torch.cuda.get_device_name(dev)}, torch {torch.__version__}; {args.steps} flow steps, "
          f"guidance {args.cfg_scale}, cache {slot.cache.size} positions")
    print(f"graph replay, back to back: {gpu_ms:.3f} ms per latent")
    print(f"FastGenerator loop:         {loop_ms:.3f} ms per latent")
    for key in ("self_device_time_total", "self_cuda_time_total"):  # the name changed across torch versions
        try:
            print(prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=70))
            break
        except (AttributeError, KeyError, ValueError):
            continue


if __name__ == "__main__":
    main()
