"""CLEAR → ONNX for the torch-free runtime (:mod:`speechkit.runtime.tts`): three graphs, the
generation loop stays in Python.

- ``ar_prefix.onnx``: the ``[phonemes] [sep] [prompt] [bos]`` positions → hidden state at bos,
  stop logit, and every layer's keys/values stacked into one cache tensor;
- ``ar_step.onnx``: one generated latent + the cache → its hidden state, stop logit, cache one
  position longer (rotary positions follow the cache's length, read from its shape);
- ``flow.onnx``: one step's worth of the flow head. Rectified (x, t, c, cfg_scale): the
  classifier-free-guided velocity — the conditional and the null branch batched inside the graph —
  so an Euler step is one call. Mean flow (x, r, t, c): the average velocity from t to r (guidance
  is trained in), a step ``x_r = x_t - (t - r) u``. The objective is in the graph's metadata and
  in export.json (``flow_objective``).

Export refuses to finish unless ONNX Runtime and PyTorch agree on the prefix, on 24 chained
cached steps fed with the model's own samples, and on the flow velocities and samples (10 guided
Euler steps, or 2 mean-flow steps).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from speechkit.config import to_dict
from speechkit.decoding.tts_options import STOP_THRESHOLD, SynthOptions
from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx
from speechkit.models.tts.clear import BOS, LATENT, PHONE, PROMPT, SEP, ClearTTS
from speechkit.models.tts.flow import FlowHead

FAMILY = "tts-clear"
PREFIX_FILE, STEP_FILE, FLOW_FILE = "ar_prefix.onnx", "ar_step.onnx", "flow.onnx"
GRAPHS = (PREFIX_FILE, STEP_FILE, FLOW_FILE)
CODEC_FILES = ("encoder.onnx", "decoder.onnx", "export.json", "codebooks.npy")
TOL = 1e-3  # float32 hidden states, logits, caches, velocities and samples: ONNX Runtime vs PyTorch
PARITY_STEPS = 24  # chained cached steps of the check
PARITY_MEANFLOW_STEPS = 2  # mean-flow steps per latent in the check (both graph inputs r and t off their ends)
INT8_GROSS = 0.2  # relative error of the int8 graphs' hidden states or velocities that fails the export


def _stack(cache: list[tuple[Tensor, Tensor]]) -> Tensor:
    return torch.stack([torch.stack(kv) for kv in cache])


class PrefixGraph(nn.Module):
    """B: batch, T: positions, D: latent dim, d: model dim, L: layers, H: heads, hd: head dim.

    kinds, phones (B, T) int64, latents (B, T, D) normalised (zeros where not a latent) → hidden
    (B, d) at the last position, stop_logit (B,), cache (L, 2, B, H, T, hd) keys and values."""

    def __init__(self, model: ClearTTS):
        super().__init__()
        self.model = model

    def forward(self, kinds: Tensor, phones: Tensor, latents: Tensor):
        h, cache = self.model.run(self.model.embed(kinds, phones, latents))
        h = h[:, -1]
        return h, self.model.stop(h)[:, 0], _stack(cache)


class StepGraph(nn.Module):
    """latent (B, D) normalised, cache (L, 2, B, H, T, hd) → hidden (B, d) of that latent's
    position T, stop_logit (B,), cache_out (L, 2, B, H, T + 1, hd)."""

    def __init__(self, model: ClearTTS):
        super().__init__()
        self.model = model

    def forward(self, latent: Tensor, cache: Tensor):
        kinds = torch.full((latent.shape[0], 1), LATENT, dtype=torch.long)
        x = self.model.embed(kinds, torch.zeros_like(kinds), latent[:, None], text=False)
        h, new = self.model.run(x, [(layer[0], layer[1]) for layer in cache.unbind(0)])
        h = h[:, -1]
        return h, self.model.stop(h)[:, 0], _stack(new)


class FlowGraph(nn.Module):
    """x (N, D) at flow time t (N,), condition c (N, d), guidance cfg_scale (1,) → velocity
    (N, D) = v_null + cfg_scale (v_c - v_null), both branches in one batch of 2N rows."""

    def __init__(self, head: FlowHead):
        super().__init__()
        self.head = head

    def forward(self, x: Tensor, t: Tensor, c: Tensor, cfg_scale: Tensor):
        cc = torch.cat([c, self.head.null.expand_as(c)])
        v = self.head(torch.cat([x, x]), torch.cat([t, t]), cc)
        v_c, v_u = v.chunk(2)
        return v_u + cfg_scale * (v_c - v_u)


class MeanFlowGraph(nn.Module):
    """x (N, D) at flow time t (N,), landing time r (N,), condition c (N, d) → the average velocity
    (N, D) from t to r; guidance is in the weights (trained into the target)."""

    def __init__(self, head: FlowHead):
        super().__init__()
        self.head = head

    def forward(self, x: Tensor, r: Tensor, t: Tensor, c: Tensor):
        return self.head(x, t, c, r)


def write_flow_graph(head: FlowHead, path: Path, meta: dict) -> None:
    """flow.onnx for the head's objective, traced at N = 2."""
    dim, d = head.dim, head.cond.in_features
    x, t, c = torch.randn(2, dim), torch.rand(2), torch.randn(2, d)
    axes = {"x": {0: "N"}, "t": {0: "N"}, "c": {0: "N"}, "velocity": {0: "N"}}
    meta = {**meta, "graph": "flow", "flow_objective": head.objective}
    if head.objective == "meanflow":
        write_onnx(MeanFlowGraph(head).eval(), (x, torch.maximum(t, torch.rand(2)), t, c), path, ["x", "r", "t", "c"], ["velocity"],
                   {**axes, "r": {0: "N"}}, meta)
    else:
        write_onnx(FlowGraph(head).eval(), (x, t, c, torch.tensor([1.5])), path, ["x", "t", "c", "cfg_scale"], ["velocity"], axes, meta)


def graph_metadata(model: ClearTTS) -> dict:
    cfg = model.cfg
    return {"model_family": FAMILY, "latent_dim": cfg.latent_dim, "d_model": cfg.d_model, "layers": cfg.layers,
            "heads": cfg.heads, "head_dim": cfg.d_model // cfg.heads, "frame_rate": cfg.frame_rate}


def write_graphs(model: ClearTTS, out_dir: Path) -> None:
    """The three graphs, traced at sizes unlike those of the parity check (so the check sees the
    dynamic axes at work)."""
    cfg, meta = model.cfg, graph_metadata(model)
    dim, heads, hd = cfg.latent_dim, cfg.heads, cfg.d_model // cfg.heads
    kinds = torch.tensor([[PHONE, PHONE, PHONE, SEP, PROMPT, PROMPT, BOS]])
    phones = torch.tensor([[4, 5, 6, 0, 0, 0, 0]]).clamp(max=cfg.vocab_size - 1)
    latents = torch.randn(1, 7, dim) * (kinds == PROMPT)[..., None]
    cache = torch.randn(cfg.layers, 2, 1, heads, 5, hd)
    with warnings.catch_warnings():  # the tracer's notes on the Python branches of Block.forward
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        write_onnx(PrefixGraph(model).eval(), (kinds, phones, latents), out_dir / PREFIX_FILE, ["kinds", "phones", "latents"],
                   ["hidden", "stop_logit", "cache"],
                   {"kinds": {0: "B", 1: "T"}, "phones": {0: "B", 1: "T"}, "latents": {0: "B", 1: "T"}, "hidden": {0: "B"},
                    "stop_logit": {0: "B"}, "cache": {2: "B", 4: "T"}}, {**meta, "graph": "prefix"})
        write_onnx(StepGraph(model).eval(), (torch.randn(1, dim), cache), out_dir / STEP_FILE, ["latent", "cache"],
                   ["hidden", "stop_logit", "cache_out"],
                   {"latent": {0: "B"}, "cache": {2: "B", 4: "T"}, "hidden": {0: "B"}, "stop_logit": {0: "B"},
                    "cache_out": {2: "B", 4: "T_next"}}, {**meta, "graph": "step"})
        write_flow_graph(model.head, out_dir / FLOW_FILE, meta)


def _guided_velocity(head: FlowHead, x: Tensor, t: Tensor, c: Tensor, w: float) -> Tensor:
    """The reference for flow.onnx, written apart from FlowGraph: two head calls."""
    v_c, v_u = head(x, t, c), head(x, t, head.null.expand_as(c))
    return v_u + w * (v_c - v_u)


def parity_options(head: FlowHead) -> SynthOptions:
    """The synthesis options of the check: the defaults, with ``PARITY_MEANFLOW_STEPS`` for a mean-flow head."""
    return SynthOptions() if head.objective == "rectified" else replace(SynthOptions(), steps=PARITY_MEANFLOW_STEPS)


class _Diffs:
    """Max |Δ| and relative error (‖Δ‖ / ‖reference‖) per compared quantity."""

    def __init__(self):
        self.max: dict[str, float] = {}
        self.sq: dict[str, list[float]] = {}

    def add(self, name: str, got: np.ndarray, ref: Tensor) -> None:
        r = ref.detach().numpy()
        d = np.abs(np.asarray(got, dtype=np.float64) - r)
        worst = float(d.max()) if np.all(np.isfinite(d)) else float("inf")
        self.max[name] = max(self.max.get(name, 0.0), worst)
        err, norm = self.sq.setdefault(name, [0.0, 0.0])
        self.sq[name] = [err + float((d ** 2).sum()), norm + float((r.astype(np.float64) ** 2).sum())]

    def rel(self, name: str) -> float:
        err, norm = self.sq[name]
        return float(np.sqrt(err / max(norm, 1e-30)))


def _flow_parity(head: FlowHead, flow, h: Tensor, noise: Tensor, opts: SynthOptions, diffs: _Diffs) -> Tensor:
    """flow.onnx's sampling loop from ``noise`` (1, D) under ``h`` (1, d), each velocity checked
    against the head's own, the sample against ``head.sample`` → that (torch) sample."""
    z = head.sample(h, opts.steps, opts.cfg_scale, opts.temperature, noise)
    x = (noise * opts.temperature).numpy()
    w = np.array([opts.cfg_scale], np.float32)
    for k in range(opts.steps):
        t, r = np.full(1, k / opts.steps, np.float32), np.full(1, (k + 1) / opts.steps, np.float32)
        xt, tt, rt = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(r)
        if head.objective == "meanflow":
            v = flow.run(None, {"x": x, "r": r, "t": t, "c": h.numpy()})[0]
            diffs.add("velocity", v, head(xt, tt, h, rt))
        else:
            v = flow.run(None, {"x": x, "t": t, "c": h.numpy(), "cfg_scale": w})[0]
            diffs.add("velocity", v, _guided_velocity(head, xt, tt, h, opts.cfg_scale))
        x = x + v / opts.steps
    diffs.add("sample", x, z)
    return z


@torch.no_grad()
def _compare(model: ClearTTS, out_dir: Path, phones: Tensor, prompt: Tensor, steps: int = PARITY_STEPS,
            opts: SynthOptions = SynthOptions()) -> tuple[_Diffs, int]:
    """Run the graphs in ``out_dir`` next to PyTorch: the prefix of ``phones`` [Tp] and
    ``prompt`` [P, D] (normalised), then ``steps`` cached steps, each fed the latent PyTorch
    sampled (the ONNX side keeps its own cache), and at every step the ONNX flow loop from the
    same noise → (differences, prefix positions)."""
    from speechkit.runtime.session import cpu_session

    pre, step, flow = (cpu_session(out_dir / name) for name in GRAPHS)
    g = torch.Generator().manual_seed(opts.seed)
    diffs = _Diffs()
    kinds, ids, lat = model.prefix(phones, prompt)
    hs, cache = model.run(model.embed(kinds, ids, lat))
    h = hs[:, -1]
    got_h, got_stop, got_cache = pre.run(None, {"kinds": kinds.numpy(), "phones": ids.numpy(), "latents": lat.numpy()})
    diffs.add("cache", got_cache, _stack(cache))
    for _ in range(steps):
        diffs.add("hidden", got_h, h)
        diffs.add("stop_logit", got_stop, model.stop(h)[:, 0])
        noise = torch.randn(1, model.cfg.latent_dim, generator=g)
        z = _flow_parity(model.head, flow, h, noise, opts, diffs)
        h, cache = model.step(z, cache)
        got_h, got_stop, got_cache = step.run(None, {"latent": z.numpy(), "cache": got_cache})
    diffs.add("hidden", got_h, h)
    diffs.add("stop_logit", got_stop, model.stop(h)[:, 0])
    diffs.add("cache", got_cache, _stack(cache))
    return diffs, int(kinds.shape[1])


def check_parity(model: ClearTTS, out_dir: Path, phones: Tensor, prompt: Tensor, steps: int = PARITY_STEPS) -> dict:
    """The float32 check: every max |Δ| within ``TOL``, else SpeechkitError."""
    opts = parity_options(model.head)
    diffs, positions = _compare(model, out_dir, phones, prompt, steps, opts)
    guidance = {"cfg_scale": opts.cfg_scale} if model.head.objective == "rectified" else {"trained_cfg_scale": model.cfg.flow.cfg_scale}
    report = {"prefix_positions": positions, "steps": steps, "flow_objective": model.head.objective, "flow_steps": opts.steps, **guidance,
              **{f"{k}_max_abs_diff": v for k, v in diffs.max.items()}, "max_abs_diff": max(diffs.max.values()), "tolerance": TOL}
    if not report["max_abs_diff"] <= TOL:
        worst = ", ".join(f"{k} {v:.2e}" for k, v in diffs.max.items())
        raise SpeechkitError(f"ONNX Runtime and PyTorch disagree over the prefix and {steps} cached steps "
                             f"(max |Δ|: {worst}; tolerance {TOL:g})")
    return report


def check_int8(model: ClearTTS, out_dir: Path, phones: Tensor, prompt: Tensor, steps: int = PARITY_STEPS) -> dict:
    """The int8 graphs next to PyTorch: reported, failing only when grossly wrong (``INT8_GROSS``)."""
    diffs, _ = _compare(model, out_dir, phones, prompt, steps, parity_options(model.head))
    report = {"steps": steps, **{f"{k}_max_abs_diff": v for k, v in diffs.max.items()},
              "hidden_rel_err": diffs.rel("hidden"), "velocity_rel_err": diffs.rel("velocity"), "sample_rel_err": diffs.rel("sample"),
              "gross_rel_err": INT8_GROSS}
    if not max(report["hidden_rel_err"], report["velocity_rel_err"]) <= INT8_GROSS:
        raise SpeechkitError(f"the int8 graphs are far from PyTorch (relative error: hidden {report['hidden_rel_err']:.3f}, "
                             f"velocity {report['velocity_rel_err']:.3f}; limit {INT8_GROSS})")
    return report


def _quantize(out_dir: Path) -> None:
    import onnx

    from speechkit.export.quantize import quantize_weights_int8

    for name in GRAPHS:
        tmp = out_dir / (name + ".tmp")
        onnx.save(quantize_weights_int8(onnx.load(str(out_dir / name))), str(tmp))
        tmp.replace(out_dir / name)


def _copy_codec(codec_dir: Path, out: Path) -> None:
    if out.exists() and out.resolve() == codec_dir.resolve():
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in CODEC_FILES:
        if (codec_dir / name).is_file():
            shutil.copy(codec_dir / name, out / name)


def export_tts(exp_dir: str | Path, out_dir: str | Path, check_text: str, int8: bool = False) -> dict:
    """A CLEAR experiment → ``out_dir`` (the three graphs, phones.txt, codec/, export.json), checked
    against PyTorch on ``check_text`` with a fixed random prompt; with ``int8`` the graphs store
    their MatMul weights as int8 (float32 arithmetic), checked again and reported."""
    from speechkit.inference.tts import resolve_codec
    from speechkit.models.tts.io import load_tts
    from speechkit.runtime.codec import CodecRuntime
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes

    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    model, symbols, recorded = load_tts(exp_dir, "cpu")
    model = model.float().eval()
    cfg = model.cfg
    codec_dir = resolve_codec(exp_dir, recorded)
    codec = CodecRuntime(codec_dir)
    if codec.kind != "vae" or codec.latent_dim != cfg.latent_dim:
        raise SpeechkitError(f"{codec_dir}: a {codec.kind} codec of {codec.latent_dim}-dim latents; "
                             f"{exp_dir} models {cfg.latent_dim}-dim VAE latents")
    vocab = PhonemeVocab(symbols)
    ph = text_to_phonemes([check_text])[0]
    if not ph:
        raise SpeechkitError(f"nothing to say in the check text {check_text!r}")
    phones = torch.tensor(vocab.encode(ph), dtype=torch.long)
    g = torch.Generator().manual_seed(1)  # a random prompt is as good as a real one for parity
    prompt = torch.randn(max(3, round(2 * cfg.frame_rate)), cfg.latent_dim, generator=g)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "export.json").unlink(missing_ok=True)  # written last: a dir with it is a finished export
    try:
        write_graphs(model, out_dir)
        report = check_parity(model, out_dir, phones, prompt)
        fp32_mb = {name: round((out_dir / name).stat().st_size / 1e6, 3) for name in GRAPHS}
        int8_report = None
        if int8:
            _quantize(out_dir)
            int8_report = check_int8(model, out_dir, phones, prompt)
    except BaseException:
        for name in GRAPHS:  # no half-checked model left behind to be loaded
            (out_dir / name).unlink(missing_ok=True)
        raise
    vocab.save(out_dir / "phones.txt")
    _copy_codec(codec_dir, out_dir / "codec")
    sizes = {name: round((out_dir / name).stat().st_size / 1e6, 3) for name in GRAPHS}
    codec_mb = sum(f.stat().st_size for f in (out_dir / "codec").glob("*.onnx")) / 1e6
    info = {"model_family": FAMILY, "exp_dir": str(exp_dir), "codec_source": str(codec_dir), "sample_rate": codec.sample_rate,
            "frame_rate": cfg.frame_rate, "latent_dim": cfg.latent_dim, "flow_objective": cfg.flow.objective, "config": to_dict(cfg),
            "kinds": {"phone": PHONE, "sep": SEP, "prompt": PROMPT, "bos": BOS, "latent": LATENT},
            "stop_threshold": STOP_THRESHOLD,
            "latent_mean": model.latent_mean.tolist(), "latent_std": model.latent_std.tolist(), "int8": int8,
            "check_text": check_text, "parity": report, **({"int8_check": int8_report} if int8_report else {}),
            "sizes_mb": sizes, "fp32_sizes_mb": fp32_mb, "graphs_mb": round(sum(sizes.values()), 3),
            "size_mb": round(sum(sizes.values()) + codec_mb, 2)}
    tmp = out_dir / "export.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(out_dir / "export.json")
    return info
