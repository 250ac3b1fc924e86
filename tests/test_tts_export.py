"""CLEAR → ONNX and the torch-free TTS runtime, on a tiny random model and a tiny exported VAE
codec: the export's parity check passes and can fail, the runtime's loop equals the torch loop
fed the same noise, streaming equals whole synthesis, seeds, the stop head, the commands, no
torch, int8."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import numpy_helper

from conftest import run_without_torch
from speechkit.decoding.tts_options import SynthOptions, max_frames
from speechkit.errors import SpeechkitError

TEXTS = ["hello world, this is a test.", "the quick brown fox jumps over the lazy dog", "hi"]
FAST = SynthOptions(steps=3, cfg_scale=1.5, temperature=0.8, chunk_frames=4, prompt_seconds=1.0, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _codec(root: Path) -> Path:
    """A random VAE codec at 25 latents/s (hop 640) x 8, exported."""
    from speechkit.export.codec import export_codec
    from speechkit.models.codec.model import CodecConfig, build_codec
    from speechkit.nn.seanet import SeanetConfig

    torch.manual_seed(0)
    enc = SeanetConfig(channels=2, strides=(2, 4, 8, 10), latent_dim=8, dilations=(1,), shortcuts=True)
    codec = build_codec(CodecConfig("vae", encoder_conf=enc)).eval()
    export_codec(codec, root / "codec", [np.random.default_rng(0).standard_normal(4 * 640).astype(np.float32) * 0.1])
    return root / "codec"


def _experiment(root: Path, name: str, codec: Path, stop_bias: float) -> Path:
    """A random CLEAR saved like a trained one; every zero-initialised flow-head layer gets
    weights (else the velocity is 0 and the flow parity says nothing); ``stop_bias`` ±30 makes
    the stop head never / always fire."""
    from speechkit.models.tts.clear import ClearConfig, ClearTTS, FlowConfig
    from speechkit.models.tts.io import save_tts
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes

    vocab = PhonemeVocab.build(text_to_phonemes(TEXTS))
    torch.manual_seed(0)
    cfg = ClearConfig(vocab_size=len(vocab), latent_dim=8, frame_rate=25.0, d_model=64, layers=2, heads=2, ff=256, dropout=0.0,
                      text_layers=1, align_layers=(1,), align_weight=0.1,
                      flow=FlowConfig(hidden=64, blocks=2))
    model = ClearTTS(cfg).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            if not p.any():
                p.normal_(0.0, 0.5 if p.dim() == 1 else 0.05)
        model.latent_mean.normal_(0.0, 0.3)
        model.latent_std.uniform_(0.5, 1.5)
        model.stop.bias.fill_(stop_bias)
    exp = root / name
    exp.mkdir()
    vocab.save(exp / "phones.txt")
    save_tts(model, vocab.symbols, str(codec), exp / "model.pt")
    return exp


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(root, exp, exported dir, prompt wav): exported through `speechkit tts export`."""
    from speechkit.cli import main

    root = tmp_path_factory.mktemp("tts")
    codec = _codec(root)
    exp = _experiment(root, "exp", codec, stop_bias=-30.0)
    assert main(["tts", "export", str(exp), str(root / "onnx"), "--check-text", TEXTS[0]]) == 0
    t = np.arange(16000) / 16000
    sf.write(root / "prompt.wav", (0.3 * np.sin(2 * np.pi * 180 * t) + 0.02 * np.random.default_rng(1).standard_normal(16000)), 16000)
    return root, exp, root / "onnx", root / "prompt.wav"


def test_export_graphs_and_parity(built):
    from speechkit.runtime.console import model_family
    from speechkit.runtime.session import cpu_session

    root, exp, out, _ = built
    info = json.loads((out / "export.json").read_text())
    assert model_family(out) == "tts-clear" and info["int8"] is False
    p = info["parity"]
    assert p["steps"] >= 20 and p["max_abs_diff"] <= 1e-3 and p["prefix_positions"] > 30
    assert {"hidden_max_abs_diff", "stop_logit_max_abs_diff", "cache_max_abs_diff", "velocity_max_abs_diff", "sample_max_abs_diff"} <= p.keys()
    assert len(info["latent_mean"]) == len(info["latent_std"]) == info["latent_dim"] == 8 and info["frame_rate"] == 25.0
    assert info["codec"] == "codec" and {f.name for f in (out / "codec").iterdir()} == {"encoder.onnx", "decoder.onnx", "export.json"}
    assert (out / "phones.txt").read_text() == (exp / "phones.txt").read_text()
    assert not (out / "ar_prefix.onnx").exists()  # one transformer graph serves the prefix and the steps
    assert info["size_mb"] == pytest.approx(sum(f.stat().st_size for f in out.glob("*.onnx")) / 1e6, abs=0.01)
    assert info["total_mb"] == pytest.approx(info["size_mb"] + info["codec_mb"], abs=0.01) and info["codec_mb"] > 0
    io = {}
    for name in ("ar_step.onnx", "flow.onnx"):
        s = cpu_session(out / name)
        assert s.get_modelmeta().custom_metadata_map["model_family"] == "tts-clear"
        io[name] = ([(i.name, i.shape) for i in s.get_inputs()], [(o.name, o.shape) for o in s.get_outputs()])
    assert io["ar_step.onnx"] == ([("kinds", ["B", "T"]), ("phones", ["B", "T"]), ("latents", ["B", "T", 8]),
                                   ("cache", [2, 2, "B", 2, "T_cache", 32])],
                                  [("hidden", ["B", 64]), ("stop_logit", ["B"]), ("cache_out", [2, 2, "B", 2, "T_out", 32])])
    assert io["flow.onnx"] == ([("x", ["N", 8]), ("t", ["N"]), ("c", ["N", 64]), ("cfg_scale", [1])], [("velocity", ["N", 8])])
    # the batch axis is real: two streams of one cache length step together as each alone
    step = cpu_session(out / "ar_step.onnx")
    rng = np.random.default_rng(0)
    z, cache = rng.standard_normal((2, 1, 8), dtype=np.float32), rng.standard_normal((2, 2, 2, 2, 9, 32), dtype=np.float32)
    kinds, phones = np.full((2, 1), 5, np.int64), np.zeros((2, 1), np.int64)
    both = step.run(None, {"kinds": kinds, "phones": phones, "latents": z, "cache": cache})
    for b in range(2):
        one = step.run(None, {"kinds": kinds[b : b + 1], "phones": phones[b : b + 1], "latents": z[b : b + 1],
                              "cache": cache[:, :, b : b + 1]})
        for x, y in zip(one, both):
            np.testing.assert_allclose(x, y[:, :, b : b + 1] if x.ndim == 6 else y[b : b + 1], atol=1e-5)


def _tamper(path: Path) -> None:
    """Noise (std 0.05) on the largest float weight of a graph (not a constant shift, which a
    LayerNorm after it could cancel)."""
    proto = onnx.load(str(path))
    t = max((t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT), key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array(w + 0.05 * np.random.default_rng(0).standard_normal(w.shape, dtype=np.float32), t.name))
    onnx.save(proto, str(path))


@pytest.mark.parametrize("graph", ["ar_step.onnx", "flow.onnx"])
def test_a_tampered_graph_fails_the_export(built, tmp_path, monkeypatch, graph):
    import speechkit.export.tts as ex

    _, exp, _, _ = built
    write = ex.write_graphs

    def write_then_tamper(model, out_dir):
        write(model, out_dir)
        _tamper(out_dir / graph)

    monkeypatch.setattr(ex, "write_graphs", write_then_tamper)
    with pytest.raises(SpeechkitError, match="disagree"):
        ex.export_tts(exp, tmp_path / "bad", TEXTS[0])
    assert not list((tmp_path / "bad").glob("*.onnx")) and not (tmp_path / "bad" / "export.json").exists()


def test_positions_frozen_at_trace_time_fail_the_export(built, tmp_path, monkeypatch):
    """A transformer graph whose rotary positions start at the traced cache length, not the
    input's (what a trace that lost the dynamic length would be), fails the prefix and the steps."""
    import speechkit.export.tts as ex

    _, exp, _, _ = built
    monkeypatch.setattr(ex, "block_positions", lambda cache, t: torch.arange(t) + 5)  # write_graphs traces at a cache of 5
    with pytest.raises(SpeechkitError, match="disagree"):
        ex.export_tts(exp, tmp_path / "bad", TEXTS[0])


def test_runtime_equals_the_torch_loop_on_the_same_noise(built):
    """The runtime's loop (layout, normalisation, noise order, Euler steps, cache) against
    ClearTTS's prefill/step/head.sample fed the runtime's numpy noise."""
    from speechkit.models.tts.io import load_tts
    from speechkit.runtime.tts import Synthesizer, phoneme_ids, prompt_latents

    _, exp, out, prompt = built
    tts = Synthesizer(out)
    model, _, _ = load_tts(exp)
    opts = FAST
    got = np.stack(list(tts.latents(TEXTS[2], prompt, opts)))
    ids = torch.tensor(phoneme_ids(tts.vocab, TEXTS[2]))
    rng = np.random.default_rng(opts.seed)
    ref = []
    with torch.no_grad():
        h, cache = model.prefill(ids, model.normalize(torch.from_numpy(prompt_latents(tts.codec, prompt, opts.prompt_seconds))))
        for _ in range(max_frames(len(ids), 25.0)):
            noise = torch.from_numpy(rng.standard_normal((1, 8), dtype=np.float32))
            z = model.head.sample(h, opts.steps, opts.cfg_scale, opts.temperature, noise)
            ref.append(model.denormalize(z[0]).numpy())
            h, cache = model.step(z, cache)
    assert got.shape == (max_frames(len(ids), 25.0), 8)
    np.testing.assert_allclose(got, np.stack(ref), atol=1e-3)


def test_stream_equals_synthesize_and_seeds(built):
    from speechkit.runtime.tts import Synthesizer

    _, _, out, prompt = built
    tts = Synthesizer(out, num_threads=1)
    assert tts.sample_rate == 16000 and tts.device_name == "cpu"
    whole = tts.synthesize(TEXTS[2], prompt, FAST)
    chunks = list(tts.stream(TEXTS[2], prompt, FAST))
    frames = max_frames(4, 25.0)  # "hi" is 4 phoneme symbols; the stop head never fires
    assert len(whole) == frames * 640 and len(chunks) == math.ceil(frames / FAST.chunk_frames)
    assert all(len(c) == FAST.chunk_frames * 640 for c in chunks[:-1])
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-5)
    samples = sf.read(prompt, dtype="float32")[0]
    np.testing.assert_array_equal(tts.synthesize(TEXTS[2], samples, FAST), whole)  # a path or samples
    other = tts.synthesize(TEXTS[2], prompt, SynthOptions(**{**vars(FAST), "seed": 1}))
    assert other.shape == whole.shape and np.abs(other - whole).max() > 1e-3


def test_long_text_is_spoken_piece_by_piece(built):
    """Text of several sentences is synthesised one sentence-sized piece after another in the same
    voice (piece i with seed + i), streamed through one decoder; the stream equals the whole."""
    from dataclasses import replace

    from speechkit.decoding.tts_options import split_text
    from speechkit.runtime.tts import Synthesizer

    _, _, out, prompt = built
    tts = Synthesizer(out, num_threads=1)
    text = "Hi. Hello there! Hi."
    pieces = split_text(text)
    assert pieces == ["Hi.", "Hello there!", "Hi."]
    want = np.concatenate([np.stack(list(tts.latents(p, prompt, replace(FAST, seed=FAST.seed + i)))) for i, p in enumerate(pieces)])
    got = np.stack(list(tts.text_latents(text, prompt, FAST)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.concatenate(list(tts.stream(text, prompt, FAST))), tts.synthesize(text, prompt, FAST), atol=1e-5)
    assert len(tts.synthesize(text, prompt, FAST)) == len(want) * 640
    assert len(tts._prompt_cache) == 1  # one voice, encoded once for every piece and call


def test_prompt_latents_are_cached_by_the_samples(built):
    from speechkit.runtime.tts import Synthesizer, prompt_latents

    _, _, out, prompt = built
    tts = Synthesizer(out, num_threads=1)
    calls = []
    encode = tts.codec.encode
    tts.codec.encode = lambda x: calls.append(len(x)) or encode(x)
    samples = sf.read(prompt, dtype="float32")[0]
    first = tts.prompt_latents(prompt, 1.0)
    np.testing.assert_array_equal(first, prompt_latents(tts.codec, samples, 1.0))
    assert len(calls) == 2  # the cached call and the reference
    np.testing.assert_array_equal(tts.prompt_latents(samples, 1.0), first)  # a path or its samples: one entry
    assert len(calls) == 2
    tts.prompt_latents(samples[::-1].copy(), 1.0)  # another voice
    assert len(calls) == 3 and len(tts._prompt_cache) == 2


def test_stop_head_that_fires_at_once_gives_no_audio(built, tmp_path, run_cli):
    from speechkit.export.tts import export_tts
    from speechkit.runtime.tts import Synthesizer

    root, _, _, prompt = built
    exp = _experiment(tmp_path, "exp_stop", root / "codec", stop_bias=30.0)
    export_tts(exp, tmp_path / "onnx", TEXTS[2])
    tts = Synthesizer(tmp_path / "onnx")
    assert list(tts.latents(TEXTS[0], prompt, FAST)) == [] and list(tts.stream(TEXTS[0], prompt, FAST)) == []
    assert tts.synthesize(TEXTS[0], prompt, FAST).shape == (0,)
    code, out, err = run_cli("tts", tmp_path / "onnx", "--text", "hi", "--prompt", prompt, "--out", tmp_path / "x.wav")
    assert code == 0 and "stopped at once" in err


def test_synth_commands_on_the_export(built, tmp_path, run_cli):
    root, _, out, prompt = built
    for extra in ([], ["--stream"]):
        code, stdout, err = run_cli("tts", "synth", out, "--text", "hi", "--prompt", prompt, "--out", tmp_path / "x.wav",
                                    "--steps", "2", "--chunk-frames", "5", *extra)
        assert code == 0, err
        audio, rate = sf.read(tmp_path / "x.wav", dtype="float32")
        assert rate == 16000 and len(audio) == max_frames(4, 25.0) * 640
        assert ("chunks, first audio after" in stdout) == bool(extra)
    code, _, err = run_cli("tts", out, "--text", "hi", "--prompt", tmp_path / "missing.wav", "--out", tmp_path / "y.wav")
    assert code == 2 and "missing.wav" in err


def test_runtime_needs_no_torch(built):
    _, _, out, prompt = built
    got = run_without_torch(f"""
from speechkit.decoding.tts_options import SynthOptions
from speechkit.runtime.tts import Synthesizer
tts = Synthesizer({str(out)!r})
print(len(tts.synthesize("hi", {str(prompt)!r}, SynthOptions(steps=2))))""")
    assert int(got.strip()) == max_frames(4, 25.0) * 640


def test_int8_export_is_small_and_synthesizes(built, tmp_path):
    from speechkit.export.tts import export_tts
    from speechkit.runtime.tts import Synthesizer

    _, exp, out, prompt = built
    fp32 = json.loads((out / "export.json").read_text())
    info = export_tts(exp, tmp_path / "int8", TEXTS[0], int8=True)
    assert info["int8"] == "weights" and info["graphs_mb"] < 0.4 * fp32["graphs_mb"]
    check = info["int8_check"]
    assert check["hidden_rel_err"] < 0.05 and check["velocity_rel_err"] < 0.05, check
    for name in ("ar_step.onnx", "flow.onnx"):  # the flow head's weights too (its Linears export as MatMul)
        assert [n for n in onnx.load(str(tmp_path / "int8" / name)).graph.node if n.op_type == "DequantizeLinear"], name
    assert info["sizes_mb"]["ar_step.onnx"] < 0.4 * fp32["sizes_mb"]["ar_step.onnx"]
    a = Synthesizer(tmp_path / "int8").synthesize(TEXTS[2], prompt, FAST)
    b = Synthesizer(out).synthesize(TEXTS[2], prompt, FAST)
    assert a.shape == b.shape and np.all(np.isfinite(a)) and np.abs(a).max() > 0


def test_dynamic_int8_export_computes_in_int8_and_synthesizes(built, tmp_path):
    """--int8 dynamic: ONNX Runtime's dynamic quantization (integer products, activations
    quantized per call) in both graphs, checked against PyTorch like the weight-only form."""
    from speechkit.export.tts import export_tts
    from speechkit.runtime.tts import Synthesizer

    _, exp, out, prompt = built
    fp32 = json.loads((out / "export.json").read_text())
    info = export_tts(exp, tmp_path / "dyn", TEXTS[0], int8="dynamic")
    assert info["int8"] == "dynamic" and info["graphs_mb"] < 0.6 * fp32["graphs_mb"]
    with pytest.raises(SpeechkitError, match="int8 kind 'fp4': one of weights, dynamic"):
        export_tts(exp, tmp_path / "bad", TEXTS[0], int8="fp4")
    assert not (tmp_path / "bad").exists()  # refused before any work
    check = info["int8_check"]
    assert check["hidden_rel_err"] < 0.1 and check["velocity_rel_err"] < 0.1, check
    for name in ("ar_step.onnx", "flow.onnx"):
        ops = {n.op_type for n in onnx.load(str(tmp_path / "dyn" / name)).graph.node}
        assert "DynamicQuantizeLinear" in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, (name, ops)
    a = Synthesizer(tmp_path / "dyn").synthesize(TEXTS[2], prompt, FAST)
    b = Synthesizer(out).synthesize(TEXTS[2], prompt, FAST)
    assert a.shape == b.shape and np.all(np.isfinite(a)) and np.abs(a).max() > 0


def test_missing_or_foreign_model_dir_is_one_line(built, tmp_path):
    from speechkit.runtime.tts import Synthesizer

    _, _, out, _ = built
    with pytest.raises(SpeechkitError, match="export.json: no such file"):
        Synthesizer(tmp_path)
    shutil.copytree(out, tmp_path / "m")
    (tmp_path / "m" / "ar_step.onnx").unlink()
    with pytest.raises(SpeechkitError, match="ar_step.onnx: no such file"):
        Synthesizer(tmp_path / "m")


def test_python_api_loads_the_export_and_torch_stream_equals_offline(built):
    """speechkit.load gives the torch-free synthesiser; the torch experiment's streamed chunks
    joined are its offline output (one decoder call over every latent)."""
    import speechkit
    from speechkit.inference.tts import TorchSynthesizer
    from speechkit.runtime.tts import Synthesizer

    _, exp, onnx_dir, prompt = built
    tts = speechkit.load(onnx_dir)
    assert isinstance(tts, Synthesizer)
    audio = tts.synthesize("one two three", str(prompt))
    chunks = list(tts.stream("one two three", str(prompt)))
    assert len(audio) > 0 and np.allclose(np.concatenate(chunks), audio, atol=1e-5)
    torch_tts = TorchSynthesizer(exp, "cpu")
    whole = torch_tts.synthesize("one two three", str(prompt))
    streamed = np.concatenate(list(torch_tts.stream("one two three", str(prompt))))
    assert len(whole) > 0 and whole.shape == streamed.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-5)
