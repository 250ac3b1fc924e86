"""Text-to-music → ONNX (``speechkit/export/audiogen.py``) on tiny random MAGNeT and AR models and a
tiny random RVQ codec at 50 frames/s: the folder and its report, every graph agrees with PyTorch
and every mode's generation gives PyTorch's tokens (and both checks fail on another model), fp16
and int8 files, one-line export errors. The runtime's own tests: ``test_audiogen_runtime.py``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.errors import SpeechkitError
from speechkit.runtime.codec import CodecRuntime

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTIONS = ["calm piano in c major at 90 bpm", "upbeat rock with drums, bass and guitar!", "sad jazz", "happy folk song"]
HOP, CARD, K = 320, 16, 3


def _codec(root: Path) -> tuple[Path, Path]:
    """A random RVQ codec (50 frames/s, 4 codebooks of 16; k-means on noise), saved as an
    experiment and exported → (experiment dir, export dir)."""
    from speechkit.export.codec import export_codec
    from speechkit.models.codec.io import save_codec
    from speechkit.models.codec.model import CodecConfig, RvqConfig, build_codec
    from speechkit.nn.seanet import SeanetConfig

    torch.manual_seed(0)
    cfg = CodecConfig("rvq", encoder_conf=SeanetConfig(channels=2, strides=(2, 4, 5, 8), latent_dim=8, dilations=(1,)),
                      rvq_conf=RvqConfig(n_q=4, codebook_size=CARD))
    codec = build_codec(cfg)
    codec(torch.randn(2, 1, HOP * 20) * 0.1)  # k-means initialises the codebooks
    codec.eval()
    (root / "codec_exp").mkdir()
    save_codec(codec.state_dict(), cfg, root / "codec_exp" / "model.pt")
    export_codec(codec, root / "codec", [np.random.default_rng(0).standard_normal(HOP * 8).astype(np.float32) * 0.1])
    return root / "codec_exp", root / "codec"


def _models(root: Path, codec: Path) -> tuple[Path, Path]:
    """Tiny MAGNeT and AR models saved as trained ones (the same caption vocabulary)."""
    from speechkit.models.audiogen.config import DelayArConfig, MagnetConfig, TextEncoderConfig
    from speechkit.models.audiogen.io import build_model, save_audiogen
    from speechkit.models.audiogen.text import CaptionTokenizer

    tok = CaptionTokenizer.build(CAPTIONS)
    text = TextEncoderConfig(vocab_size=len(tok), layers=1, heads=2, ff=64, max_tokens=8)
    tokens = {"codec": str(codec), "codebooks": K, "frame_rate": 50.0, "sample_rate": 16000}
    paths = []
    for kind, cfg in (("magnet", MagnetConfig(codebooks=K, card=CARD, d_model=32, layers=2, heads=2, ff=64, text=text, window=2,
                                              max_frames=300, dropout=0.0)),
                      ("ar", DelayArConfig(codebooks=K, card=CARD, d_model=32, layers=2, heads=2, ff=64, text=text,
                                           max_frames=250, dropout=0.0))):
        torch.manual_seed(1)
        (root / kind).mkdir()
        save_audiogen(build_model(kind, cfg).state_dict(), kind, cfg, tok, tokens, root / kind / "model.pt")
        paths.append(root / kind)
    return paths[0], paths[1]


def build(root: Path) -> dict:
    """The tiny models, exported with float32 weights (both models) and MAGNeT alone (fp16), on
    one torch thread (a module fixture runs before ``one_thread``)."""
    from speechkit.export.audiogen import export_audiogen

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        codec_exp, codec = _codec(root)
        magnet, ar = _models(root, codec)
        info = export_audiogen(magnet, root / "onnx", ar=ar, weights="fp32")  # the codec from MAGNeT's token provenance
        alone = export_audiogen(magnet, root / "magnet_only", codec=codec_exp)  # fp16; the codec exported from its experiment
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "magnet": magnet, "ar": ar, "codec": codec, "onnx": root / "onnx", "info": info,
            "magnet_only": root / "magnet_only", "alone": alone}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("audiogen"))


def torch_models(built):
    from speechkit.models.audiogen.io import load_audiogen

    magnet, tok, _ = load_audiogen(built["magnet"])
    ar, ar_tok, _ = load_audiogen(built["ar"])
    return magnet, tok, ar, ar_tok


# ---- export -------------------------------------------------------------------------------------

def test_export_writes_every_graph_and_a_report(built):
    out, info = built["onnx"], built["info"]
    for name in ("text.onnx", "magnet.onnx", "ar_text.onnx", "ar_step.onnx", "ar_score.onnx", "ar_weights.bin", "audiogen.json",
                 "export.json", "codec/decoder.onnx", "codec/codebooks.npy"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".export-*"))  # the staging folder is gone
    cfg = json.loads((out / "audiogen.json").read_text())
    assert cfg["model_family"] == "audiogen" and cfg["codebooks"] == K and cfg["card"] == CARD
    assert cfg["frame_rate"] == 50.0 and cfg["sample_rate"] == 16000 and cfg["max_frames"] == 300 and cfg["ar_max_frames"] == 250
    assert cfg["words"][:2] == ["<pad>", "<unk>"] and "piano" in cfg["words"] and cfg["ar_words"] == cfg["words"]
    assert cfg["decoding"]["magnet"]["steps"] == [20, 10, 10] and cfg["weights"] == "fp32" and cfg["codec"] == "codec"
    p = info["parity"]
    assert set(p["fp32"]) == {"text_states", "magnet_logits", "text_keys", "text_values", "ar_step_logits", "ar_cache", "ar_score_logp"}
    assert all(row["max_abs_diff"] < 1e-4 for row in p["fp32"].values())
    assert p["fp32_generation_token_agreement"] == {"magnet": 1.0, "magnet_rescore": 1.0, "ar": 1.0, "hybrid": 1.0}
    # the AR step and scorer keep one copy of the weights: their own files hold almost none
    assert p["ar_shared_weights"]["bytes_saved"] > 0.9 * p["ar_shared_weights"]["bytes"]
    assert info["sizes_mb"]["ar_step.onnx"] < 0.6 * p["fp32_sizes_mb"]["ar_step.onnx"]
    alone = json.loads((built["magnet_only"] / "audiogen.json").read_text())
    assert alone["graphs"] == ["text.onnx", "magnet.onnx"] and alone["weights"] == "fp16" and "ar_words" not in alone
    assert not (built["magnet_only"] / "ar_step.onnx").exists() and (built["magnet_only"] / "codec" / "decoder.onnx").is_file()
    for folder in (out, built["magnet_only"]):  # the codec travels decoder-only, from an export or an experiment
        assert sorted(f.name for f in (folder / "codec").iterdir()) == ["codebooks.npy", "decoder.onnx", "export.json"]
    with pytest.raises(SpeechkitError, match="decoder-only codec"):
        CodecRuntime(out / "codec").encode(np.zeros(1600, np.float32))
    fp16 = built["alone"]["parity"]["fp16"]
    assert all(row["rel_err"] < 5e-3 for row in fp16.values()) and fp16["magnet_logits"]["argmax_agreement"] > 0.95
    assert built["alone"]["sizes_mb"]["magnet.onnx"] < 0.8 * built["alone"]["parity"]["fp32_sizes_mb"]["magnet.onnx"]


def test_parity_checks_fail_on_a_different_model(built):
    """The same graphs against a torch model with one weight changed: the graph check and the
    generation check both notice."""
    from speechkit.export.audiogen import _within, compare_generation, compare_graphs
    from speechkit.runtime.audiogen import MusicGraphs

    magnet, tok, ar, ar_tok = torch_models(built)
    graphs = MusicGraphs(built["onnx"], tok.words, ar_tok.words)
    captions = CAPTIONS[:2]
    assert compare_generation(magnet, ar, graphs, captions, tok, ar_tok)["hybrid"] == 1.0
    other_ar = copy.deepcopy(ar)
    with torch.no_grad():
        other_ar.blocks[1].ff[2].bias += 0.5
    rows = compare_graphs(magnet, other_ar, graphs, captions, tok, ar_tok)
    assert rows["magnet_logits"]["max_abs_diff"] < 1e-4 and rows["ar_step_logits"]["max_abs_diff"] > 1e-2
    with pytest.raises(SpeechkitError, match="ar_step_logits") as e:
        _within(rows, "a changed model")
    assert "\n" not in str(e.value)
    same = compare_generation(magnet, other_ar, graphs, captions, tok, ar_tok)
    assert same["magnet"] == 1.0 and same["ar"] < 1.0


def test_int8_export_is_smaller_and_close(built, tmp_path):
    from speechkit.export.audiogen import export_audiogen
    from speechkit.runtime.audiogen import MusicGenerator

    info = export_audiogen(built["magnet"], tmp_path / "int8", codec=built["codec"], ar=built["ar"], weights="int8")
    rows = info["parity"]["int8"]
    assert all(row["rel_err"] < 0.05 for row in rows.values()), rows
    assert rows["magnet_logits"]["argmax_agreement"] > 0.9 and rows["ar_step_logits"]["argmax_agreement"] > 0.9
    assert set(info["parity"]["int8_generation_token_agreement"]) == {"magnet", "magnet_rescore", "ar", "hybrid"}
    assert info["graphs_mb"] < 0.8 * built["info"]["graphs_mb"]  # tiny: most tensors are below the size that is quantized
    clips = MusicGenerator(tmp_path / "int8").generate(CAPTIONS[:1], 0.2, mode="hybrid", steps=[2, 1, 1])
    assert len(clips[0]) == 10 * HOP and np.isfinite(clips[0]).all()


def test_export_errors_are_one_line(built, tmp_path):
    from speechkit.export.audiogen import export_audiogen
    from speechkit.models.codec.model import CodecConfig, RvqConfig, build_codec
    from speechkit.export.codec import export_codec
    from speechkit.nn.seanet import SeanetConfig

    torch.manual_seed(0)
    big = build_codec(CodecConfig("rvq", encoder_conf=SeanetConfig(channels=2, strides=(2, 4, 5, 8), latent_dim=8, dilations=(1,)),
                                  rvq_conf=RvqConfig(n_q=4, codebook_size=32)))
    big(torch.randn(2, 1, HOP * 40) * 0.1)
    export_codec(big.eval(), tmp_path / "codec32", [np.random.default_rng(0).standard_normal(HOP * 8).astype(np.float32) * 0.1])
    cases = [
        (lambda: export_audiogen(built["magnet"], tmp_path / "a", weights="int4"), "unknown weights"),
        (lambda: export_audiogen(built["ar"], tmp_path / "b"), "a ar model where a magnet model"),
        (lambda: export_audiogen(built["magnet"], tmp_path / "c", ar=built["magnet"]), "a magnet model where a ar model"),
        (lambda: export_audiogen(built["magnet"], tmp_path / "d", codec=tmp_path / "codec32"), "codebooks of 32"),
        (lambda: export_audiogen(built["magnet"], tmp_path / "e", codec=tmp_path / "nothing"), "neither a codec export"),
    ]
    for case, words in cases:
        with pytest.raises(SpeechkitError, match=words) as e:
            case()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "d" / "magnet.onnx").exists()  # a failed export leaves no graph behind
