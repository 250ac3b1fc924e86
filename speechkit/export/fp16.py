"""`speechkit export fp16`: a float32 model dir → the same graphs with float16 weights and
arithmetic for GPUs (float32 inputs and outputs, so every runtime engine opens them unchanged),
kept only when each graph's outputs stay within TOLERANCE of the float32 graph's.

The ops that reduce over many values or exponentiate stay float32 (KEEP_FLOAT32). ONNX Runtime's
CPU provider has float16 kernels for few ops (LayerNormalization, data movement): it runs the rest
in float32 behind inserted Casts, so a float16 graph gains nothing on a CPU, and a CPU run of it
does not exercise float16 arithmetic. The CPU check therefore runs an emulation instead: the
float32 arithmetic of every op with its float16 weights and every float16 output rounded to
float16, which is what a GPU stores between ops (within-op accumulation is not emulated).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from speechkit.errors import SpeechkitError

TOLERANCE = 0.02  # max |Δ| / max |float32| of every float output
# sums over many values overflow or lose the small terms in float16 (layer-norm moments, L2 norms,
# CIF's running sum), exp/log/pow overflow or lose range, and sin/cos/range of positions need more
# than float16's 11 bits once positions reach the thousands
KEEP_FLOAT32 = ("Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "ReduceSum",
                "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "CumSum", "Sin", "Cos", "Range")
BATCH, FRAMES = 2, 64  # dynamic dims of the check's inputs: the first axis, any other
DESCRIBED = ("export.json", "card.json", "README.md", "fp16.json")  # rewritten for the float16 copy, not copied


def convert_graph(model: onnx.ModelProto, keep: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Float16 weights and arithmetic, float32 inputs and outputs, ``compute=float16`` in the
    metadata (the rest kept); ``KEEP_FLOAT32`` and ``keep`` op types stay float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    if any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        raise SpeechkitError("int8 weights (DequantizeLinear) cannot become float16: export without --int8 first")
    meta = {p.key: p.value for p in model.metadata_props}
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(KEEP_FLOAT32) | set(keep))
    out = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    del out.metadata_props[:]
    for k, v in {**meta, "compute": "float16"}.items():
        out.metadata_props.add(key=k, value=v)
    return out


def emulate_on_float32(model16: onnx.ModelProto) -> onnx.ModelProto:
    """The float16 graph as float32 arithmetic that rounds every float16 weight and op output to
    float16 (a Cast pair after it): what the check runs where float16 kernels are missing."""
    inferred = onnx.shape_inference.infer_shapes(model16)
    g = inferred.graph
    half = {v.name for v in list(g.value_info) + list(g.output) if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    nodes = []
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT16:
            name, t.name = t.name, t.name + "/fp16"
            nodes.append(helper.make_node("Cast", [t.name], [name], to=TensorProto.FLOAT))
    for node in g.node:
        for a in node.attribute:  # Constant / ConstantOfShape values: float32, then rounded below
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
                half.update(node.output)
        rounded = []
        for i, o in enumerate(node.output):
            if o not in half:
                continue
            if node.op_type == "Cast":  # a Cast to float16 rounds; its reader gets float32
                node.output[i] = o + "/fp16"
                rounded.append(helper.make_node("Cast", [o + "/fp16"], [o], to=TensorProto.FLOAT))
            else:
                node.output[i] = o + "/fp32"
                rounded += [helper.make_node("Cast", [o + "/fp32"], [o + "/fp16"], to=TensorProto.FLOAT16),
                            helper.make_node("Cast", [o + "/fp16"], [o], to=TensorProto.FLOAT)]
        nodes += [node, *rounded]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return inferred


def check_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the graph's declared shapes (dynamic dims: BATCH first, else FRAMES): random data,
    zero cache states, lengths of the full time axis, the metadata's first attention context,
    token ids below the vocabulary."""
    meta = {p.key: p.value for p in model.metadata_props}
    rng = np.random.default_rng(seed)
    feeds, frames, batch = {}, FRAMES, None
    for i in model.graph.input:
        t = i.type.tensor_type
        batch = batch or t.shape.dim[0].dim_param
        # a waveform input (a codec encoder's "wav"): whole hops; any other time axis is in frames
        length = FRAMES * int(meta.get("hop", 1)) if i.name == "wav" else FRAMES
        shape = [d.dim_value if d.HasField("dim_value") else (BATCH if d.dim_param == batch else length) for d in t.shape.dim]
        if not feeds and len(shape) > 1:
            frames = shape[1]
        state = "cache" in i.name or i.name.startswith("unused_")
        if t.elem_type == TensorProto.FLOAT:
            feeds[i.name] = np.zeros(shape, np.float32) if state else rng.standard_normal(shape).astype(np.float32)
        elif t.elem_type != TensorProto.INT64:
            raise SpeechkitError(f"fp16 check: input {i.name!r} has element type {t.elem_type}, not float32 or int64")
        elif i.name == "att_context":
            ctx = meta.get("att_context") or meta["att_contexts"].split(";")[0]
            feeds[i.name] = np.array([int(v) for v in ctx.split(",")], np.int64)
        elif i.name.endswith("lens") and not state:
            feeds[i.name] = np.full(shape, frames, np.int64)
        elif i.name == "y" and "vocab_size" in meta:
            feeds[i.name] = rng.integers(0, int(meta["vocab_size"]), shape).astype(np.int64)
        else:
            feeds[i.name] = np.zeros(shape, np.int64)
    return feeds


def _compare(names: list[str], ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """Per output: max |Δ| / max |ref| for floats, the share of equal elements for integers (only
    lengths must match: argmax tokens of random inputs flip at near-ties)."""
    out = {}
    for name, a, b in zip(names, ref, got):
        if a.shape != b.shape:
            out[name] = {"shape": list(b.shape), "float32_shape": list(a.shape), "ok": False}
        elif a.dtype.kind == "f":
            rel = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) if a.size else 0.0
            out[name] = {"rel_max_abs_diff": rel, "ok": bool(rel <= TOLERANCE)}
        else:
            same = float(np.mean(a == b)) if a.size else 1.0
            out[name] = {"same_share": same, "ok": bool(same == 1.0 or not name.endswith(("len", "lens")))}
    return out


def _float_ops(model: onnx.ModelProto, elem_type: int) -> dict[str, str]:
    """Node name → op type of the nodes with an ``elem_type`` output (by ONNX shape inference)."""
    g = onnx.shape_inference.infer_shapes(model).graph
    typed = {v.name for v in list(g.value_info) + list(g.output) if v.type.tensor_type.elem_type == elem_type}
    return {n.name: n.op_type for n in g.node if n.op_type != "Cast" and any(o in typed for o in n.output)}


def cpu_float32_ops(path: str | Path) -> list[str]:
    """The op types of a float16 graph that ONNX Runtime's CPU provider runs in float32 (it wraps
    the nodes it has no float16 kernel for in Casts)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.optimized_model_filepath = str(Path(path).with_suffix(".cpu.onnx"))
    opts.log_severity_level = 3  # not a warning per float16 node it cannot constant-fold
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ran = onnx.load(opts.optimized_model_filepath)
    finally:
        Path(opts.optimized_model_filepath).unlink(missing_ok=True)
    half = _float_ops(onnx.load(str(path)), TensorProto.FLOAT16)
    single = _float_ops(ran, TensorProto.FLOAT)
    return sorted({op for name, op in half.items() if name in single})


def check_graph(fp32_path: str | Path, fp16_path: str | Path, device: str = "cpu") -> dict:
    """The float16 graph against the float32 one on :func:`check_inputs`: on a GPU the real graph;
    on the CPU the float16 emulation (and the real graph as ONNX Runtime's CPU runs it)."""
    import onnxruntime as ort

    from speechkit.runtime.session import make_session

    model32 = onnx.load(str(fp32_path))
    feeds = check_inputs(model32)
    names = [o.name for o in model32.graph.output]
    ref = make_session(fp32_path, device=device).run(names, feeds)
    report = {"device": device, "tolerance": f"max |Δ| / max |float32| <= {TOLERANCE} per float output, equal lengths"}
    if device == "cpu":
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the rounding Casts
        emulated = ort.InferenceSession(emulate_on_float32(onnx.load(str(fp16_path))).SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
        report["outputs"] = _compare(names, ref, emulated.run(names, feeds))
        quiet = ort.SessionOptions()
        quiet.log_severity_level = 3  # not a warning per float16 node the CPU cannot constant-fold
        real = ort.InferenceSession(str(fp16_path), quiet, providers=["CPUExecutionProvider"])
        report["cpu_run"] = _compare(names, ref, real.run(names, feeds))
        report["cpu_float32_ops"] = cpu_float32_ops(fp16_path)
        report["checked"] = ("float16 emulated on the CPU (float16 weights and op outputs, float32 arithmetic inside "
                             "each op); float16 kernels themselves unchecked: check with --device cuda")
    else:
        report["outputs"] = _compare(names, ref, make_session(fp16_path, device=device).run(names, feeds))
        report["checked"] = f"float16 graph run on {device}"
    report["ok"] = all(r["ok"] for part in ("outputs", "cpu_run") for r in report.get(part, {}).values())
    return report


def export_fp16(model_dir: str | Path, out_dir: str | Path, device: str = "cpu", keep: tuple[str, ...] = ()) -> dict:
    """Every ``*.onnx`` of ``model_dir`` → float16 in ``out_dir`` with the dir's other files,
    ``fp16.json`` (per-graph parity) and an export.json (card.json, README.md where the dir has
    them) that says float16; nothing is left in ``out_dir`` unless every graph passes."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    graphs = sorted(model_dir.glob("*.onnx"))
    if not graphs:
        raise SpeechkitError(f"{model_dir}: no *.onnx graphs to convert")
    if out_dir.resolve() == model_dir.resolve():
        raise SpeechkitError(f"{out_dir}: write the float16 graphs to another dir than the float32 ones")
    converted = {}
    for p in graphs:  # every refusal before anything is written
        try:
            converted[p.name] = convert_graph(onnx.load(str(p)), keep)
        except SpeechkitError as e:
            raise SpeechkitError(f"{p}: {e}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written, report = [], {"keep_float32": sorted(set(KEEP_FLOAT32) | set(keep)), "graphs": {}}
    try:
        for name, model in converted.items():
            tmp = out_dir / f"{name}.tmp"
            written.append(tmp)
            onnx.save(model, str(tmp))
            check = check_graph(model_dir / name, tmp, device)
            check["fp32_mb"], check["fp16_mb"] = round((model_dir / name).stat().st_size / 1e6, 3), round(tmp.stat().st_size / 1e6, 3)
            report["graphs"][name] = check
            if not check["ok"]:
                worst = {o: r for part in ("outputs", "cpu_run") for o, r in check.get(part, {}).items() if not r["ok"]}
                raise SpeechkitError(f"{model_dir / name}: float16 disagrees with float32 on {device} ({worst}; "
                                     f"tolerance {TOLERANCE}); add the op types to --keep or ship float32")
        for name in converted:
            (out_dir / f"{name}.tmp").replace(out_dir / name)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    for p in model_dir.iterdir():
        if p.is_dir():
            shutil.copytree(p, out_dir / p.name, dirs_exist_ok=True)
        elif p.suffix != ".onnx" and p.name not in DESCRIBED:
            shutil.copy(p, out_dir / p.name)
    (out_dir / "fp16.json").write_text(json.dumps(report, indent=1) + "\n")
    source = model_dir / "export.json"
    info = json.loads(source.read_text()) if source.is_file() else {}
    (out_dir / "export.json").write_text(json.dumps(fp16_export_info(info, model_dir, report), indent=1) + "\n")
    if (model_dir / "card.json").is_file():
        card = json.loads((model_dir / "card.json").read_text())
        card.update(weights="fp16", compute="float16", fp16_of=str(model_dir),
                    fp16_note="training and results are the source's (float32 arithmetic); the float16 parity is in fp16.json")
        (out_dir / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    if (model_dir / "README.md").is_file():
        (out_dir / "README.md").write_text(readme_note(model_dir, report) + (model_dir / "README.md").read_text())
    return report


def fp16_export_info(info: dict, model_dir: Path, report: dict) -> dict:
    """The float32 dir's export.json ``info`` for its float16 copy: ``weights`` fp16 (the key the
    int8 and audiogen exports use) and ``compute`` float16, the float16 graphs' sizes in place of
    the float32 ones, and ``fp16``: the source dir, the ops kept float32 and each graph's parity
    (fp16.json has it in full). The other keys, ``parity`` among them, are the float32 export's."""
    graphs = report["graphs"]
    kept = {k: v for k, v in info.items() if not k.endswith("_mb")}
    worst = {name: max((r["rel_max_abs_diff"] for r in g["outputs"].values() if "rel_max_abs_diff" in r), default=0.0)
             for name, g in graphs.items()}
    return {**kept, "weights": "fp16", "compute": "float16",
            "sizes_mb": {name: g["fp16_mb"] for name, g in graphs.items()},
            "size_mb": round(sum(g["fp16_mb"] for g in graphs.values()), 3),
            "fp16": {"source": str(model_dir), "source_weights": info.get("weights", "fp32"),
                     "keep_float32": report["keep_float32"], "ok": all(g["ok"] for g in graphs.values()),
                     "tolerance": TOLERANCE, "rel_max_abs_diff": worst,
                     "checked": {name: g["checked"] for name, g in graphs.items()}, "report": "fp16.json"}}


def readme_note(model_dir: Path, report: dict) -> str:
    """The lines put above the float32 dir's README.md in its float16 copy."""
    return (f"> **Float16 copy** of `{model_dir}` (`speechkit export fp16`): float16 weights and arithmetic "
            f"behind float32 inputs and outputs, for GPUs; {', '.join(report['keep_float32'])} stay float32. "
            f"Parity against the source's graphs: `fp16.json`. The rest of this file describes the source "
            f"(float32 arithmetic); its figures were not measured again in float16.\n\n")
