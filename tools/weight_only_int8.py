"""Rewrite a model dir's dynamic-int8 ``model.onnx`` (made by onnxruntime's quantize_dynamic)
as weight-only int8 with the same int8 weights (speechkit/export/quantize.py says why), in place
and atomically. New exports get weight-only int8 from ``speechkit export onnx --int8`` directly.

    python tools/weight_only_int8.py models/asr-stream-synth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx

from speechkit.export.quantize import weight_only_from_dynamic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path, help="a model dir with a dynamic-int8 model.onnx")
    args = p.parse_args()
    path = args.model_dir / "model.onnx"
    model = onnx.load(str(path))
    if not any(n.op_type == "DynamicQuantizeLinear" for n in model.graph.node):
        raise SystemExit(f"{path}: not a dynamic-int8 graph (no DynamicQuantizeLinear); nothing to do")
    model = weight_only_from_dynamic(model)
    onnx.checker.check_model(model)
    tmp = path.with_name("model.onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    print(f"{path}: weight-only int8 ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
