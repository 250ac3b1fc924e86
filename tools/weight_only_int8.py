"""Shrink a shipped model dir in place (atomically). A dynamic-int8 ``model.onnx`` (made by
onnxruntime's quantize_dynamic) becomes weight-only int8 with the same int8 weights
(speechkit/export/quantize.py says why); new exports get that from ``speechkit export onnx
--int8`` directly. ``--fp16`` on a codec dir (``encoder.onnx`` + ``decoder.onnx``) stores its
float weights as float16 behind a Cast instead: the codec GPU runs send fp16 weights back, so
this loses nothing (the rewrite reports how many weights float16 rounded, and refuses any).

    python tools/weight_only_int8.py models/asr-stream-synth
    python tools/weight_only_int8.py --fp16 models/codec-vae-synth
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from speechkit.export.quantize import MIN_ELEMENTS, weight_only_from_dynamic

CODEC_FILES = ("encoder.onnx", "decoder.onnx")


def float16_weights(model: onnx.ModelProto, min_elements: int = MIN_ELEMENTS) -> int:
    """Store each float32 initializer of at least ``min_elements`` as float16 + Cast to float32,
    in place (ONNX Runtime folds the Casts at load). Returns how many values float16 changed."""
    graph = model.graph
    casts, rounded = [], 0
    for t in list(graph.initializer):
        w = numpy_helper.to_array(t)
        if w.dtype != np.float32 or w.size < min_elements:
            continue
        h = w.astype(np.float16)
        rounded += int(np.count_nonzero(h.astype(np.float32) != w))
        graph.initializer.remove(t)
        graph.initializer.append(numpy_helper.from_array(h, f"{t.name}_fp16"))
        casts.append(helper.make_node("Cast", [f"{t.name}_fp16"], [t.name], to=onnx.TensorProto.FLOAT, name=f"{t.name}_Cast"))
    nodes = casts + list(graph.node)  # the graph's nodes stay in topological order
    del graph.node[:]
    graph.node.extend(nodes)
    return rounded


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def codec_to_fp16(model_dir: Path) -> None:
    models = {}
    for name in CODEC_FILES:
        model = onnx.load(str(model_dir / name))
        if not any(t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= MIN_ELEMENTS for t in model.graph.initializer):
            raise SystemExit(f"{model_dir / name}: no float32 weights (already float16 or int8); nothing to do")
        rounded = float16_weights(model)
        if rounded:
            raise SystemExit(f"{model_dir / name}: float16 would round {rounded} weights (not fp16 weights from a GPU run); nothing written")
        models[name] = model
    for name, model in models.items():
        _save(model, model_dir / name)
    size_mb = round(sum((model_dir / n).stat().st_size for n in CODEC_FILES) / 1e6, 2)
    report = model_dir / "export.json"
    if report.is_file():
        info = json.loads(report.read_text())
        info.update(weights="float16 (Cast to float32 at load; the same values as the float32 export)", size_mb=size_mb)
        report.write_text(json.dumps(info, indent=1) + "\n")
    print(f"{model_dir}: float16 weights, lossless ({size_mb} MB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path, help="a model dir with a dynamic-int8 model.onnx, or with --fp16 an exported codec")
    p.add_argument("--fp16", action="store_true", help="codec dir: float16 weights (only where that is lossless)")
    args = p.parse_args()
    if args.fp16:
        codec_to_fp16(args.model_dir)
        return
    path = args.model_dir / "model.onnx"
    model = onnx.load(str(path))
    if not any(n.op_type == "DynamicQuantizeLinear" for n in model.graph.node):
        raise SystemExit(f"{path}: not a dynamic-int8 graph (no DynamicQuantizeLinear); nothing to do")
    _save(weight_only_from_dynamic(model), path)
    print(f"{path}: weight-only int8 ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
