"""What `export` promises beyond parity: an int8 model is kept only when it gives the float32
graph's tokens (streaming: most chunks; Paraformer: a small token error rate), and a codec export
that fails its parity check leaves no graph behind."""

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_data_dir, make_tiny_exp_dir
from speechkit.errors import SpeechkitError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def streaming_exp(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    utts = make_tiny_data_dir(root / "data", n_utts=4, seed=3)
    return make_tiny_exp_dir(root / "exp", [u.text for u in utts], seed=1, streaming=True), root / "data"


def test_int8_export_reports_its_agreement_with_float32(streaming_exp, tmp_path):
    from speechkit.cli import main

    exp, data = streaming_exp
    assert main(["export", "onnx", str(exp), str(tmp_path / "m"), "--check-data", str(data), "--int8"]) == 0
    info = json.loads((tmp_path / "m" / "export.json").read_text())
    check = info["int8_check"]
    assert info["int8"] and check["chunks"] >= 9 and check["same_token_chunks"] >= 0.9
    assert sorted(p.name for p in (tmp_path / "m").glob("*.onnx")) == ["model.onnx"]


def test_int8_that_changes_the_tokens_is_refused_and_not_kept(streaming_exp, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    import speechkit.export.quantize as quantize
    from speechkit.export.experiment import export_exp_dir
    from speechkit.cli import _check_utterances

    real = quantize.quantize_weights_int8

    def scrambled(model, **kw):  # int8 weights with their signs flipped at random: a broken quantiser
        q = real(model, **kw)
        rng = np.random.default_rng(0)
        for init in q.graph.initializer:
            if init.name.endswith("_int8"):
                w = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array((w * rng.choice([-1, 1], w.shape)).astype(np.int8), init.name))
        return q

    monkeypatch.setattr(quantize, "quantize_weights_int8", scrambled)
    exp, data = streaming_exp
    with pytest.raises(SpeechkitError, match="int8 model disagrees"):
        export_exp_dir(exp, tmp_path / "m", _check_utterances(str(data), 3, 16000), int8=True)
    assert not list((tmp_path / "m").glob("*.onnx"))


def _tiny_codec():
    from speechkit.models.codec.model import CodecConfig, build_codec
    from speechkit.nn.seanet import SeanetConfig

    torch.manual_seed(0)
    enc = SeanetConfig(channels=2, strides=(2, 4, 8, 10), latent_dim=8, dilations=(1,), shortcuts=True)
    return build_codec(CodecConfig("vae", encoder_conf=enc)).eval()


def test_codec_export_that_fails_parity_leaves_no_graph(tmp_path, monkeypatch):
    import speechkit.export.codec as ec

    wav = [np.random.default_rng(0).standard_normal(4 * 640).astype(np.float32) * 0.1]
    ec.export_codec(_tiny_codec(), tmp_path / "ok", wav)
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["decoder.onnx", "encoder.onnx", "export.json"]
    monkeypatch.setattr(ec, "AUDIO_TOL", -1.0)  # no graph can pass
    with pytest.raises(SpeechkitError, match="disagree"):
        ec.export_codec(_tiny_codec(), tmp_path / "bad", wav)
    assert list((tmp_path / "bad").iterdir()) == []
