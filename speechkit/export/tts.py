"""CLEAR → ONNX for the torch-free runtime (:mod:`speechkit.runtime.tts`): two graphs, the
generation loop stays in Python.

- ``ar_step.onnx``: the transformer over a block of T ≥ 1 new positions (kinds, phones, latents)
  after a cache of T_cache earlier ones (T_cache may be 0) → the last position's hidden state,
  stop logit, and the cache T positions longer (every layer's keys/values stacked in one tensor).
  The ``[phonemes] [sep] [prompt] [bos]`` prefix is one call on an empty cache, every generated
  latent one call with T = 1. Rotary positions follow the cache's length (read from its shape);
  attention is causal inside the block and sees all of the cache, as in the model. The text
  encoder runs over the block's phonemes alone, so a block holds none of them or all of them
  (then it starts the utterance: phonemes first, an empty cache);
- ``flow.onnx``: one step's worth of the flow head. Rectified (x, t, c, cfg_scale): the
  classifier-free-guided velocity — the conditional and the null branch batched inside the graph —
  so an Euler step is one call. Mean flow (x, r, t, c): the average velocity from t to r (guidance
  is trained in), a step ``x_r = x_t - (t - r) u``. The objective is in the graph's metadata and
  in export.json (``flow_objective``).

Export refuses to finish unless ONNX Runtime (through the runtime's own :class:`ArTransformer`)
and PyTorch agree on the prefix, on 24 chained cached steps fed with the model's own samples, and
on the flow velocities and samples (10 guided Euler steps, or 2 mean-flow steps). Exports from
before the single graph (``ar_prefix.onnx`` + a one-latent ``ar_step.onnx``) still run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechkit.config import to_dict
from speechkit.decoding.tts_options import FLOW_STEPS, STOP_THRESHOLD, SynthOptions
from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx
from speechkit.models.tts.clear import BOS, LATENT, PHONE, PROMPT, SEP, Block, ClearTTS
from speechkit.models.tts.flow import FlowHead
from speechkit.runtime.tts import FLOW_FILE, GRAPHS, LEGACY_PREFIX_FILE, STEP_FILE, STEP_INPUTS

FAMILY = "tts-clear"
CODEC_FILES = ("encoder.onnx", "decoder.onnx", "export.json", "codebooks.npy")
TOL = 1e-3  # float32 hidden states, logits, caches, velocities and samples: ONNX Runtime vs PyTorch
PARITY_STEPS = 24  # chained cached steps of the check
PARITY_MEANFLOW_STEPS = 2  # mean-flow steps per latent in the check (both graph inputs r and t off their ends)
INT8_GROSS = 0.2  # relative error of the int8 graphs' hidden states or velocities that fails the export


def _stack(cache: list[tuple[Tensor, Tensor]]) -> Tensor:
    return torch.stack([torch.stack(kv) for kv in cache])


# The transformer written out for export over ClearTTS's own modules (the layer loop of
# ClearTTS.run and Block.forward, as models/tts/fast.py does for CUDA), so that one call pays only
# what it needs: the rotary tables and the causal mask made once, not per layer; and no per-layer
# concatenation of the cache with the block's keys (the scores are joined instead), so the cache
# is copied once per call, into the output.

def rotary_tables(pos: Tensor, hd: int, base: float) -> tuple[Tensor, Tensor]:
    """cos, sin (T, hd/2) of ``clear.rope`` at positions ``pos`` (T,)."""
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = pos.float()[:, None] * inv[None]
    return ang.cos(), ang.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``clear.rope`` of x (B, H, T, hd) from its tables, reshaped back to x's shape where ``rope``
    flattens: ONNX Runtime cannot resolve flatten's -1 over zero positions (a step's text span)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).reshape(x.shape)


def _qkv(block: Block, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``Block.qkv_at``: queries, keys (rotated) and values (B, H, T, hd) of x (B, T, d)."""
    b, t = x.shape[:2]
    q, k, v = block.qkv(block.norm1(x)).view(b, t, 3, block.heads, block.hd).permute(2, 0, 3, 1, 4).unbind(0)
    return rotate(q, cos, sin), rotate(k, cos, sin), v


def block_positions(cache: Tensor, t) -> Tensor:
    """Positions (T,) of a block of ``t`` after ``cache`` (L, 2, B, H, T_cache, hd): from T_cache
    on, read from the cache's shape."""
    return torch.arange(t) + cache.shape[4]


def causal_bias(pos: Tensor, n) -> Tensor:
    """The additive attention mask (T, n) of queries at ``pos`` (T,) over keys 0..n-1: 0 where the
    key is at or before the query, -inf after (causal inside the block; all of the cache seen)."""
    seen = torch.arange(n)[None, :] <= pos[:, None]
    return torch.zeros_like(seen, dtype=torch.float32).masked_fill(~seen, float("-inf"))


def _attend(q: Tensor, k: Tensor, v: Tensor, past_k: Tensor, past_v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """Softmax attention of q (B, H, T, hd) over the cached keys/values (B, H, T_cache, hd) and
    the block's own (B, H, T, hd) under ``bias`` (T, T_cache + T) → (B, H, T, hd)."""
    tc = past_k.shape[2]
    p = (torch.cat([q @ past_k.transpose(-1, -2), q @ k.transpose(-1, -2)], dim=-1) * scale + bias).softmax(-1)
    return p[..., :tc] @ past_v + p[..., tc:] @ v


def encode_phonemes(model: ClearTTS, kinds: Tensor, phones: Tensor) -> Tensor:
    """The phoneme part of ``ClearTTS.embed`` for a block of positions: kinds, phones (B, T) →
    (B, T, d), the phoneme embeddings through the text encoder at the phoneme positions, zeros
    elsewhere. ``embed`` runs the encoder over every position under a key mask; here it runs over
    the block's phoneme positions alone (the same outputs there when the phonemes come first), so
    a generation step, which has none, runs it over zero positions: next to no cost, and no query
    row with nothing to attend to (a NaN that a product with 0 would keep)."""
    is_phone = kinds == PHONE
    x = model.phone(phones)
    if model.text_blocks:
        span = is_phone.any(0)  # (T,): a phoneme position in some row
        at = torch.nonzero(span).flatten()  # (Tp,)
        h, keys = x.index_select(1, at), is_phone.index_select(1, at)[:, None, None, :]
        cos, sin = rotary_tables(torch.arange(h.shape[1]), model.cfg.d_model // model.cfg.heads, model.cfg.rope_base)
        for block in model.text_blocks:  # bidirectional under the key mask
            h = block.finish(h, F.scaled_dot_product_attention(*_qkv(block, h, cos, sin), attn_mask=keys))
        rank = span.long().cumsum(0) * span  # the k-th phoneme position → k (from 1), others 0
        x = torch.cat([torch.zeros_like(x[:, :1]), model.text_norm(h)], dim=1).index_select(1, rank)
    return torch.where(is_phone[..., None], x, torch.zeros_like(x))


class StepGraph(nn.Module):
    """B: batch, T: new positions, D: latent dim, d: model dim, L: layers, H: heads, hd: head dim.

    kinds, phones (B, T) int64, latents (B, T, D) normalised (zeros where not a latent), cache
    (L, 2, B, H, T_cache, hd) keys and values of the earlier positions (T_cache may be 0) →
    hidden (B, d) at the block's last position, stop_logit (B,), cache_out (L, 2, B, H, T_cache + T, hd)."""

    def __init__(self, model: ClearTTS):
        super().__init__()
        self.model = model
        self.hd = model.cfg.d_model // model.cfg.heads

    def forward(self, kinds: Tensor, phones: Tensor, latents: Tensor, cache: Tensor):
        m = self.model
        x = m.embed(kinds, phones, latents, text=False) + encode_phonemes(m, kinds, phones)
        pos = block_positions(cache, x.shape[1])
        cos, sin = rotary_tables(pos, self.hd, m.cfg.rope_base)
        bias = causal_bias(pos, cache.shape[4] + x.shape[1])
        new = []
        for i, block in enumerate(m.blocks):
            q, k, v = _qkv(block, x, cos, sin)
            x = block.finish(x, _attend(q, k, v, cache[i, 0], cache[i, 1], bias, self.hd ** -0.5))
            new.append(torch.stack([k, v]))
        h = m.norm(x)[:, -1]
        return h, m.stop(h)[:, 0], torch.cat([cache, torch.stack(new)], dim=4)


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
    """The two graphs; the transformer traced on a block of 7 positions (phonemes first) after a
    cache of 5, so that neither the in-block causal mask nor the positions are the parity check's
    (a prefix on an empty cache, then single latents): a shape frozen at trace time fails it."""
    cfg, meta = model.cfg, graph_metadata(model)
    dim, heads, hd = cfg.latent_dim, cfg.heads, cfg.d_model // cfg.heads
    kinds = torch.tensor([[PHONE, PHONE, PHONE, SEP, PROMPT, PROMPT, BOS]])
    phones = torch.tensor([[4, 5, 6, 0, 0, 0, 0]]).clamp(max=cfg.vocab_size - 1)
    latents = torch.randn(1, 7, dim) * (kinds == PROMPT)[..., None]
    cache = torch.randn(cfg.layers, 2, 1, heads, 5, hd)
    write_onnx(StepGraph(model).eval(), (kinds, phones, latents, cache), out_dir / STEP_FILE, STEP_INPUTS,
               ["hidden", "stop_logit", "cache_out"],
               {"kinds": {0: "B", 1: "T"}, "phones": {0: "B", 1: "T"}, "latents": {0: "B", 1: "T"},
                "cache": {2: "B", 4: "T_cache"}, "hidden": {0: "B"}, "stop_logit": {0: "B"},
                "cache_out": {2: "B", 4: "T_out"}}, {**meta, "graph": "transformer"})
    write_flow_graph(model.head, out_dir / FLOW_FILE, meta)


def _guided_velocity(head: FlowHead, x: Tensor, t: Tensor, c: Tensor, w: float) -> Tensor:
    """The reference for flow.onnx, written apart from FlowGraph: two head calls."""
    v_c, v_u = head(x, t, c), head(x, t, head.null.expand_as(c))
    return v_u + w * (v_c - v_u)


def parity_options(head: FlowHead) -> SynthOptions:
    """The synthesis options of the check: the defaults, with ``PARITY_MEANFLOW_STEPS`` for a mean-flow head."""
    return replace(SynthOptions(), steps=FLOW_STEPS["rectified"] if head.objective == "rectified" else PARITY_MEANFLOW_STEPS)


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
    ``prompt`` [P, D] (normalised) on an empty cache, then ``steps`` cached steps, each fed the
    latent PyTorch sampled (the ONNX side keeps its own cache), and at every step the ONNX flow
    loop from the same noise → (differences, prefix positions)."""
    from speechkit.runtime.session import cpu_session
    from speechkit.runtime.tts import ArTransformer

    ar, flow = ArTransformer(out_dir, LATENT), cpu_session(out_dir / FLOW_FILE)
    g = torch.Generator().manual_seed(opts.seed)
    diffs = _Diffs()
    kinds, ids, lat = model.prefix(phones, prompt)
    hs, cache = model.run(model.embed(kinds, ids, lat))
    h = hs[:, -1]
    got_h, got_stop, got_cache = ar.prefix({"kinds": kinds.numpy(), "phones": ids.numpy(), "latents": lat.numpy()})
    diffs.add("cache", got_cache, _stack(cache))
    for _ in range(steps):
        diffs.add("hidden", got_h, h)
        diffs.add("stop_logit", got_stop, model.stop(h)[:, 0])
        noise = torch.randn(1, model.cfg.latent_dim, generator=g)
        z = _flow_parity(model.head, flow, h, noise, opts, diffs)
        h, cache = model.step(z, cache)
        got_h, got_stop, got_cache = ar.step(z.numpy(), got_cache)
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


INT8_MODES = ("weights", "dynamic")


def _quantize(out_dir: Path, mode: str = "weights") -> None:
    """The graphs' MatMul weights as int8. ``weights``: dequantized back to float32 inside the
    graph (a quarter of the size, the same arithmetic and speed); ``dynamic``: ONNX Runtime's
    dynamic quantization (int8 weights, each call's activations quantized on the fly, integer
    products): a quarter of the memory read per latent, which is what a batch-1 step on a CPU waits for."""
    import logging

    import onnx

    from speechkit.export.quantize import quantize_weights_int8

    for name in GRAPHS:
        tmp = out_dir / (name + ".tmp")
        if mode == "weights":
            onnx.save(quantize_weights_int8(onnx.load(str(out_dir / name))), str(tmp))
        else:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logging.disable(logging.WARNING)  # its notes on tensors it leaves as they are (NonZero's index output)
            try:
                quantize_dynamic(str(out_dir / name), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            finally:
                logging.disable(logging.NOTSET)
        tmp.replace(out_dir / name)


def _copy_codec(codec_dir: Path, out: Path) -> None:
    if out.exists() and out.resolve() == codec_dir.resolve():
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in CODEC_FILES:
        if (codec_dir / name).is_file():
            shutil.copy(codec_dir / name, out / name)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pick_codec(exp_dir: Path, recorded: str, codec_dir: str | Path | None) -> Path:
    """The codec the export checks with and ships: the experiment's (``EXP/codec`` or the recorded
    path), or ``codec_dir``, which must hold the same encoder and decoder files whenever the
    experiment's is on this machine (other latents would not fit the model)."""
    from speechkit.inference.tts import resolve_codec

    if codec_dir is None:
        return resolve_codec(exp_dir, recorded)
    codec_dir = Path(codec_dir)
    if not (codec_dir / "decoder.onnx").is_file():
        raise SpeechkitError(f"{codec_dir}: no exported codec there (no decoder.onnx)")
    try:
        trained = resolve_codec(exp_dir, recorded)
    except SpeechkitError:
        return codec_dir  # the training codec is not here to compare: --codec-dir says which it was
    if any(_digest(trained / n) != _digest(codec_dir / n) for n in ("encoder.onnx", "decoder.onnx")):
        raise SpeechkitError(f"{codec_dir}: not the codec {exp_dir} was trained on ({trained}); "
                             f"its latents would not fit the model")
    return codec_dir


def export_tts(exp_dir: str | Path, out_dir: str | Path, check_text: str, int8: bool | str = False,
               codec_dir: str | Path | None = None) -> dict:
    """A CLEAR experiment → ``out_dir`` (ar_step.onnx, flow.onnx, phones.txt, export.json and
    the codec), checked against PyTorch on ``check_text`` with a fixed random prompt; with
    ``int8`` (True or "weights": int8 weights, float32 arithmetic; "dynamic": int8 arithmetic,
    :func:`_quantize`) the graphs are quantized, checked again and reported. The codec is copied into ``out_dir/codec`` (a dir that runs anywhere on its
    own), or with ``codec_dir`` referenced: export.json's ``codec`` names it relative to
    ``out_dir`` (a model shipped beside the codec it shares with others)."""
    from speechkit.models.tts.io import load_tts
    from speechkit.runtime.codec import CodecRuntime
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes

    int8 = "weights" if int8 is True else (int8 or False)  # --int8 alone is the weight-only kind
    if int8 and int8 not in INT8_MODES:
        raise SpeechkitError(f"int8 kind {int8!r}: one of {', '.join(INT8_MODES)}")
    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    model, symbols, recorded = load_tts(exp_dir, "cpu")
    model = model.float().eval()
    cfg = model.cfg
    referenced = codec_dir is not None
    codec_dir = _pick_codec(exp_dir, recorded, codec_dir)
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
    (out_dir / LEGACY_PREFIX_FILE).unlink(missing_ok=True)  # an older export's second transformer
    try:
        write_graphs(model, out_dir)
        report = check_parity(model, out_dir, phones, prompt)
        fp32_mb = {name: round((out_dir / name).stat().st_size / 1e6, 3) for name in GRAPHS}
        int8_report = None
        if int8:
            _quantize(out_dir, int8)
            int8_report = check_int8(model, out_dir, phones, prompt)
    except BaseException:
        for name in GRAPHS:  # no half-checked model left behind to be loaded
            (out_dir / name).unlink(missing_ok=True)
        raise
    vocab.save(out_dir / "phones.txt")
    if referenced:
        codec_entry = Path(os.path.relpath(codec_dir.resolve(), out_dir.resolve())).as_posix()
    else:
        _copy_codec(codec_dir, out_dir / "codec")
        codec_entry = "codec"
    sizes = {name: round((out_dir / name).stat().st_size / 1e6, 3) for name in GRAPHS}
    graphs_mb = round(sum(sizes.values()), 3)
    codec_mb = round(sum(f.stat().st_size for f in (out_dir / codec_entry).glob("*.onnx")) / 1e6, 3)
    info = {"model_family": FAMILY, "exp_dir": str(exp_dir), "codec": codec_entry, "codec_source": str(codec_dir),
            "sample_rate": codec.sample_rate,
            "frame_rate": cfg.frame_rate, "latent_dim": cfg.latent_dim, "flow_objective": cfg.flow.objective, "config": to_dict(cfg),
            "kinds": {"phone": PHONE, "sep": SEP, "prompt": PROMPT, "bos": BOS, "latent": LATENT},
            "stop_threshold": STOP_THRESHOLD,
            "latent_mean": model.latent_mean.tolist(), "latent_std": model.latent_std.tolist(), "int8": int8,
            "check_text": check_text, "parity": report, **({"int8_check": int8_report} if int8_report else {}),
            "sizes_mb": sizes, "fp32_sizes_mb": fp32_mb, "graphs_mb": graphs_mb,
            "size_mb": round(graphs_mb, 2),  # the ONNX files in out_dir itself
            "codec_mb": codec_mb, "total_mb": round(graphs_mb + codec_mb, 2)}  # with the codec, copied or referenced
    tmp = out_dir / "export.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(out_dir / "export.json")
    return info
