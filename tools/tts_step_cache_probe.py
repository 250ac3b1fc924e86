#!/usr/bin/env python3
"""Where the CLEAR transformer step's time goes as its cache grows, on the CPU: one latent through
``ar_step.onnx`` with a cache of T positions, against two variants of the step graph traced from
the same (random) weights:

- ``capped``: a cache of fixed capacity C and a ``length`` input, returning only the new
  position's keys and values (nothing copied in or out: the runtime would write them into its
  buffer); attention over all C positions under a mask;
- ``einsum``: the shipped graph with the attention scores over the cache as Einsum, not
  MatMul after a Transpose of the keys.

The question it answers: is the step's growth with T the cache passed in and returned whole, or
the attention over it? Speed does not depend on the weights (a config's random ones).

    python3 tools/tts_step_cache_probe.py egs/synth/tts/conf/train_clear_mf_gpu.yaml [--positions 1,150,250,280] [--capacity 288,512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speechkit.bench.tts_synth import TEXT, load_model
from speechkit.export import tts as export_tts
from speechkit.export.onnx_file import write_onnx
from speechkit.models.tts.clear import LATENT
from speechkit.runtime.session import cpu_session

AXES = {"kinds": {0: "B", 1: "T"}, "phones": {0: "B", 1: "T"}, "latents": {0: "B", 1: "T"}, "cache": {2: "B", 4: "T_cache"},
        "hidden": {0: "B"}, "stop_logit": {0: "B"}}


class CappedStep(torch.nn.Module):
    """The step over a fixed-capacity cache (L, 2, B, H, C, hd) whose first ``length`` positions
    are valid → hidden, stop_logit and the block's own keys/values (L, 2, B, H, T, hd)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.hd = model, model.cfg.d_model // model.cfg.heads

    def forward(self, kinds, phones, latents, cache, length):
        m = self.model
        x = m.embed(kinds, phones, latents, text=False) + export_tts.encode_phonemes(m, kinds, phones)
        t, cap = x.shape[1], cache.shape[4]
        cos, sin = export_tts.rotary_tables(torch.arange(t) + length, self.hd, m.cfg.rope_base)
        past = torch.zeros(cap).masked_fill(torch.arange(cap) >= length, float("-inf"))[None, :].expand(t, cap)
        own = torch.zeros(t, t).masked_fill(torch.arange(t)[None, :] > torch.arange(t)[:, None], float("-inf"))
        bias = torch.cat([past, own], 1)
        new = []
        for i, block in enumerate(m.blocks):
            q, k, v = export_tts._qkv(block, x, cos, sin)
            x = block.finish(x, export_tts._attend(q, k, v, cache[i, 0], cache[i, 1], bias, self.hd ** -0.5))
            new.append(torch.stack([k, v]))
        h = m.norm(x)[:, -1]
        return h, m.stop(h)[:, 0], torch.stack(new)


def _einsum_attend(q, k, v, past_k, past_v, bias, scale):
    tc = past_k.shape[2]
    s = torch.cat([torch.einsum("bhqd,bhkd->bhqk", q, past_k), q @ k.transpose(-1, -2)], dim=-1)
    p = (s * scale + bias).softmax(-1)
    return torch.einsum("bhqk,bhkd->bhqd", p[..., :tc], past_v) + p[..., tc:] @ v


def _ms(session, feeds: dict, after=None, repeats: int = 30) -> float:
    for _ in range(3):
        session.run(None, feeds)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = session.run(None, feeds)
        if after:
            after(out)
    return 1000.0 * (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a CLEAR training config (random weights of its architecture)")
    p.add_argument("--positions", default="1,150,250,280", help="cache lengths T to time (default 1,150,250,280)")
    p.add_argument("--capacity", default="288,512", help="capacities C of the capped variant (default 288,512)")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, _, _, _ = load_model(args.config, None, torch.device("cpu"), TEXT)
    cfg = model.cfg
    layers, heads, hd = cfg.layers, cfg.heads, cfg.d_model // cfg.heads
    kinds, phones = torch.full((1, 1), LATENT), torch.zeros(1, 1, dtype=torch.long)
    latents = torch.randn(1, 1, cfg.latent_dim)
    feeds = {"kinds": kinds.numpy(), "phones": phones.numpy(), "latents": latents.numpy()}
    positions = [int(v) for v in args.positions.split(",")]
    capacities = [int(v) for v in args.capacity.split(",")]
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        out = {"cache_out": {2: "B", 4: "T_out"}}
        small = torch.randn(layers, 2, 1, heads, 5, hd)
        shipped_attend = export_tts._attend
        graphs = {}
        for name, attend in (("shipped", shipped_attend), ("einsum", _einsum_attend)):
            export_tts._attend = attend
            try:
                write_onnx(export_tts.StepGraph(model).eval(), (kinds, phones, latents, small), Path(tmp) / f"{name}.onnx",
                           export_tts.STEP_INPUTS, ["hidden", "stop_logit", "cache_out"], {**AXES, **out}, {"graph": name})
            finally:
                export_tts._attend = shipped_attend
            graphs[name] = cpu_session(Path(tmp) / f"{name}.onnx")
        for cap in capacities:
            write_onnx(CappedStep(model).eval(), (kinds, phones, latents, torch.randn(layers, 2, 1, heads, cap, hd), torch.tensor(5)),
                       Path(tmp) / f"capped{cap}.onnx", [*export_tts.STEP_INPUTS, "length"], ["hidden", "stop_logit", "new_kv"],
                       {**AXES, "cache": {2: "B", 4: "C"}, "new_kv": {2: "B", 4: "T"}}, {"graph": "capped"})
            graphs[f"capped C={cap}"] = cpu_session(Path(tmp) / f"capped{cap}.onnx")
        print(f"{args.config}: ms per step on one CPU thread, by cache length T (capped: C fixed, T valid)")
        for t in positions:
            cache = np.random.default_rng(t).standard_normal((layers, 2, 1, heads, t, hd)).astype(np.float32)
            row = [f"T={t:<4}"]
            for name, session in graphs.items():
                if name.startswith("capped"):
                    cap = int(name.split("=")[1])
                    if t >= cap:
                        row.append(f"{name} -")
                        continue
                    buf = np.zeros((layers, 2, 1, heads, cap, hd), np.float32)
                    buf[..., :t, :] = cache

                    def write(o, buf=buf, t=t):  # what the runtime would do: the new keys/values into its buffer
                        buf[..., t : t + 1, :] = o[2]

                    row.append(f"{name} {_ms(session, {**feeds, 'cache': buf, 'length': np.array(t, np.int64)}, write):.2f}")
                else:
                    row.append(f"{name} {_ms(session, {**feeds, 'cache': cache}):.2f}")
            print("  ".join(row))


if __name__ == "__main__":
    main()
