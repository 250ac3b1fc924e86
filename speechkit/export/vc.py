"""MeanVC → ONNX for the torch-free converter (:mod:`speechkit.runtime.vc`): two graphs, the
chunk loop stays in Python.

- ``reference.onnx``: raw reference latents (B, R, D) + mask (B, R) → every layer's cross-attention
  keys and values (N, B, H, R, d), normalisation inside, zero on masked frames; once per voice.
- ``step.onnx``: one chunk of every stream: the ``steps`` mean-flow steps from the given noise and
  the commit of the chunk to the KV cache, in one graph → raw latents (B, n, D) and the new cache.
  n is the model's chunk; a stream's last chunk comes padded, its valid frames in ``chunk_lens``
  (such a row's cache is returned unchanged, as ``MeanVC.forward_chunk`` leaves it).

Weights are stored as float16 behind a Cast by default (half the file; the arithmetic stays
float32). Export refuses to finish unless ONNX Runtime matches ``MeanVC.convert`` on the same noise
over more chunks than the cache holds, for two streams of different reference lengths in one batch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from speechkit.config import to_dict
from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx
from speechkit.models.vc.model import MeanVC

FAMILY = "vc-meanvc"
REFERENCE_FILE, STEP_FILE = "reference.onnx", "step.onnx"
GRAPHS = (REFERENCE_FILE, STEP_FILE)
CONFIG_FILE, SPEAKER_DIR = "vc.json", "speaker"
TOL = 1e-3  # float32 graphs: max |Δ| of the raw latents, relative to max(1, max |latent|)
FP16_GROSS = 0.05  # float16 weights: relative error ‖Δ‖ / ‖latents‖ vs the float32 model that fails the export
FP16_MIN_ELEMENTS = 1024  # smaller weights (biases, norms) stay float32


class ReferenceGraph(nn.Module):
    """B: voices, R: reference frames, D: latent dim, N: layers, H: heads, d: head dim.

    ref_latents (B, R, D) raw, ref_mask (B, R) bool → ref_keys, ref_values (N, B, H, R, d), zero
    where the mask is False (padding)."""

    def __init__(self, model: MeanVC):
        super().__init__()
        self.model = model

    def forward(self, ref_latents: Tensor, ref_mask: Tensor):
        keys, values = self.model.dit.encode_reference(self.model.normalise(ref_latents))
        keep = ref_mask[None, :, None, :, None].to(keys.dtype)
        return keys * keep, values * keep


class StepGraph(nn.Module):
    """B: streams, n: the chunk, C: content dim, S: speaker dim, W: cache frames; the rest as in
    :class:`ReferenceGraph`.

    noise (B, n, D), content (B, n, C), ref_keys/ref_values (N, B, H, R, d), ref_mask (B, R) bool,
    spk (B, S), keys/values (N, B, H, W, d), cache_len (B,) int64, chunk_lens (B,) int64 valid frames
    of this chunk → latents (B, n, D) raw, new_keys, new_values, new_cache_len; rows with
    chunk_lens < n keep their cache."""

    def __init__(self, model: MeanVC, steps: int):
        super().__init__()
        self.model, self.steps = model, steps

    def forward(self, noise, content, ref_keys, ref_values, ref_mask, spk, keys, values, cache_len, chunk_lens):
        dit, steps = self.model.dit, self.steps
        cache = [keys, values, cache_len]
        zero = torch.zeros_like(chunk_lens).to(noise.dtype)  # (B,): the flow times follow the batch
        x = noise
        for i in range(steps):
            t0, t1 = i / steps, (i + 1) / steps
            u = dit.step(x, content, ref_keys, ref_values, ref_mask, spk, zero + t1, zero + t0, cache, chunk_lens)
            x = x + (t1 - t0) * u
        new_keys, new_values, new_len = dit.commit(x, content, ref_keys, ref_values, ref_mask, spk, cache)
        full = chunk_lens >= noise.shape[1]
        row = full[None, :, None, None, None]
        return (self.model.denormalise(x), torch.where(row, new_keys, keys), torch.where(row, new_values, values),
                torch.where(full, new_len, cache_len))


def graph_metadata(model: MeanVC, steps: int) -> dict:
    cfg = model.cfg
    return {"model_family": FAMILY, "chunk": cfg.chunk, "cache_chunks": cfg.cache_chunks, "frame_rate": cfg.frame_rate,
            "latent_dim": cfg.latent_dim, "content_dim": cfg.content_dim, "spk_dim": cfg.spk_dim, "ref_frames": cfg.ref_frames,
            "steps": steps, "layers": cfg.layers, "heads": cfg.heads, "head_dim": cfg.dim // cfg.heads}


def write_graphs(model: MeanVC, out_dir: Path, steps: int) -> None:
    """Both graphs, traced at sizes unlike those of the parity check (B 1, R 3) so that the check
    sees the dynamic axes at work."""
    cfg, meta = model.cfg, graph_metadata(model, steps)
    ref, mask = torch.randn(1, 3, cfg.latent_dim), torch.ones(1, 3, dtype=torch.bool)
    ref_axes = {0: "B", 1: "R"}
    kv_axes = {1: "B", 3: "R"}
    with torch.no_grad():
        ref_keys, ref_values = ReferenceGraph(model)(ref, mask)
    keys, values, cache_len = model.init_cache(1)
    args = (torch.randn(1, cfg.chunk, cfg.latent_dim), torch.randn(1, cfg.chunk, cfg.content_dim), ref_keys, ref_values, mask,
            torch.randn(1, cfg.spk_dim), torch.randn_like(keys), torch.randn_like(values), torch.tensor([2]),
            torch.tensor([cfg.chunk]))
    names = ["noise", "content", "ref_keys", "ref_values", "ref_mask", "spk", "keys", "values", "cache_len", "chunk_lens"]
    outputs = ["latents", "new_keys", "new_values", "new_cache_len"]
    batch = {0: "B"}
    axes = {"noise": batch, "content": batch, "ref_keys": kv_axes, "ref_values": kv_axes, "ref_mask": ref_axes, "spk": batch,
            "keys": {1: "B"}, "values": {1: "B"}, "cache_len": batch, "chunk_lens": batch, "latents": batch,
            "new_keys": {1: "B"}, "new_values": {1: "B"}, "new_cache_len": batch}
    with warnings.catch_warnings():  # the tracer's notes on shape arithmetic that stays constant here
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        write_onnx(ReferenceGraph(model).eval(), (ref, mask), out_dir / REFERENCE_FILE, ["ref_latents", "ref_mask"],
                   ["ref_keys", "ref_values"], {"ref_latents": ref_axes, "ref_mask": ref_axes, "ref_keys": kv_axes,
                                                "ref_values": kv_axes}, {**meta, "graph": "reference"})
        write_onnx(StepGraph(model, steps).eval(), args, out_dir / STEP_FILE, names, outputs, axes, {**meta, "graph": "step"})


# float16 weights


def _to_fp16(out_dir: Path) -> int:
    import onnx

    from speechkit.export.quantize import weights_to_fp16

    converted = 0
    for name in GRAPHS:
        proto = onnx.load(str(out_dir / name))
        converted += weights_to_fp16(proto)
        tmp = out_dir / (name + ".tmp")
        onnx.save(proto, str(tmp))
        tmp.replace(out_dir / name)
    return converted


def fp16_rounded(model: MeanVC) -> tuple[MeanVC, int]:
    """A copy of ``model`` whose Linear weights of at least ``FP16_MIN_ELEMENTS`` are rounded to
    float16 (what :func:`weights_to_fp16` stores) → (copy, weights rounded)."""
    import copy

    twin = copy.deepcopy(model)
    rounded = 0
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, nn.Linear) and module.weight.numel() >= FP16_MIN_ELEMENTS:
                module.weight.copy_(module.weight.half().float())
                rounded += 1
    return twin, rounded


# parity


def parity_inputs(model: MeanVC, seed: int = 0) -> dict[str, Tensor]:
    """Two streams with references of different lengths and more chunks than the cache holds, the
    last one partial: content (2, T, C), ref (2, R, D) with ref_lens (2,), spk (2, S), noise (2, T, D)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    frames = (cfg.cache_chunks + 2) * cfg.chunk + max(1, cfg.chunk // 2)
    r = cfg.ref_frames
    ref_lens = torch.tensor([max(1, r // 3), r])
    return {"content": torch.randn(2, frames, cfg.content_dim, generator=g),
            "ref": model.denormalise(torch.randn(2, r, cfg.latent_dim, generator=g)),
            "ref_lens": ref_lens, "spk": torch.randn(2, cfg.spk_dim, generator=g),
            "noise": torch.randn(2, frames, cfg.latent_dim, generator=g)}


def onnx_convert(out_dir: Path, chunk: int, content: np.ndarray, ref: np.ndarray, ref_mask: np.ndarray, spk: np.ndarray,
                 noise: np.ndarray) -> np.ndarray:
    """The graphs in ``out_dir`` over whole utterances, all streams batched chunk by chunk:
    content (B, T, C), raw reference latents (B, R, D) padded, ref_mask (B, R), spk (B, S),
    noise (B, T, D) → raw latents (B, T, D)."""
    from speechkit.runtime.session import cpu_session

    ref_sess, step_sess = cpu_session(out_dir / REFERENCE_FILE), cpu_session(out_dir / STEP_FILE)
    ref_keys, ref_values = ref_sess.run(None, {"ref_latents": ref, "ref_mask": ref_mask})
    b, frames, _ = content.shape
    cache_shape = [d if isinstance(d, int) else b for d in step_sess.get_inputs()[6].shape]
    keys, values = np.zeros(cache_shape, np.float32), np.zeros(cache_shape, np.float32)
    cache_len, out = np.zeros(b, np.int64), []
    for at in range(0, frames, chunk):
        n = min(chunk, frames - at)
        pad = ((0, 0), (0, chunk - n), (0, 0))
        feeds = {"noise": np.pad(noise[:, at : at + n], pad), "content": np.pad(content[:, at : at + n], pad),
                 "ref_keys": ref_keys, "ref_values": ref_values, "ref_mask": ref_mask, "spk": spk, "keys": keys,
                 "values": values, "cache_len": cache_len, "chunk_lens": np.full(b, n, np.int64)}
        y, keys, values, cache_len = step_sess.run(None, feeds)
        out.append(y[:, :n])
    return np.concatenate(out, axis=1)


def compare(model: MeanVC, out_dir: Path, steps: int, inputs: dict[str, Tensor]) -> dict:
    """ONNX Runtime vs ``model.convert`` (one stream at a time, its own reference length) →
    max |Δ|, relative error and the largest |latent|."""
    x = inputs
    lens = x["ref_lens"].tolist()
    with torch.no_grad():
        want = torch.cat([model.convert(x["content"][i : i + 1], x["ref"][i : i + 1, : lens[i]], x["spk"][i : i + 1], steps,
                                        x["noise"][i : i + 1]) for i in range(len(lens))]).numpy()
    mask = (torch.arange(x["ref"].shape[1])[None] < x["ref_lens"][:, None]).numpy()
    got = onnx_convert(out_dir, model.cfg.chunk, x["content"].numpy(), x["ref"].numpy(), mask, x["spk"].numpy(), x["noise"].numpy())
    d = np.abs(got.astype(np.float64) - want)
    return {"max_abs_diff": float(d.max()), "rel_err": float(np.sqrt((d ** 2).sum() / max((want.astype(np.float64) ** 2).sum(), 1e-30))),
            "max_abs_latent": float(np.abs(want).max())}


def _tight(row: dict, what: str) -> None:
    limit = TOL * max(1.0, row["max_abs_latent"])
    if not row["max_abs_diff"] <= limit:
        raise SpeechkitError(f"ONNX Runtime and PyTorch disagree ({what}): max |Δ| {row['max_abs_diff']:.2e} > {limit:.2e}")


def check_parity(model: MeanVC, out_dir: Path, steps: int, fp16: bool) -> dict:
    """The float32 graphs (before ``fp16``) must match within ``TOL``; the float16 ones must match
    the model with the same rounded weights within ``TOL`` and the float32 model within
    ``FP16_GROSS`` (relative)."""
    inputs = parity_inputs(model)
    cfg = model.cfg
    report = {"streams": 2, "frames": int(inputs["content"].shape[1]), "chunks": -(-int(inputs["content"].shape[1]) // cfg.chunk),
              "ref_frames": inputs["ref_lens"].tolist(), "steps": steps, "tolerance": TOL}
    report["fp32"] = compare(model, out_dir, steps, inputs)
    _tight(report["fp32"], "float32 weights")
    report["fp32_sizes_mb"] = sizes_mb(out_dir)
    if fp16:
        converted = _to_fp16(out_dir)
        twin, rounded = fp16_rounded(model)
        # the counts differ where the exporter merged equal weights (freshly zeroed layers); the
        # tight comparison with the rounded model below is what checks that the same weights were rounded
        report["fp16"] = {**compare(model, out_dir, steps, inputs), "weights": converted, "model_weights_rounded": rounded,
                          "vs_rounded_model": compare(twin, out_dir, steps, inputs)}
        _tight(report["fp16"]["vs_rounded_model"], "float16 weights, against the same rounded weights")
        if not report["fp16"]["rel_err"] <= FP16_GROSS:
            raise SpeechkitError(f"the float16 graphs are far from the float32 model (relative error "
                                 f"{report['fp16']['rel_err']:.3f}; limit {FP16_GROSS})")
        report["fp16_gross_rel_err"] = FP16_GROSS
    return report


def sizes_mb(out_dir: Path) -> dict[str, float]:
    return {name: round((out_dir / name).stat().st_size / 1e6, 3) for name in GRAPHS}


def export_vc(model_path: str | Path, out_dir: str | Path, steps: int = 1, fp16: bool = True,
              speaker_dir: str | Path | None = None) -> dict:
    """A MeanVC model (experiment dir, model.pt or checkpoint.pt) → ``out_dir`` with the two
    graphs, ``vc.json`` (what the runtime reads) and ``export.json`` (the parity report, sizes);
    ``speaker_dir``, an exported speaker encoder, is copied in as ``speaker/``. The graphs are
    written to a staging folder and moved in only after the checks pass."""
    from speechkit.models.vc.io import load_vc

    if steps < 1:
        raise SpeechkitError(f"--steps must be at least 1, got {steps}")
    if speaker_dir is not None and not Path(speaker_dir).is_dir():
        raise SpeechkitError(f"{speaker_dir}: no such speaker model folder (--speaker-model)")
    model, features = load_vc(model_path)
    model = model.float().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        write_graphs(model, staging, steps)
        report = check_parity(model, staging, steps, fp16)
        for name in GRAPHS:
            (staging / name).replace(out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if speaker_dir is not None:
        shutil.rmtree(out_dir / SPEAKER_DIR, ignore_errors=True)
        shutil.copytree(speaker_dir, out_dir / SPEAKER_DIR)
    cfg = model.cfg
    info = {**graph_metadata(model, steps), "cache_frames": model.dit.cache_frames, "sampler": "meanflow", "fp16": fp16,
            "features": features, "speaker": SPEAKER_DIR if speaker_dir is not None else None}
    (out_dir / CONFIG_FILE).write_text(json.dumps(info, indent=1) + "\n")
    sizes = sizes_mb(out_dir)
    export = {**info, "model_path": str(model_path), "config": to_dict(cfg), "parity": report, "sizes_mb": sizes,
              "size_mb": round(sum(sizes.values()), 3)}
    tmp = out_dir / "export.json.tmp"
    tmp.write_text(json.dumps(export, indent=1) + "\n")
    tmp.replace(out_dir / "export.json")
    return export


# command line (wired by the lead as `speechkit vc export`)


def add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a MeanVC experiment dir, model.pt or checkpoint.pt")
    parser.add_argument("out", help="the folder for reference.onnx, step.onnx, vc.json and export.json")
    parser.add_argument("--steps", type=int, default=1, help="mean-flow steps per chunk, built into step.onnx (default 1)")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights (default: float16 weights, float32 arithmetic)")
    parser.add_argument("--speaker-model", default=None, metavar="DIR",
                        help="an exported speaker encoder folder to ship in OUT/speaker/ (the reference's embedding)")


def run_export(args: argparse.Namespace) -> None:
    info = export_vc(args.model, args.out, steps=args.steps, fp16=not args.fp32, speaker_dir=args.speaker_model)
    p = info["parity"]
    line = f"fp32 max |Δ| {p['fp32']['max_abs_diff']:.2e}"
    if "fp16" in p:
        line += f", fp16 max |Δ| {p['fp16']['max_abs_diff']:.2e} (rel {p['fp16']['rel_err']:.2e})"
    sizes = ", ".join(f"{k} {v:.2f} MB" for k, v in info["sizes_mb"].items())
    print(f"{args.out}: {sizes}; parity over {p['chunks']} chunks x {p['streams']} streams: {line}")
