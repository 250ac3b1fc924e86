"""`speechkit export fp16`: float16 weights behind float32 inputs and outputs, the metadata kept,
int8 dirs refused, a graph over the tolerance not kept, and the same tokens as float32 where the
CPU can run the float16 graph."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from conftest import make_tiny_data_dir, make_tiny_exp_dir
from speechkit.errors import SpeechkitError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny streaming CTC model exported as float32, then converted by the CLI."""
    from speechkit.cli import main

    root = tmp_path_factory.mktemp("fp16")
    utts = make_tiny_data_dir(root / "data", n_utts=3, seed=3)
    exp = make_tiny_exp_dir(root / "exp", [u.text for u in utts], seed=1, streaming=True)
    assert main(["export", "onnx", str(exp), str(root / "fp32"), "--check-data", str(root / "data"), "--check-utts", "1"]) == 0
    assert main(["export", "fp16", str(root / "fp32"), str(root / "fp16")]) == 0
    return root, utts


def test_float32_io_float16_weights_metadata_kept(exported):
    root, _ = exported
    a, b = (onnx.load(str(root / d / "model.onnx")) for d in ("fp32", "fp16"))
    io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in list(m.graph.input) + list(m.graph.output)]
    assert io(b) == io(a) and TensorProto.FLOAT in dict(io(b)).values()
    inits = {t.name: t.data_type for t in b.graph.initializer}
    weights = [n.input[1] for n in b.graph.node if n.op_type in ("MatMul", "Conv") and n.input[1] in inits]
    assert weights and all(inits[w] == TensorProto.FLOAT16 for w in weights)
    meta_a, meta_b = ({p.key: p.value for p in m.metadata_props} for m in (a, b))
    assert meta_b == {**meta_a, "compute": "float16"} and meta_a["model_family"] == "ctc-streaming-conformer"
    assert (root / "fp16" / "tokens.txt").read_text() == (root / "fp32" / "tokens.txt").read_text()
    report = json.loads((root / "fp16" / "fp16.json").read_text())["graphs"]["model.onnx"]
    assert report["ok"] and report["device"] == "cpu" and "MatMul" in report["cpu_float32_ops"]
    assert 0 < report["outputs"]["log_probs"]["rel_max_abs_diff"] <= 0.02


def test_metadata_says_float16_and_the_dir_still_opens(exported, tmp_path):
    """export.json, card.json and README.md of the copy describe float16, not the float32 source."""
    import shutil

    import speechkit
    import speechkit.export.fp16 as fp16

    root, _ = exported
    fp32_info = json.loads((root / "fp32" / "export.json").read_text())
    info = json.loads((root / "fp16" / "export.json").read_text())
    assert info["weights"] == "fp16" and info["compute"] == "float16" and info["model_family"] == fp32_info["model_family"]
    assert info["parity"] == fp32_info["parity"] and info["size_mb"] < fp32_info["size_mb"]
    assert info["size_mb"] == round((root / "fp16" / "model.onnx").stat().st_size / 1e6, 3)
    f = info["fp16"]
    assert f["source"] == str(root / "fp32") and f["source_weights"] == "fp32" and f["report"] == "fp16.json"
    assert f["ok"] and "Softmax" in f["keep_float32"] and 0 < f["rel_max_abs_diff"]["model.onnx"] <= f["tolerance"]
    assert type(speechkit.load(root / "fp16")).__name__ == "StreamingAsr"

    src = tmp_path / "src"
    shutil.copytree(root / "fp32", src)
    (src / "README.md").write_text("# a float32 model\n")
    (src / "card.json").write_text(json.dumps({"name": "tiny", "format": "float32 ONNX"}))
    fp16.export_fp16(src, tmp_path / "out")
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["weights"] == "fp16" and card["compute"] == "float16" and card["fp16_of"] == str(src)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert readme.startswith("> **Float16 copy**") and readme.endswith("# a float32 model\n")


def test_emulation_rounds_every_op_output_to_float16():
    """The CPU check's graph is float32 arithmetic with float16 rounding after each op, not the
    float32 graph again."""
    import onnxruntime as ort
    from onnx import helper

    from speechkit.export.fp16 import convert_graph, emulate_on_float32

    three = numpy_helper.from_array(np.full((1,), 3.0, np.float32), "three")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "three"], ["m"]), helper.make_node("Relu", ["m"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])], [three])
    model = convert_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.array([1.0001, 2.0003, 0.1234567, 1000.3, 3.14159], np.float32)
    y = ort.InferenceSession(emulate_on_float32(model).SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = (x.astype(np.float16).astype(np.float32) * 3).astype(np.float16).astype(np.float32)
    assert np.array_equal(y, want) and not np.array_equal(y, x * 3)


def test_same_tokens_as_float32_on_synthetic_audio(exported):
    from speechkit.audio.fbank import compute_fbank
    from speechkit.audio.io import load_audio
    from speechkit.export.streaming_asr import STATE_NAMES, _chain
    from speechkit.runtime.session import make_session

    root, utts = exported
    meta = {p.key: p.value for p in onnx.load(str(root / "fp32" / "model.onnx")).metadata_props}
    left, right = (int(v) for v in meta["att_contexts"].split(";")[0].split(","))
    outs = {}
    for d in ("fp32", "fp16"):
        session = make_session(root / d / "model.onnx")
        state0 = {i.name: np.zeros([1 if not isinstance(s, int) else s for s in i.shape],
                                   np.int64 if "int64" in i.type else np.float32) for i in session.get_inputs() if i.name in STATE_NAMES}

        def run(x, x_lens, state, session=session):
            o = session.run(None, {"x": x, "x_lens": x_lens, "att_context": np.array([left, right]), **dict(zip(STATE_NAMES, state))})
            return o[0], o[1], o[2:]

        outs[d] = [_chain(run, compute_fbank(load_audio(u.wav, 16000)[0]), 4 * (right + 1), [state0[n] for n in STATE_NAMES])
                   for u in utts]
    for a, b in zip(outs["fp32"], outs["fp16"]):
        assert a.shape == b.shape and np.array_equal(a.argmax(-1), b.argmax(-1))
        assert np.abs(a - b).max() <= 0.02 * np.abs(a).max()


def test_int8_dir_is_refused_in_one_line(run_cli, tmp_path):
    code, _, err = run_cli("export", "fp16", "models/asr-stream-synth", str(tmp_path / "out"))
    assert code == 2 and "export without --int8 first" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_over_the_tolerance_leaves_nothing(exported, tmp_path, monkeypatch):
    import speechkit.export.fp16 as fp16

    root, _ = exported
    monkeypatch.setattr(fp16, "TOLERANCE", 0.0)
    with pytest.raises(SpeechkitError, match="float16 disagrees with float32"):
        fp16.export_fp16(root / "fp32", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_keep_holds_an_op_float32(exported, tmp_path):
    import speechkit.export.fp16 as fp16

    root, _ = exported
    fp16.export_fp16(root / "fp32", tmp_path / "out", keep=("MatMul",))
    m = onnx.load(str(tmp_path / "out" / "model.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    matmul = [n.input[1] for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert matmul and all(numpy_helper.to_array(inits[w]).dtype == np.float32 for w in matmul)
