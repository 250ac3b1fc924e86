"""egs/synth/asr/local/onnx_to_checkpoint.py: a shipped streaming CTC graph (float32, or with
int8 weights) back into the model's state dict, so that a shipped model can be fine-tuned."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import tiny_paraformer_config
from speechkit.export.paraformer import export_paraformer
from speechkit.export.quantize import quantize_weights_int8
from speechkit.export.streaming_asr import export_streaming_ctc
from speechkit.models.asr.heads import build_asr_model
from speechkit.runtime.session import cpu_session
from speechkit.text.tokenizer import CharTokenizer
from speechkit.train.asr import build_model
from speechkit.train.config import load_experiment_config

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "synth" / "asr"


def _script():
    spec = importlib.util.spec_from_file_location("onnx_to_checkpoint", RECIPE / "local" / "onnx_to_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("o2c")
    cfg = load_experiment_config(RECIPE / "conf" / "train_cpu.yaml")
    torch.manual_seed(0)
    model = build_model(cfg, 12).eval()
    rng = np.random.default_rng(0)  # a trained model's cmvn is not the identity
    model.cmvn.set_stats(rng.standard_normal(80).astype(np.float32), rng.uniform(0.5, 1.5, 80).astype(np.float32))
    export_streaming_ctc(model, d / "fp32.onnx", {"model_family": "ctc-streaming-conformer"})
    q = quantize_weights_int8(onnx.load(str(d / "fp32.onnx")), min_elements=64)
    onnx.save(q, str(d / "int8.onnx"))
    return cfg, model, d


def test_scope_path_collapses_sequential_children():
    mod = _script()
    assert mod.scope_path("/blocks.0/ff1/net/net.0/MatMul_quant_float") == "blocks.0.ff1.net.0"
    assert mod.scope_path("/ctc/MatMul") == "ctc"


def test_float32_graph_gives_the_weights_back_exactly(exported):
    cfg, model, d = exported
    own = model.state_dict()
    state = _script().recover(d / "fp32.onnx", build_model(cfg, 12).state_dict())
    assert set(state) == set(own)
    for k, v in own.items():
        assert torch.equal(state[k], v), k


def test_int8_graph_gives_the_weights_the_runtime_computes_with(exported, tmp_path):
    cfg, model, d = exported
    own = model.state_dict()
    state = _script().recover(d / "int8.onnx", build_model(cfg, 12).state_dict())
    moved = [k for k in own if not torch.equal(state[k], own[k])]
    assert len(moved) > 10  # the quantized ones, within half a step of the float weights
    for k in moved:
        assert (state[k] - own[k]).abs().max() <= own[k].abs().max() / 127 * 0.51, k
    # the recovered model, exported as float32, computes what the int8 graph computes
    back = build_model(cfg, 12).eval()
    back.load_state_dict(state)
    export_streaming_ctc(back, tmp_path / "back.onnx", {"model_family": "ctc-streaming-conformer"})
    rng = np.random.default_rng(0)
    a, b = cpu_session(d / "int8.onnx"), cpu_session(tmp_path / "back.onnx")
    feed = {i.name: np.zeros([2 if s in ("B", None) or isinstance(s, str) else s for s in i.shape],
                             np.float32 if "float" in i.type else np.int64) for i in a.get_inputs()}
    feed["x"] = rng.standard_normal(feed["x"].shape).astype(np.float32)
    feed["x_lens"][:] = feed["x"].shape[1]
    feed["att_context"] = np.array(model.encoder.cfg.streamable()[0], np.int64)
    la, lb = a.run(None, feed)[0], b.run(None, feed)[0]
    assert np.abs(la - lb).max() < 1e-4


def test_another_config_is_one_line(exported, tmp_path):
    _, _, d = exported
    other = build_model(load_experiment_config(RECIPE / "conf" / "train_stream_gpu.yaml"), 12).state_dict()
    with pytest.raises(SystemExit, match="another config"):
        _script().recover(d / "fp32.onnx", other)


def test_recipe_tokenizer_stage_of_a_finetuning_config_copies_the_init_tokens(tmp_path, run_cli):
    """run.sh's stage 3 runs before training makes the exp dir; with init_checkpoint it must copy
    the init's tokens there (it used to fail: no such file)."""
    import yaml

    init = tmp_path / "init"
    init.mkdir()
    chars = ["<blk>", "<unk>", "z", "y", "x", " "]  # an order no tokenizer trained on the text would give
    (init / "tokens.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(chars)))
    cfg = yaml.safe_load((RECIPE / "conf" / "finetune_real_cpu.yaml").read_text())
    cfg["train_conf"]["init_checkpoint"] = str(init / "model.pt")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "text").write_text("u1 abc\nu2 xyz\n")
    rc, out, err = run_cli("tokenizer", "--config", tmp_path / "ft.yaml", "--text", tmp_path / "text",
                           "--exp-dir", tmp_path / "new" / "exp")
    assert rc == 0, err
    assert (tmp_path / "new" / "exp" / "tokens.txt").read_text() == (init / "tokens.txt").read_text()


def test_a_new_head_with_another_tokenizer_gets_its_own(tmp_path, run_cli):
    """init_checkpoint from a char model, the config asks for BPE (a new head on the trained
    encoder): the run trains its BPE model instead of copying the init's characters."""
    import itertools

    import yaml

    from speechkit.text.sentences import iter_sentences

    init = tmp_path / "init"
    init.mkdir()
    (init / "tokens.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(["<blk>", "<unk>", "a", "b", " "])))
    cfg = yaml.safe_load((RECIPE / "conf" / "finetune_real_cpu.yaml").read_text())
    cfg["train_conf"]["init_checkpoint"] = str(init / "model.pt")
    cfg["train_conf"]["init_modules"] = ["cmvn", "encoder"]
    cfg["tokenizer_conf"] = {"type": "bpe", "vocab_size": 60}
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    sentences = itertools.islice(iter_sentences(3, "train"), 200)
    (tmp_path / "text").write_text("".join(f"u{i:03d} {t}\n" for i, t in enumerate(sentences)))
    rc, out, err = run_cli("tokenizer", "--config", tmp_path / "ft.yaml", "--text", tmp_path / "text",
                           "--exp-dir", tmp_path / "exp")
    assert rc == 0, err
    assert (tmp_path / "exp" / "bpe.model").is_file() and not (tmp_path / "exp" / "tokens.txt").exists()


def test_paraformer_graph_comes_back_with_its_training_only_table_from_the_output_layer(tmp_path):
    """A Paraformer graph has no glancing-sampler token table and no CTC layer: fine-tuning configs
    set ctc_weight 0, and the table starts as the output layer's rows."""
    cfg = tiny_paraformer_config(ctc_weight=0.0)
    tok = CharTokenizer(["<blk>", "<unk>", "\u2581", "a", "b", "c"])
    torch.manual_seed(0)
    model = build_asr_model(cfg.model, tok.vocab_size, tok).eval()
    export_paraformer(model, tmp_path / "p.onnx", {"model_family": "paraformer"})
    torch.manual_seed(1)
    fresh = build_asr_model(cfg.model, tok.vocab_size, tok).state_dict()
    state = _script().recover(tmp_path / "p.onnx", fresh)
    own = model.state_dict()
    assert set(state) == set(own) and not any(k.startswith("ctc.") for k in own)
    assert torch.equal(state["decoder.embed.weight"], own["decoder.out.weight"])
    for k, v in own.items():
        if k != "decoder.embed.weight":
            assert torch.equal(state[k], v), k
    # with a CTC layer in the config the graph lacks it: a one-line error naming it
    with pytest.raises(SystemExit, match="no tensor for ctc"):
        _script().recover(tmp_path / "p.onnx", build_asr_model(tiny_paraformer_config(ctc_weight=0.3).model, tok.vocab_size, tok).state_dict())
