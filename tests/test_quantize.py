"""Weight-only int8 (export/quantize.py) on a small MatMul + Conv graph: close to float32, a
quarter of the weight bytes, and batch-independent (each row exactly as alone); and the rewrite
of an ONNX Runtime dynamic-int8 graph keeps its int8 weights exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from speechkit.export.quantize import quantize_weights_int8, weight_only_from_dynamic
from speechkit.runtime.session import cpu_session


def _graph(path) -> dict:
    rng = np.random.default_rng(0)
    w = {"w1": rng.standard_normal((64, 48)).astype(np.float32) * 0.2, "b1": rng.standard_normal(48).astype(np.float32) * 0.1,
         "w2": rng.standard_normal((32, 48, 3)).astype(np.float32) * 0.2}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["rt", "w2"], ["y"], pads=[1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 32, "T"])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def _run(path, x):
    return cpu_session(path).run(None, {"x": x})[0]


def _batch_invariant(path, rng) -> bool:
    a, b = (rng.standard_normal((1, 20, 64)).astype(np.float32) * s for s in (1.0, 30.0))  # very different ranges
    both = _run(path, np.concatenate([a, b]))
    return np.array_equal(both[:1], _run(path, a)) and np.array_equal(both[1:], _run(path, b))


def test_weight_only_int8_is_close_smaller_and_batch_independent(tmp_path):
    _graph(tmp_path / "fp32.onnx")
    q = quantize_weights_int8(onnx.load(str(tmp_path / "fp32.onnx")), min_elements=100)
    onnx.checker.check_model(q)
    onnx.save(q, str(tmp_path / "int8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert inits["w1_int8"].dtype == np.int8 and inits["w1_scale"].shape == (48,)  # a scale per output column
    assert inits["w2_int8"].dtype == np.int8 and inits["w2_scale"].shape == (32,)  # a scale per output channel
    assert "b1" in inits and inits["b1"].dtype == np.float32  # small tensors stay float
    x = np.random.default_rng(1).standard_normal((2, 20, 64)).astype(np.float32)
    ref, got = _run(tmp_path / "fp32.onnx", x), _run(tmp_path / "int8.onnx", x)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.02
    assert _batch_invariant(tmp_path / "int8.onnx", np.random.default_rng(2))


def test_dynamic_int8_graph_becomes_weight_only_with_the_same_weights(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = _graph(tmp_path / "fp32.onnx")
    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8)
    dyn = onnx.load(str(tmp_path / "dyn.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in dyn.graph.initializer}
    out = weight_only_from_dynamic(dyn)
    onnx.checker.check_model(out)
    ops = {n.op_type for n in out.graph.node}
    assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"} and "DequantizeLinear" in ops
    assert not _batch_invariant(tmp_path / "dyn.onnx", np.random.default_rng(4))  # why: per-tensor activation scales
    onnx.save(out, str(tmp_path / "wo.onnx"))
    # the output is float32 arithmetic on exactly the dynamic file's int8 weights
    deq = {k: (inits[f"{k}_quantized"].astype(np.float32) - inits[f"{k}_zero_point"]) * inits[f"{k}_scale"] for k in ("w1", "w2")}
    x = np.random.default_rng(3).standard_normal((1, 20, 64)).astype(np.float32)
    r = np.maximum(x @ deq["w1"] + w["b1"], 0).transpose(0, 2, 1)
    rp = np.pad(r, ((0, 0), (0, 0), (1, 1)))
    y = np.stack([np.einsum("oi k,bi k->bo".replace(" ", ""), deq["w2"], rp[:, :, t : t + 3]) for t in range(r.shape[2])], -1)
    assert np.abs(_run(tmp_path / "wo.onnx", x) - y).max() < 1e-4
    assert _batch_invariant(tmp_path / "wo.onnx", np.random.default_rng(4))


@pytest.mark.parametrize("model", ["asr-stream-synth", "asr-paraformer-synth"])
def test_shipped_models_are_weight_only(model):
    from pathlib import Path

    m = onnx.load(str(Path(__file__).resolve().parents[1] / "models" / model / "model.onnx"))
    ops = {n.op_type for n in m.graph.node}
    assert "DequantizeLinear" in ops and not ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}
