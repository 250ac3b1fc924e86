"""Weight-only int8 for shipped ONNX files: MatMul, Gemm and Conv weights are stored as int8 with one
scale per output channel and a DequantizeLinear in front; the arithmetic stays float32.

Why not ONNX Runtime's dynamic quantization: it quantizes activations with one scale per tensor,
and that tensor is the whole batch, so a stream's text could change with whatever it happened to
be batched with (a server batching many clients saw 8 of 45 transcripts change). Here the file
is as small (a quarter of float32) and every row of a batch is computed exactly as alone. The
runtime folds the DequantizeLinear nodes into float32 weights once, at load time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_ELEMENTS = 1024  # small tensors (biases, norms, tiny convs) stay float32


def _per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per index along ``axis``."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=reduce) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_weights_int8(model: onnx.ModelProto, min_elements: int = MIN_ELEMENTS) -> onnx.ModelProto:
    """Replace the float32 weight initializers of MatMul (``[K, N]``, a scale per column), Gemm
    (``B``: per column, or per row with ``transB``) and Conv (``[O, I, k...]``, a scale per output
    channel) by int8 + DequantizeLinear, in place."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1 and node.input[1] in inits:
            name = node.input[1]
            if name not in done:
                w = numpy_helper.to_array(inits[name])
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                axis = 0 if node.op_type == "Conv" or trans_b else 1  # the output channels
                if w.dtype != np.float32 or w.size < min_elements or (node.op_type != "Conv" and w.ndim != 2):
                    new_nodes.append(node)
                    continue
                q, scale = _per_channel(w, axis)
                graph.initializer.remove(inits[name])
                graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale")])
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale"], [f"{name}_dequant"],
                                                  axis=axis, name=f"{name}_DequantizeLinear"))
                done[name] = f"{name}_dequant"
            node.input[1] = done[name]
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model


def weight_only_from_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite a graph made by ``onnxruntime.quantization.quantize_dynamic`` (DynamicQuantizeLinear
    → MatMulInteger/ConvInteger → Cast → Mul by the two scales) into float32 MatMul/Conv on its
    own int8 weights behind DequantizeLinear — the same weights, exactly, with batch-independent
    arithmetic. For files shipped before :func:`quantize_weights_int8`."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop, replace, dequantized = set(), {}, set()
    for node in graph.node:
        if node.op_type not in ("MatMulInteger", "ConvInteger"):
            continue
        dql = producer[node.input[0]]
        (cast,) = consumers[node.output[0]]
        (mul,) = consumers[cast.output[0]]
        scales = producer[mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]]
        assert dql.op_type == "DynamicQuantizeLinear" and cast.op_type == "Cast" and mul.op_type == "Mul" and scales.op_type == "Mul"
        w_scale = scales.input[1] if scales.input[0] == dql.output[1] else scales.input[0]
        w_q, w_zp = node.input[1], node.input[3] if len(node.input) > 3 else ""
        dq = helper.make_node("DequantizeLinear", [w_q, w_scale] + ([w_zp] if w_zp else []), [f"{w_q}_dequant"], name=f"{w_q}_DequantizeLinear")
        op = helper.make_node(node.op_type.replace("Integer", ""), [dql.input[0], dq.output[0]], [mul.output[0]], name=f"{node.name or node.output[0]}_float")
        op.attribute.extend(node.attribute)
        replace[id(node)] = ([] if w_q in dequantized else [dq]) + [op]
        dequantized.add(w_q)
        drop.update({id(cast), id(mul), id(scales)})
    kept = []
    for n in graph.node:
        if id(n) in replace:
            kept.extend(replace[id(n)])
        elif id(n) not in drop:
            kept.append(n)
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if n.op_type != "DynamicQuantizeLinear" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    return model


MATRICES = {"MatMul": 1, "Gemm": 1}  # op type -> the input that holds its weight
TABLES = {"Gather": 0}


def weights_to_fp16(model, min_elements: int = MIN_ELEMENTS, ops: dict[str, int] = MATRICES) -> int:
    """Float32 weight initializers of at least ``min_elements`` read by the ``ops`` (op type → the
    input index of its weight: MatMul/Gemm matrices by default, ``TABLES`` for embeddings) →
    float16 initializers behind a Cast to float32 (in place; ONNX Runtime folds the Cast once at
    load). The Cast's output keeps the weight's name, so every reader of it sees float32. Returns
    the number of weights converted."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done, casts = set(), []
    for node in graph.node:
        at = ops.get(node.op_type)
        name = node.input[at] if at is not None and len(node.input) > at else None
        if name not in inits or name in done:
            continue
        w = numpy_helper.to_array(inits[name])
        if w.dtype != np.float32 or w.size < min_elements:
            continue
        graph.initializer.remove(inits[name])
        graph.initializer.append(numpy_helper.from_array(w.astype(np.float16), f"{name}_fp16"))
        casts.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=onnx.TensorProto.FLOAT, name=f"{name}_Cast"))
        done.add(name)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(done)
