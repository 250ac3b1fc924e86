#!/usr/bin/env python3
"""A shipped ASR model (``models/asr-stream-synth``, ``models/asr-paraformer-synth``: an int8 ONNX
file, no PyTorch weights) back into a checkpoint the trainer can start from (``train_conf.init_checkpoint``).

Every weight of the graph is an initializer: float ones keep the module path they were exported
under (``model.encoder.blocks.0.norm_ff1.weight``); int8 ones sit behind a DequantizeLinear, and
those feeding a MatMul carry ONNX Runtime's name (``onnx::MatMul_2974``), so their module comes
from the MatMul node's scope (``/blocks.0/ff1/net/net.0/MatMul``) and they are transposed back.
The dequantized weights are exactly what our runtime computes with (it folds int8 weights back to
float32), so the checkpoint is the shipped model, not an approximation of the lost float32 one.
Checked: the checkpoint, exported again as float32, gives the shipped graph's log-probabilities.

    local/onnx_to_checkpoint.py MODEL_DIR OUT_DIR [--config conf/train_stream_gpu.yaml]
writes OUT_DIR/model.pt, tokens.txt and config.yaml.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from speechkit.checkpoint import save_atomic
from speechkit.train.asr import build_model
from speechkit.train.config import load_experiment_config, save_experiment_config

PREFIX = "model."  # the export wraps the model as ``model``


# The Paraformer's glancing sampler embeds target tokens; inference never does, so the graph lacks
# the table. It starts as the output layer's rows (the tied-embedding start). An auxiliary CTC
# layer is not in any graph either: fine-tune such a model with head_conf.ctc_weight 0.
TRAINING_ONLY = {"decoder.embed.weight": "decoder.out.weight"}

QUANT_SUFFIXES = ("_quantized", "_int8")  # ONNX Runtime's dynamic quantization; export/quantize.py


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    q, scale = q.astype(np.float32), scale.astype(np.float32)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:  # per channel
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def scope_path(node_name: str) -> str:
    """'/blocks.0/ff1/net/net.0/MatMul_quant_float' -> 'blocks.0.ff1.net.0' (a Sequential's child
    is scoped under the Sequential as 'net/net.0')."""
    parts: list[str] = []
    for seg in node_name.strip("/").split("/")[:-1]:
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


def recover(onnx_path: Path, own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict from an exported graph (float32, or int8 weights of either kind)."""
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # the exporter keeps one of several equal tensors, the others as Identity
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    shared = {n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    quant_parts = {x for n in graph.node if n.op_type == "DequantizeLinear" for x in n.input}
    quantized: dict[str, np.ndarray] = {}  # a DequantizeLinear's output -> float weights
    base: dict[str, str] = {}  # ... and the name of the weight it stands for
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            zero = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            quantized[node.output[0]] = dequantize(inits[node.input[0]], inits[node.input[1]], zero, axis)
            name = node.input[0]
            base[node.output[0]] = next((name[: -len(s)] for s in QUANT_SUFFIXES if name.endswith(s)), name)
    own_names = {PREFIX + k for k in own}
    state: dict[str, np.ndarray] = {}

    def put(key: str, value: np.ndarray, origin: str) -> None:
        if key not in own:
            raise SystemExit(f"{onnx_path}: {origin} maps to {key}, which this config's model lacks (another config?)")
        if tuple(own[key].shape) != value.shape:
            raise SystemExit(f"{onnx_path}: {origin} has shape {value.shape}, {key} is {tuple(own[key].shape)} (another config?)")
        if key in state:
            raise SystemExit(f"{onnx_path}: two tensors map to {key}")
        state[key] = value

    for name, value in inits.items():  # float weights under their module path
        if name.startswith(PREFIX) and name not in quant_parts and (name in own_names or name not in shared):
            put(name[len(PREFIX):], value, name)
    for out, value in quantized.items():  # int8 weights that kept their module path (convs)
        if base[out].startswith(PREFIX):
            put(base[out][len(PREFIX):], value, base[out])
    for node in graph.node:  # Linear weights, renamed by the exporter: their module from the node's scope
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        w_name = node.input[1]
        if w_name in quantized and not base[w_name].startswith(PREFIX):
            w = quantized[w_name]
        elif w_name in inits and not w_name.startswith(PREFIX):
            w = inits[w_name]
        else:
            continue  # activations, or a weight already placed
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        w = np.ascontiguousarray(w if trans_b else w.T)  # MatMul holds Linear.weight transposed
        path = scope_path(node.name)
        cands = [k for k in own if (k == f"{path}.weight" or k.endswith(f".{path}.weight"))
                 and k not in state and tuple(own[k].shape) == w.shape]
        if len(cands) != 1:
            raise SystemExit(f"{onnx_path}: {node.name} fits {len(cands)} weights of the model ({cands[:3]})")
        put(cands[0], w, node.name)
    for key, source in TRAINING_ONLY.items():  # parts no inference graph holds, started from one it does
        if key in own and key not in state and source in state and tuple(own[key].shape) == state[source].shape:
            print(f"{key}: not in the graph (training only); starts as {source}", file=sys.stderr)
            state[key] = state[source]
    missing = [k for k in own if k not in state]
    if missing:
        raise SystemExit(f"{onnx_path}: no tensor for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    return {k: torch.from_numpy(np.array(v)).to(own[k].dtype) for k, v in state.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="an exported ASR model (model.onnx, tokens.txt)")
    ap.add_argument("out_dir", type=Path, help="where model.pt, tokens.txt and config.yaml go")
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parent.parent / "conf/train_stream_gpu.yaml",
                    help="the training config the model was made with (default conf/train_stream_gpu.yaml)")
    a = ap.parse_args(argv)
    onnx_path, tokens = a.model_dir / "model.onnx", a.model_dir / "tokens.txt"
    for f in (onnx_path, tokens):
        if not f.is_file():
            raise SystemExit(f"{f}: no such file (give an exported ASR model dir)")
    cfg = load_experiment_config(a.config)
    vocab = sum(1 for line in tokens.read_text().splitlines() if line.strip())
    model = build_model(cfg, vocab)
    state = recover(onnx_path, model.state_dict())
    model.load_state_dict(state)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict(), "epoch": 0,
                 "source": str(a.model_dir)}, a.out_dir / "model.pt")
    shutil.copy(tokens, a.out_dir / "tokens.txt")
    save_experiment_config(cfg, a.out_dir / "config.yaml")
    print(f"{a.model_dir} -> {a.out_dir / 'model.pt'}: {len(state)} tensors, "
          f"{sum(v.numel() for v in state.values()) / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
