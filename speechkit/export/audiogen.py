"""Text-to-music → ONNX for the torch-free runtime (:mod:`speechkit.runtime.audiogen`): MAGNeT's
caption encoder and one decoding step, and optionally the delay-pattern AR model's caption
cross-attention, its cached step and its teacher-forced scorer; the decoding loops stay in numpy.
The codec comes along in ``codec/`` (a copy of a codec export, or one made by the codec's own
export), so the folder runs anywhere on its own.

Graphs (shapes in :mod:`speechkit.runtime.audiogen`): ``text.onnx``, ``magnet.onnx`` (dynamic batch
and frames; the stage an input, so one graph serves every codebook), ``ar_text.onnx`` (each
layer's caption keys/values, computed once per generation), ``ar_step.onnx`` (a block of delay
steps after an explicit KV cache, possibly empty: the rotary and absolute positions and the causal
mask follow the cache's length, read from its shape), ``ar_score.onnx`` (log-probs of given tokens
for rescoring). Export refuses to finish unless ONNX Runtime and PyTorch agree on every graph at
shapes unlike those it was traced at, and a short generation of every mode through the runtime's
own callables gives PyTorch's tokens with the same seed. ``weights`` fp16 / int8 store the large
weights in half / 8 bits (float32 arithmetic), checked against PyTorch and reported.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechkit.config import to_dict
from speechkit.decoding.magnet import ArOptions, MagnetOptions, ar_generate, hybrid_generate, magnet_generate
from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx
from speechkit.models.audiogen.ar import DelayAR
from speechkit.models.audiogen.magnet import Magnet
from speechkit.models.audiogen.text import PAD, CaptionTokenizer
from speechkit.nn.dit import rotary_tables
from speechkit.runtime.audiogen import (AR_GRAPHS, AR_SCORE_FILE, AR_STEP_FILE, AR_TEXT_FILE, AR_WEIGHTS_FILE, CODEC_DIR,
                                        CONFIG_FILE, FAMILY, HYBRID_AR_SECONDS, MAGNET_FILE, MAGNET_GRAPHS, TEXT_FILE, MusicGraphs)

WEIGHTS = ("fp32", "fp16", "int8")
TOL = 1e-3  # float32 graphs: max |Δ| relative to max(1, max |reference|), per compared output
GROSS = {"fp16": 0.02, "int8": 0.2}  # relative error ‖Δ‖ / ‖reference‖ of any output that fails the export
MIN_ELEMENTS = 1024  # smaller weights (biases, norms) stay float32
CODEC_FILES = ("decoder.onnx", "codebooks.npy", "export.json")  # decoder-only: generation never encodes audio
CHECK_FRAMES = 24  # frames of the whole-generation check (every mode)


# ---- graphs -------------------------------------------------------------------------------------

class TextGraph(nn.Module):
    """ids [B, L'] int64 (PAD = 0) → text_states [B, L, D], text_mask [B, L] bool: ``TextEncoder``.

    Its layers (``nn.TransformerEncoderLayer``, pre-norm, GELU) are written out over their own
    parameters: traced as they are, ``nn.MultiheadAttention`` freezes the trace's batch and length
    into its reshapes."""

    def __init__(self, model: Magnet | DelayAR):
        super().__init__()
        self.text = model.text

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        return encode_captions(self.text, ids)


def encode_captions(text: nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
    """``TextEncoder.forward`` with its layers written out (see :class:`TextGraph`)."""
    ids = ids[:, : text.max_tokens]
    b, n = ids.shape
    d = text.embed.embedding_dim
    x = text.embed(ids) + _positions(0, n, d)
    x = torch.cat([text.null.expand(b, 1, d), x], dim=1)
    mask = torch.cat([torch.ones_like(ids[:, :1], dtype=torch.bool), ids != PAD], dim=1)
    keys = mask[:, None, None, :]
    for layer in text.layers.layers:
        attn = layer.self_attn
        h = attn.num_heads
        q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, h, d // h).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keys).transpose(1, 2).reshape(b, -1, d)
        x = x + attn.out_proj(a)
        x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
    return text.norm(x), mask


class MagnetGraph(nn.Module):
    """tokens [B, K, T] (MASK = card), text_states [B, L, D], text_mask [B, L], stage [1] or [B]
    → logits of the stage's codebook [B, T, card] (``Magnet.forward``)."""

    def __init__(self, model: Magnet):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, text_states: Tensor, text_mask: Tensor, stage: Tensor) -> Tensor:
        return self.model(tokens, text_states, text_mask, stage)


class ArTextGraph(nn.Module):
    """ids [B, L'] → every layer's cross-attention keys and values [N, B, H, L, d] and text_mask
    [B, L] (``DelayAR.init_cache``'s caption part)."""

    def __init__(self, model: DelayAR):
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        states, mask = encode_captions(self.model.text, ids)
        kv = [block.text_kv(states) for block in self.model.blocks]
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv]), mask


def _causal_blocks(model: DelayAR, x: Tensor, past: Tensor | int, text_keys: Tensor, text_values: Tensor, text_mask: Tensor,
                   keys: Tensor | None = None, values: Tensor | None = None) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The AR transformer over embedded steps x [B, S, D] at positions past .. past + S - 1, after
    cached keys/values [N, B, H, M, d] (M = past) or none → (x, per-layer keys, values [B, H, M+S, d]).
    The mask compares positions (no ``tril(diagonal)``, whose offset a trace would freeze)."""
    s = x.shape[1]
    pos = torch.arange(s) + past
    cos, sin = rotary_tables(pos, model.blocks[0].head_dim, x.dtype)
    causal = (torch.arange(s + past)[None, :] <= pos[:, None])[None, None]
    new_k, new_v = [], []
    for i, block in enumerate(model.blocks):
        x, k, v = block(x, cos, sin, causal, text_keys[i], text_values[i], text_mask,
                        None if keys is None else keys[i], None if values is None else values[i])
        new_k.append(k)
        new_v.append(v)
    return x, new_k, new_v


class ArStepGraph(nn.Module):
    """tokens [B, K, S] int64 (the S delay steps' inputs: EMPTY = card + 1 to start), keys, values
    [N, B, H, M, d] (M may be 0), text_keys, text_values [N, B, H, L, d], text_mask [B, L] →
    logits [B, K, card] of the last step, new_keys, new_values [N, B, H, M + S, d]
    (``DelayAR.step``)."""

    def __init__(self, model: DelayAR):
        super().__init__()
        self.model = model

    def forward(self, tokens, keys, values, text_keys, text_values, text_mask):
        m, past = self.model, keys.shape[3]
        x = m.embed(tokens + m.offsets[:, None]).sum(dim=1)
        x = x + _positions(past, tokens.shape[2], x.shape[-1])
        x, new_k, new_v = _causal_blocks(m, x, past, text_keys, text_values, text_mask, keys, values)
        return m._logits(x[:, -1:])[:, :, 0], torch.stack(new_k), torch.stack(new_v)


def _positions(start, count, dim: int) -> Tensor:
    """Absolute sinusoidal encodings [count, dim] of positions start .. start + count - 1 (as
    ``sinusoidal_positions``, sin and cos interleaved)."""
    pos = (torch.arange(count) + start).to(torch.float32)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = pos[:, None] * freq[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


def _delay(codes: Tensor, fill: int) -> Tensor:
    """codes [B, K, T] → the delay pattern [B, K, T + K - 1] (``ar.apply_delay``, traceable: pads, no slice writes)."""
    k = codes.shape[1]
    return torch.stack([F.pad(codes[:, q], (q, k - 1 - q), value=fill) for q in range(k)], dim=1)


def _undelay(delayed: Tensor, k: int) -> Tensor:
    """[B, K, T + K - 1] → [B, K, T] (``ar.undo_delay``)."""
    return torch.stack([delayed[:, q, q : delayed.shape[2] - (k - 1 - q)] for q in range(k)], dim=1)


class ArScoreGraph(nn.Module):
    """tokens [B, K, T] (MASK = card where unknown), text_keys, text_values, text_mask → log-probs
    [B, K, T] of the given tokens, 0 where MASK (``DelayAR.score``)."""

    def __init__(self, model: DelayAR):
        super().__init__()
        self.model = model

    def forward(self, tokens, text_keys, text_values, text_mask):
        m, k, card = self.model, self.model.cfg.codebooks, self.model.cfg.card
        delayed = _delay(tokens, m.empty_id)
        inputs = torch.cat([torch.full_like(delayed[:, :, :1], m.empty_id), delayed[:, :, :-1]], dim=2)
        x = m.embed(inputs + m.offsets[:, None]).sum(dim=1)
        x = x + _positions(0, inputs.shape[2], x.shape[-1])
        x, _, _ = _causal_blocks(m, x, 0, text_keys, text_values, text_mask)
        logp = m._logits(x).float().log_softmax(-1)
        got = logp.gather(-1, _delay(tokens, 0).clamp(max=card - 1)[..., None])[..., 0]
        return _undelay(got, k).masked_fill(tokens >= card, 0.0)


def graph_metadata(model: Magnet | DelayAR, graph: str) -> dict:
    cfg = model.cfg
    return {"model_family": FAMILY, "graph": graph, "codebooks": cfg.codebooks, "card": cfg.card, "d_model": cfg.d_model,
            "layers": cfg.layers, "heads": cfg.heads, "head_dim": cfg.d_model // cfg.heads, "max_tokens": cfg.text.max_tokens,
            "max_frames": cfg.max_frames}


def write_magnet_graphs(model: Magnet, out_dir: Path) -> None:
    """text.onnx and magnet.onnx, traced at B 1, caption 3, T 7, stage [2]: none of them the check's."""
    cfg = model.cfg
    ids = torch.tensor([[3, 4, 5]]).clamp(max=cfg.text.vocab_size - 1)
    with torch.no_grad():
        states, mask = model.text(ids)
    text_axes = {"ids": {0: "B", 1: "L_in"}, "text_states": {0: "B", 1: "L"}, "text_mask": {0: "B", 1: "L"}}
    write_onnx(TextGraph(model).eval(), (ids,), out_dir / TEXT_FILE, ["ids"], ["text_states", "text_mask"], text_axes,
               graph_metadata(model, "text"))
    tokens = torch.randint(0, cfg.card + 1, (1, cfg.codebooks, 7))
    write_onnx(MagnetGraph(model).eval(), (tokens, states, mask, torch.tensor([min(2, cfg.codebooks - 1)])), out_dir / MAGNET_FILE,
               ["tokens", "text_states", "text_mask", "stage"], ["logits"],
               {"tokens": {0: "B", 2: "T"}, "text_states": {0: "B", 1: "L"}, "text_mask": {0: "B", 1: "L"}, "stage": {0: "S"},
                "logits": {0: "B", 1: "T"}}, graph_metadata(model, "magnet"))


def write_ar_graphs(model: DelayAR, out_dir: Path) -> None:
    """ar_text.onnx, ar_step.onnx (traced on a block of 2 steps after a cache of 5) and
    ar_score.onnx (T 6), at batch 1."""
    cfg = model.cfg
    ids = torch.tensor([[3, 4, 5]]).clamp(max=cfg.text.vocab_size - 1)
    with torch.no_grad():
        tk, tv, tm = ArTextGraph(model)(ids)
    n, _, h, _, d = tk.shape
    kv_axes, text_kv = {1: "B", 3: "M"}, {1: "B", 3: "L"}
    write_onnx(ArTextGraph(model).eval(), (ids,), out_dir / AR_TEXT_FILE, ["ids"], ["text_keys", "text_values", "text_mask"],
               {"ids": {0: "B", 1: "L_in"}, "text_keys": text_kv, "text_values": text_kv, "text_mask": {0: "B", 1: "L"}},
               graph_metadata(model, "ar_text"))
    tokens = torch.randint(0, cfg.card + 2, (1, cfg.codebooks, 2))
    cache = torch.randn(n, 1, h, 5, d)
    write_onnx(ArStepGraph(model).eval(), (tokens, cache, torch.randn_like(cache), tk, tv, tm), out_dir / AR_STEP_FILE,
               ["tokens", "keys", "values", "text_keys", "text_values", "text_mask"], ["logits", "new_keys", "new_values"],
               {"tokens": {0: "B", 2: "S"}, "keys": kv_axes, "values": kv_axes, "text_keys": text_kv, "text_values": text_kv,
                "text_mask": {0: "B", 1: "L"}, "logits": {0: "B"}, "new_keys": {1: "B", 3: "M_out"}, "new_values": {1: "B", 3: "M_out"}},
               graph_metadata(model, "ar_step"))
    write_onnx(ArScoreGraph(model).eval(), (torch.randint(0, cfg.card + 1, (1, cfg.codebooks, 6)), tk, tv, tm), out_dir / AR_SCORE_FILE,
               ["tokens", "text_keys", "text_values", "text_mask"], ["logp"],
               {"tokens": {0: "B", 2: "T"}, "text_keys": text_kv, "text_values": text_kv, "text_mask": {0: "B", 1: "L"},
                "logp": {0: "B", 2: "T"}}, graph_metadata(model, "ar_score"))


def write_graphs(magnet: Magnet, ar: DelayAR | None, out_dir: Path) -> None:
    with warnings.catch_warnings():  # the tracer's notes on shape arithmetic that stays constant here
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # a slice left unfolded: harmless
        write_magnet_graphs(magnet, out_dir)
        if ar is not None:
            write_ar_graphs(ar, out_dir)


# ---- parity -------------------------------------------------------------------------------------

class _Diffs:
    """Per compared output: max |Δ|, the reference's max |value|, ‖Δ‖² and ‖ref‖² (→ relative error),
    and for logits the argmax agreement."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def add(self, name: str, got: np.ndarray, ref: Tensor | np.ndarray, where: np.ndarray | None = None, logits: bool = False) -> None:
        r = (ref.detach().numpy() if isinstance(ref, Tensor) else np.asarray(ref)).astype(np.float64)
        g = np.asarray(got, dtype=np.float64)
        if g.shape != r.shape:
            raise SpeechkitError(f"ONNX Runtime gives {name} of shape {list(g.shape)}, PyTorch {list(r.shape)}")
        if where is not None:
            g, r = g[where], r[where]
        d = np.abs(g - r)
        row = self.rows.setdefault(name, {"max_abs_diff": 0.0, "max_abs_ref": 0.0, "err": 0.0, "norm": 0.0, "same": 0, "n": 0})
        row["max_abs_diff"] = max(row["max_abs_diff"], float(d.max()) if np.all(np.isfinite(d)) else float("inf"))
        row["max_abs_ref"] = max(row["max_abs_ref"], float(np.abs(r).max()))
        row["err"] += float((d ** 2).sum())
        row["norm"] += float((r ** 2).sum())
        if logits:
            row["same"] += int((g.argmax(-1) == r.argmax(-1)).sum())
            row["n"] += int(np.prod(g.shape[:-1]))

    def report(self) -> dict[str, dict]:
        out = {}
        for name, row in self.rows.items():
            out[name] = {"max_abs_diff": row["max_abs_diff"], "max_abs_ref": row["max_abs_ref"],
                         "rel_err": float(np.sqrt(row["err"] / max(row["norm"], 1e-30)))}
            if row["n"]:
                out[name]["argmax_agreement"] = row["same"] / row["n"]
        return out


def _check_captions(tok: CaptionTokenizer) -> list[str]:
    """Two captions of different lengths from the vocabulary (one with an unknown word and digits)."""
    words = [w for w in tok.words[2:] if not w.isdigit()] or ["music"]
    return [" ".join(words[i % len(words)] for i in range(5)), f"{words[-1]} zzzunknown 1 2 0"]


@torch.no_grad()
def compare_graphs(magnet: Magnet, ar: DelayAR | None, graphs: MusicGraphs, captions: list[str],
                   magnet_tok: CaptionTokenizer, ar_tok: CaptionTokenizer | None, seed: int = 0) -> dict[str, dict]:
    """Every graph through ``graphs`` (the runtime's sessions) against PyTorch at shapes unlike the
    trace's: 2 captions, 19 and 31 frames, every stage; the AR step as a 3-step prompt on an empty
    cache then 9 single steps; the scorer on codes whose higher codebooks are MASK in one row."""
    g = torch.Generator().manual_seed(seed)
    diffs = _Diffs()
    cfg = magnet.cfg
    ids = magnet_tok.batch(captions)
    states, mask = magnet.text(ids)
    got_states, got_mask = graphs.text.run(None, {"ids": ids.numpy()})
    if not np.array_equal(got_mask, mask.numpy()):
        raise SpeechkitError("ONNX Runtime and PyTorch disagree on the caption mask")
    diffs.add("text_states", got_states, states, where=mask.numpy())
    for frames in (19, 31):
        for stage in [[q] for q in range(cfg.codebooks)] + [[cfg.codebooks - 1, 0]]:
            tokens = torch.randint(0, cfg.card + 1, (len(captions), cfg.codebooks, frames), generator=g)
            want = magnet(tokens, states, mask, torch.tensor(stage))
            got = graphs.magnet.run(None, {"tokens": tokens.numpy(), "text_states": got_states, "text_mask": got_mask,
                                           "stage": np.array(stage, np.int64)})[0]
            diffs.add("magnet_logits", got, want, logits=True)
    if ar is None:
        return diffs.report()
    acfg = ar.cfg
    ids = ar_tok.batch(captions)
    cache = ar.init_cache(*ar.text(ids))
    tk, tv, tm = graphs.ar_text.run(None, {"ids": ids.numpy()})
    diffs.add("text_keys", tk, cache.text_keys, where=np.broadcast_to(tm[None, :, None, :, None], tk.shape))
    diffs.add("text_values", tv, cache.text_values, where=np.broadcast_to(tm[None, :, None, :, None], tv.shape))
    b = len(captions)
    codes = torch.randint(0, acfg.card, (b, acfg.codebooks, 10), generator=g)
    inputs = ar.inputs(codes)  # [B, K, 10 + K - 1]
    n, _, h, _, d = tk.shape
    keys = values = np.zeros((n, b, h, 0, d), np.float32)
    for at, stop in [(0, 3)] + [(j, j + 1) for j in range(3, 12)]:
        block = inputs[:, :, at:stop]
        want, cache = ar.step(block, cache)
        got, keys, values = graphs.ar_step.run(None, {"tokens": block.numpy(), "keys": keys, "values": values, "text_keys": tk,
                                                      "text_values": tv, "text_mask": tm})
        diffs.add("ar_step_logits", got, want[:, :, -1], logits=True)
    diffs.add("ar_cache", keys, cache.keys)
    diffs.add("ar_cache", values, cache.values)
    scored = codes.clone()
    scored[0, 1:] = acfg.card  # row 0: only codebook 0 known (MAGNeT at stage 1)
    want = ar.score(scored, ids)
    got = graphs.ar_score.run(None, {"tokens": scored.numpy(), "text_keys": tk, "text_values": tv, "text_mask": tm})[0]
    diffs.add("ar_score_logp", got, want)
    return diffs.report()


def check_options(k: int, span: int) -> tuple[MagnetOptions, ArOptions]:
    """Short decoding for the whole-generation check: few steps, default guidance and sampling."""
    return MagnetOptions(steps=(4,) + (2,) * (k - 1), span=span), ArOptions()


@torch.no_grad()
def compare_generation(magnet: Magnet, ar: DelayAR | None, graphs: MusicGraphs, captions: list[str],
                       magnet_tok: CaptionTokenizer, ar_tok: CaptionTokenizer | None, frames: int = CHECK_FRAMES,
                       seed: int = 0) -> dict[str, float]:
    """Every mode decoded twice with the same seed, by the torch models' callables and by the
    runtime's → the fraction of equal tokens per mode (1.0: the same clip)."""
    cfg = magnet.cfg
    b, k, card = len(captions), cfg.codebooks, cfg.card
    mopts, aopts = check_options(k, cfg.span)
    torch_logits, onnx_logits = magnet.logits_fn(magnet_tok.batch(captions)), graphs.magnet_logits_fn(captions)
    runs = {"magnet": (lambda fn, *_: magnet_generate(fn, b, frames, k, card, mopts, rng=seed), (torch_logits,), (onnx_logits,))}
    if ar is not None:
        ar_ids = ar_tok.batch(captions)
        t_init, t_step = ar.decoding_fns(ar_ids)
        o_init, o_step = graphs.ar_fns(captions)
        rescored = MagnetOptions(**{**asdict(mopts), "rescore_weight": 0.5})
        runs["magnet_rescore"] = (lambda fn, score: magnet_generate(fn, b, frames, k, card, rescored, rescore_fn=score, rng=seed),
                                  (torch_logits, ar.rescore_fn(ar_ids)), (onnx_logits, graphs.rescore_fn(captions)))
        runs["ar"] = (lambda init, step: ar_generate(init, step, b, frames, k, card, aopts, rng=seed), (t_init, t_step), (o_init, o_step))
        runs["hybrid"] = (lambda fn, init, step: hybrid_generate(fn, init, step, b, frames, k, card, frames // 3, mopts, aopts, rng=seed),
                          (torch_logits, t_init, t_step), (onnx_logits, o_init, o_step))
    out = {}
    for mode, (run, torch_fns, onnx_fns) in runs.items():
        out[mode] = float((run(*torch_fns) == run(*onnx_fns)).mean())
    return out


def _within(rows: dict[str, dict], what: str) -> None:
    for name, row in rows.items():
        limit = TOL * max(1.0, row["max_abs_ref"])
        if not row["max_abs_diff"] <= limit:
            raise SpeechkitError(f"ONNX Runtime and PyTorch disagree on {name} ({what}): max |Δ| {row['max_abs_diff']:.2e} > {limit:.2e}")


# ---- smaller weights ------------------------------------------------------------------------------

def _fold_identities(proto) -> None:
    """Readers of an Identity of an initializer read the initializer itself (the exporter writes
    such Identities for equal weights, e.g. the caption encoder's cloned layers before training),
    so that every reader of a quantized weight is rewired."""
    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    outputs = {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in outputs)]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)


def convert_weights(folder: Path, names: list[str], weights: str) -> dict[str, int]:
    """The graphs' matrices (MatMul/Gemm) and tables (Gather) to ``weights``: fp16 stores both in
    half precision; int8 stores the matrices per-channel int8 (``quantize_weights_int8``) and the
    tables in half precision. → how many weights each graph stored smaller."""
    import onnx

    from speechkit.export.quantize import MATRICES, TABLES, quantize_weights_int8, weights_to_fp16

    counts = {}
    for name in names:
        proto = onnx.load(str(folder / name))
        _fold_identities(proto)
        before = len(proto.graph.initializer)
        if weights == "fp16":
            n = weights_to_fp16(proto, MIN_ELEMENTS, {**MATRICES, **TABLES})
        else:
            quantize_weights_int8(proto, MIN_ELEMENTS)
            n = len(proto.graph.initializer) - before  # each quantized weight adds a scale
            n += weights_to_fp16(proto, MIN_ELEMENTS, TABLES)
        tmp = folder / (name + ".tmp")
        onnx.save(proto, str(tmp))
        tmp.replace(folder / name)
    return counts


def share_weights(folder: Path, names: list[str], data_file: str) -> dict[str, int]:
    """The graphs ``names`` (the AR step and scorer: one model's weights twice) keep their weights
    of at least ``MIN_ELEMENTS`` in one file ``data_file`` beside them, each distinct tensor once
    (ONNX external data; ONNX Runtime reads it relative to the graph). → bytes written, bytes saved."""
    import hashlib

    import onnx
    from onnx import TensorProto
    from onnx.external_data_helper import set_external_data

    protos = {name: onnx.load(str(folder / name)) for name in names}
    at: dict[tuple, tuple[int, int]] = {}
    written = saved = 0
    with open(folder / data_file, "wb") as f:
        for proto in protos.values():
            for t in proto.graph.initializer:
                if not t.HasField("raw_data") or len(t.raw_data) < 4 * MIN_ELEMENTS:
                    continue
                key = (t.data_type, tuple(t.dims), hashlib.sha256(t.raw_data).hexdigest())
                if key not in at:
                    f.write(b"\0" * (-written % 64))  # aligned starts
                    written += -written % 64
                    at[key] = (written, len(t.raw_data))
                    f.write(t.raw_data)
                    written += len(t.raw_data)
                else:
                    saved += len(t.raw_data)
                offset, length = at[key]
                set_external_data(t, data_file, offset, length)
                t.data_location = TensorProto.EXTERNAL
                t.ClearField("raw_data")
    for name, proto in protos.items():
        tmp = folder / (name + ".tmp")
        onnx.save(proto, str(tmp))
        tmp.replace(folder / name)
    return {"bytes": written, "bytes_saved": saved}


# ---- the codec ------------------------------------------------------------------------------------

def place_codec(codec: str | Path, out: Path) -> dict:
    """The decoder half of a codec in ``out`` (decoder.onnx, codebooks.npy, export.json; generation
    never encodes audio, so encoder.onnx stays behind): copied from a codec export, or exported
    from a codec experiment (model.pt) by ``export_codec`` (its parity check on noise) →
    its export.json."""
    from speechkit.export.codec import export_codec

    codec = Path(codec)
    out.mkdir(parents=True, exist_ok=True)
    if (codec / "decoder.onnx").is_file():
        if not (codec / "codebooks.npy").is_file():
            raise SpeechkitError(f"{codec}: not an RVQ codec export (no codebooks.npy); text-to-music decodes RVQ tokens")
        for name in CODEC_FILES:
            if (codec / name).is_file():
                shutil.copy(codec / name, out / name)
    elif (codec / "model.pt").is_file() or codec.is_file():
        from speechkit.models.codec.io import load_codec
        from speechkit.models.codec.model import RvqCodec

        model = load_codec(codec)
        if not isinstance(model, RvqCodec):
            raise SpeechkitError(f"{codec}: a {model.cfg.codec} codec; text-to-music decodes RVQ tokens")
        noise = np.random.default_rng(0).standard_normal(8 * model.cfg.hop).astype(np.float32) * 0.1
        export_codec(model, out, [noise])
        (out / "encoder.onnx").unlink(missing_ok=True)
    else:
        raise SpeechkitError(f"{codec}: neither a codec export (decoder.onnx) nor a codec experiment (model.pt)")
    return json.loads((out / "export.json").read_text())


# ---- export ---------------------------------------------------------------------------------------

def _load(path: str | Path, kind: str):
    from speechkit.models.audiogen.io import load_audiogen

    model, tok, tokens = load_audiogen(path)
    got = "magnet" if isinstance(model, Magnet) else "ar"
    if got != kind:
        raise SpeechkitError(f"{path}: a {got} model where a {kind} model was expected")
    return model.float().eval(), tok, tokens


def _check_pair(magnet: Magnet, tokens: dict, ar: DelayAR | None, ar_tokens: dict | None, codec_info: dict) -> None:
    m = magnet.cfg
    if ar is not None and (ar.cfg.codebooks, ar.cfg.card) != (m.codebooks, m.card):
        raise SpeechkitError(f"MAGNeT models {m.codebooks} codebooks of {m.card}, the AR model {ar.cfg.codebooks} of {ar.cfg.card}")
    for name, t in (("MAGNeT", tokens), ("the AR model", ar_tokens or {})):
        if t.get("frame_rate") and abs(float(t["frame_rate"]) - float(codec_info["frame_rate"])) > 1e-6:
            raise SpeechkitError(f"{name} was trained on {t['frame_rate']} frames/s, the codec makes {codec_info['frame_rate']}")
    if int(codec_info.get("n_q", 0)) < m.codebooks or int(codec_info.get("codebook_size", 0)) != m.card:
        raise SpeechkitError(f"the codec has {codec_info.get('n_q')} codebooks of {codec_info.get('codebook_size')}; "
                             f"the model needs {m.codebooks} of {m.card}")


def decoding_defaults(magnet: Magnet) -> dict:
    k = magnet.cfg.codebooks
    return {"magnet": asdict(MagnetOptions(steps=(20,) + (10,) * (k - 1), span=magnet.cfg.span)), "ar": asdict(ArOptions()),
            "hybrid_ar_seconds": HYBRID_AR_SECONDS}


def _sizes(folder: Path, names) -> dict[str, float]:
    return {n: round((folder / n).stat().st_size / 1e6, 3) for n in names}


def export_audiogen(magnet: str | Path, out_dir: str | Path, codec: str | Path | None = None, ar: str | Path | None = None,
                    weights: str = "fp16") -> dict:
    """A MAGNeT model (experiment dir or model.pt) and optionally a delay-pattern AR model → one
    folder: the graphs, ``codec/`` (``codec``: a codec export or experiment; default the one MAGNeT's
    tokens came from), ``audiogen.json`` (what the runtime reads) and ``export.json`` (the parity
    report, sizes). Everything is written to a staging folder and moved in only after the checks."""
    if weights not in WEIGHTS:
        raise SpeechkitError(f"unknown weights {weights!r} (known: {', '.join(WEIGHTS)})")
    magnet_model, magnet_tok, tokens = _load(magnet, "magnet")
    ar_model, ar_tok, ar_tokens = _load(ar, "ar") if ar is not None else (None, None, None)
    codec = codec or tokens.get("codec")
    if not codec:
        raise SpeechkitError(f"{magnet}: the model does not say which codec made its tokens: pass the codec")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        codec_info = place_codec(codec, staging / CODEC_DIR)
        _check_pair(magnet_model, tokens, ar_model, ar_tokens, codec_info)
        names = list(MAGNET_GRAPHS) + (list(AR_GRAPHS) if ar_model is not None else [])
        write_graphs(magnet_model, ar_model, staging)
        report = check(magnet_model, ar_model, staging, magnet_tok, ar_tok, weights)
        info = {"model_family": FAMILY, "words": magnet_tok.words, **({"ar_words": ar_tok.words} if ar_tok else {}),
                "codebooks": magnet_model.cfg.codebooks, "card": magnet_model.cfg.card, "frame_rate": float(codec_info["frame_rate"]),
                "sample_rate": int(codec_info["sample_rate"]), "max_frames": magnet_model.cfg.max_frames,
                "ar_max_frames": ar_model.cfg.max_frames if ar_model is not None else 0, "graphs": names, "weights": weights,
                "codec": CODEC_DIR, "decoding": decoding_defaults(magnet_model)}
        (staging / CONFIG_FILE).write_text(json.dumps(info, indent=1) + "\n")
        sizes = _sizes(staging, names + ([AR_WEIGHTS_FILE] if ar_model is not None else []))
        for name in [*MAGNET_GRAPHS, *AR_GRAPHS, AR_WEIGHTS_FILE, CONFIG_FILE, "export.json"]:  # an older export's files go too
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(out_dir / CODEC_DIR, ignore_errors=True)
        for f in sorted(staging.iterdir()):
            f.replace(out_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    codec_mb = round(sum(f.stat().st_size for f in (out_dir / CODEC_DIR).iterdir()) / 1e6, 3)
    export = {"model_family": FAMILY, "magnet": str(magnet), "ar": None if ar is None else str(ar), "codec_source": str(codec),
              "weights": weights, "magnet_config": to_dict(magnet_model.cfg),
              **({"ar_config": to_dict(ar_model.cfg)} if ar_model is not None else {}), "parity": report, "sizes_mb": sizes,
              "graphs_mb": round(sum(sizes.values()), 3), "codec_mb": codec_mb, "total_mb": round(sum(sizes.values()) + codec_mb, 2)}
    tmp = out_dir / "export.json.tmp"
    tmp.write_text(json.dumps(export, indent=1) + "\n")
    tmp.replace(out_dir / "export.json")
    return export


def check(magnet: Magnet, ar: DelayAR | None, folder: Path, magnet_tok: CaptionTokenizer, ar_tok: CaptionTokenizer | None,
          weights: str) -> dict:
    """The float32 graphs: every output within ``TOL`` and every mode's tokens equal to PyTorch's.
    Then the shipped files (weights converted to ``weights``, the AR step's and scorer's shared):
    float32 within ``TOL`` again; fp16 / int8 within ``GROSS`` (relative), their generations'
    token agreement reported."""
    captions = _check_captions(magnet_tok)
    names = [n for n in (*MAGNET_GRAPHS, *AR_GRAPHS) if (folder / n).is_file()]

    def graphs() -> MusicGraphs:
        return MusicGraphs(folder, magnet_tok.words, ar_tok.words if ar_tok else None)

    report = {"captions": captions, "tolerance": TOL, "generation_frames": CHECK_FRAMES}
    report["fp32"] = compare_graphs(magnet, ar, graphs(), captions, magnet_tok, ar_tok)
    _within(report["fp32"], "float32 weights")
    report["fp32_sizes_mb"] = _sizes(folder, names)
    same = compare_generation(magnet, ar, graphs(), captions, magnet_tok, ar_tok)
    report["fp32_generation_token_agreement"] = same
    if min(same.values()) < 1.0:
        raise SpeechkitError(f"ONNX Runtime and PyTorch generate different tokens from the same seed: agreement {same}")
    if weights != "fp32":
        report[f"{weights}_weights_converted"] = convert_weights(folder, names, weights)
    if ar is not None:
        report["ar_shared_weights"] = share_weights(folder, [AR_STEP_FILE, AR_SCORE_FILE], AR_WEIGHTS_FILE)
    rows = compare_graphs(magnet, ar, graphs(), captions, magnet_tok, ar_tok)
    if weights == "fp32":
        _within(rows, "float32 weights, as shipped")
        return report
    report[weights] = rows
    report[f"{weights}_generation_token_agreement"] = compare_generation(magnet, ar, graphs(), captions, magnet_tok, ar_tok)
    report[f"{weights}_gross_rel_err"] = GROSS[weights]
    worst = max(rows, key=lambda n: rows[n]["rel_err"])
    if not rows[worst]["rel_err"] <= GROSS[weights]:
        raise SpeechkitError(f"the {weights} graphs are far from PyTorch: {worst} relative error {rows[worst]['rel_err']:.3f} "
                             f"(limit {GROSS[weights]}); export with weights fp32")
    return report


# ---- command line (to be wired as `speechkit audiogen export`) ---------------------------------------

def run_export(args: argparse.Namespace) -> None:
    info = export_audiogen(args.magnet, args.out, codec=args.codec, ar=args.ar, weights=args.weights)
    p = info["parity"]
    worst = max(row["max_abs_diff"] for row in p["fp32"].values())
    line = f"fp32 max |Δ| {worst:.1e}, same tokens in {', '.join(p['fp32_generation_token_agreement'])}"
    if info["weights"] != "fp32":
        rel = max(row["rel_err"] for row in p[info["weights"]].values())
        line += f"; {info['weights']} relative error <= {rel:.1e}"
    sizes = ", ".join(f"{k} {v:.1f} MB" for k, v in info["sizes_mb"].items())
    print(f"{args.out}: {sizes}, codec {info['codec_mb']:.1f} MB; {line}")
