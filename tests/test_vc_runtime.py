"""MeanVC exported to ONNX and the torch-free streaming converter: the export's parity report
(float32 graphs within 1e-3 of ``MeanVC.convert`` relative to the latents' scale; float16 weights
within the same of the model with the same rounded weights), the runtime's latents equal to
``MeanVC.convert`` on the same noise, streamed audio equal to whole, batched streams equal to each
stream alone, one-line errors, and no torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_without_torch
from speechkit.errors import AudioError, SpeechkitError
from speechkit.models.vc.model import MeanVC, VcConfig

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 16000
SPK_DIM = 32
# content 192 = models/asr-stream-synth's d_model, latents 64 = models/codec-vae-synth's
CFG = VcConfig(latent_dim=64, content_dim=192, spk_dim=SPK_DIM, dim=32, layers=2, heads=2, chunk=5, cache_chunks=2,
               ref_frames=40)
FEATURES = {"codec": "models/codec-vae-synth", "asr": "models/asr-stream-synth", "content_layer": 12, "att_context": [64, 4]}
TINY_SPEAKER = {"channels": 32, "res2_scale": 4, "se_channels": 8, "mfa_channels": 96, "attention_channels": 8,
                "embed_dim": SPK_DIM}


def tone(seconds: float, hz: float, seed: int) -> np.ndarray:
    """Gliding tones with a little noise: speech-like enough for the encoders, not silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f = hz * (1 + 0.2 * np.sin(2 * np.pi * 1.5 * t))
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / RATE) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def save_tiny_vc(root: Path) -> Path:
    """A randomly initialised MeanVC (weights drawn wide: the zero-initialised output would make
    every check trivial) saved under ``root/exp`` with the shipped codec and ASR as its provenance,
    and a tiny speaker encoder saved under ``root/spk`` and exported to ``root/spk_onnx`` → root."""
    from speechkit.export.speaker import export_speaker
    from speechkit.models.speaker.ecapa import EcapaConfig, EcapaTdnn
    from speechkit.models.speaker.io import save_speaker_encoder
    from speechkit.models.vc.io import save_vc

    (root / "exp").mkdir(parents=True, exist_ok=True)
    (root / "spk").mkdir(exist_ok=True)
    threads = torch.get_num_threads()  # module fixtures run before the tests' one_thread
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = MeanVC(CFG)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.2)
        model.set_stats(torch.randn(CFG.latent_dim), torch.rand(CFG.latent_dim) + 0.5)
        save_vc(model.state_dict(), CFG, FEATURES, root / "exp" / "model.pt")
        spk = EcapaTdnn(EcapaConfig(**TINY_SPEAKER))
        save_speaker_encoder(spk.state_dict(), spk.cfg, root / "spk" / "model.pt")
        export_speaker(root / "spk" / "model.pt", root / "spk_onnx")
    finally:
        torch.set_num_threads(threads)
    return root


def make_vc_export(root: Path) -> Path:
    """The tiny MeanVC of :func:`save_tiny_vc` exported with its speaker encoder → ``root/onnx``
    (for the bench, API and server tests)."""
    return _export(save_tiny_vc(root), "onnx", speaker_dir=root / "spk_onnx")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_vc(tmp_path_factory.mktemp("vc"))


def _export(model_dir: Path, name: str, **kw) -> Path:
    from speechkit.export.vc import export_vc

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_vc(model_dir / "exp", model_dir / name, **kw)
    finally:
        torch.set_num_threads(threads)
    return model_dir / name


@pytest.fixture(scope="module")
def exported(model_dir) -> Path:
    """The default export (float16 weights), with the speaker encoder shipped."""
    return _export(model_dir, "onnx", speaker_dir=model_dir / "spk_onnx")


@pytest.fixture(scope="module")
def vc(exported):
    from speechkit.runtime.vc import VoiceConverter

    return VoiceConverter(exported)


@pytest.fixture(scope="module")
def twin(model_dir):
    """The torch model with the float16-rounded weights the default export stores."""
    from speechkit.export.vc import fp16_rounded
    from speechkit.models.vc.io import load_vc

    model, _ = load_vc(model_dir / "exp")
    return fp16_rounded(model)[0]


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max()), np.abs(got - want).max()


def test_export_writes_checked_graphs_and_their_description(exported, model_dir, run_cli, tmp_path):
    info = json.loads((exported / "export.json").read_text())
    cfg = json.loads((exported / "vc.json").read_text())
    for key, value in {"chunk": 5, "cache_chunks": 2, "frame_rate": 25.0, "latent_dim": 64, "content_dim": 192,
                       "spk_dim": SPK_DIM, "ref_frames": 40, "steps": 1, "layers": 2, "heads": 2, "head_dim": 16}.items():
        assert cfg[key] == value, key
    assert cfg["features"] == FEATURES and cfg["speaker"] == "speaker" and (exported / "speaker" / "speaker.onnx").is_file()
    p = info["parity"]
    assert p["chunks"] > CFG.cache_chunks + 1 and p["ref_frames"][0] < p["ref_frames"][1]  # the cache wraps; refs padded
    assert p["fp32"]["max_abs_diff"] <= 1e-3 * max(1, p["fp32"]["max_abs_latent"])
    assert p["fp16"]["vs_rounded_model"]["max_abs_diff"] <= 1e-3 * max(1, p["fp16"]["max_abs_latent"])
    assert 0 < p["fp16"]["rel_err"] < 0.05  # rounding the weights changes the latents, a little
    for name in ("reference.onnx", "step.onnx"):  # float16 weights: well under the float32 file
        assert info["sizes_mb"][name] < 0.8 * p["fp32_sizes_mb"][name]
    # a row whose chunk is partial (its stream ends) keeps its cache; a full one commits
    from speechkit.runtime.session import cpu_session

    step, rng = cpu_session(exported / "step.onnx"), np.random.default_rng(0)
    keys = rng.standard_normal((2, 2, 2, 10, 16)).astype(np.float32)
    feeds = {"noise": rng.standard_normal((2, 5, 64)).astype(np.float32), "content": rng.standard_normal((2, 5, 192)).astype(np.float32),
             "ref_keys": keys[..., :4, :], "ref_values": keys[..., :4, :], "ref_mask": np.ones((2, 4), bool),
             "spk": np.ones((2, SPK_DIM), np.float32), "keys": keys, "values": keys, "cache_len": np.array([5, 5]),
             "chunk_lens": np.array([5, 3])}
    _, new_keys, new_values, new_len = step.run(None, feeds)
    assert new_len.tolist() == [10, 5]
    np.testing.assert_array_equal(new_keys[:, 1], keys[:, 1])
    assert not np.allclose(new_keys[:, 0], keys[:, 0])
    # --fp32 and --steps through the command-line hooks the lead wires as `speechkit vc export`
    import argparse

    from speechkit.export.vc import add_export_args, run_export

    parser = argparse.ArgumentParser()
    add_export_args(parser)
    run_export(parser.parse_args([str(model_dir / "exp"), str(tmp_path / "fp32"), "--fp32", "--steps", "2"]))
    info32 = json.loads((tmp_path / "fp32" / "export.json").read_text())
    assert info32["steps"] == 2 and "fp16" not in info32["parity"] and not (tmp_path / "fp32" / "speaker").exists()
    assert info32["sizes_mb"] == info32["parity"]["fp32_sizes_mb"]


def test_runtime_latents_are_torch_convert_on_the_same_noise(vc, twin):
    src, ref = tone(1.9, 180, 1), tone(1.3, 240, 2)  # 1.3 s: 33 reference frames, under ref_frames
    spk = np.random.default_rng(3).standard_normal(SPK_DIM).astype(np.float32)
    target = vc.target(ref, spk=spk)
    content = vc.content.encode(src)
    assert len(content) % CFG.chunk and len(content) > (CFG.cache_chunks + 1) * CFG.chunk  # a partial last chunk
    noise = np.random.default_rng(4).standard_normal((len(content), CFG.latent_dim)).astype(np.float32)

    def torch_convert(z: np.ndarray) -> np.ndarray:
        return twin.convert(torch.from_numpy(content)[None], torch.from_numpy(target.latents)[None],
                            torch.from_numpy(target.spk)[None], noise=torch.from_numpy(z)[None])[0].numpy()

    _close(vc.convert_latents(content, target, noise=noise), torch_convert(noise))
    # a seed draws the noise chunk by chunk from numpy's generator
    g = np.random.default_rng(7)
    seeded = np.concatenate([g.standard_normal((CFG.chunk, CFG.latent_dim), dtype=np.float32)
                             for _ in range(-(-len(content) // CFG.chunk))])[: len(content)]
    _close(vc.convert_latents(content, target, seed=7), torch_convert(seeded))
    # a long reference keeps its middle ref_frames, as MeanVC.reference does
    long_target = vc.target(tone(2.5, 200, 5), spk=spk)
    assert long_target.latents.shape == (CFG.ref_frames, CFG.latent_dim)


def test_streamed_audio_is_the_whole_conversion_and_the_speaker_encoder_is_used(vc):
    target = vc.target(tone(1.5, 220, 6))  # the embedding from the shipped speaker encoder
    from speechkit.runtime.speaker import SpeakerRuntime

    want_spk = SpeakerRuntime(vc.model_dir / "speaker").embed(tone(1.5, 220, 6))
    np.testing.assert_allclose(target.spk, want_spk, atol=1e-6)
    src = tone(1.7, 160, 8)
    whole = vc.convert(src, target, seed=3)
    frames = len(vc.content.encode(src))
    assert whole.shape == (frames * vc.codec.hop,) and np.isfinite(whole).all()
    s = vc.stream(target, seed=3)
    parts = [s.accept(src[at : at + 1111]) for at in range(0, len(src), 1111)]
    assert sum(len(p) > 0 for p in parts) > 3  # audio came out while the source was still coming in
    parts.append(s.finish())
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert not np.array_equal(vc.convert(src, target, seed=4), whole)
    # the latency is measured, not only computed: the first audio needs exactly latency_ms of input
    assert vc.latency_ms == 5 * 40 + 7.5
    need = int(round(vc.latency_ms * 16))  # samples
    s = vc.stream(target, seed=3)
    assert len(s.accept(src[: need - 1])) == 0
    assert len(s.accept(src[need - 1 : need])) == 5 * vc.codec.hop
    with pytest.raises(AudioError, match="sample_rate"):
        vc.target(tone(1.5, 200, 1), sample_rate=-16000)


def test_batched_streams_equal_each_stream_alone(vc):
    """Three sources of different lengths (so streams end in different steps, in partial chunks of
    different sizes) into two voices with references of different lengths, fed block by block and
    stepped together (the content encoder batched too), give each stream's audio alone."""
    rng = np.random.default_rng(9)
    targets = [vc.target(tone(1.1, 250, 10), spk=rng.standard_normal(SPK_DIM).astype(np.float32)),
               vc.target(tone(2.2, 140, 11), spk=rng.standard_normal(SPK_DIM).astype(np.float32))]
    assert targets[0].mask.shape[1] < targets[1].mask.shape[1]
    jobs = [(tone(1.35, 170, 12), 0, 1), (tone(0.9, 300, 13), 1, 2), (tone(1.62, 210, 14), 0, 3)]
    alone = [vc.convert(src, targets[t], seed=seed) for src, t, seed in jobs]
    streams = [vc.stream(targets[t], seed=seed) for _, t, seed in jobs]
    content_batches = []
    session = vc.content.session
    run = session.run

    def counted(names, feeds):  # the content encoder's batch sizes
        content_batches.append(len(feeds["x"]))
        return run(names, feeds)

    vc.content.session = type("Counted", (), {"run": staticmethod(counted)})()
    out: list[list[np.ndarray]] = [[] for _ in jobs]
    block, at, batched_calls = 2500, 0, 0
    while not all(s.done for s in streams):
        for s, (src, _, _) in zip(streams, jobs):
            if at < len(src):
                s.feed(src[at : at + block])
            elif not s.closed:
                s.close()
        at += block
        while any(s.ready for s in streams):
            batched_calls += sum(s.ready for s in streams) > 1
            for got, a in zip(out, vc.step_many(streams)):
                got.append(a)
    vc.content.session = session
    assert batched_calls > 3 and max(content_batches) == 3
    for got, want in zip(out, alone):
        got = np.concatenate(got)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_one_line_errors(vc, exported, tmp_path):
    from speechkit.runtime.vc import VoiceConverter

    with pytest.raises(SpeechkitError, match="vc.json: no such file .*speechkit vc export"):
        VoiceConverter(tmp_path / "nowhere")
    moved = tmp_path / "moved"
    shutil.copytree(exported, moved)
    cfg = json.loads((moved / "vc.json").read_text())
    (moved / "vc.json").write_text(json.dumps({**cfg, "features": {**cfg["features"], "codec": "no/such/codec"}}))
    with pytest.raises(SpeechkitError, match=r"no/such/codec: no such codec \(pass --codec\)"):
        VoiceConverter(moved)
    (moved / "vc.json").write_text(json.dumps({**cfg, "features": {**cfg["features"], "asr": None}}))
    with pytest.raises(SpeechkitError, match="pass --asr"):
        VoiceConverter(moved)
    assert VoiceConverter(moved, asr_dir="models/asr-stream-synth").content.dim == 192
    spk = np.ones(SPK_DIM, np.float32)
    for samples, why in ((tone(0.8, 200, 0), "at least 1 s"), (np.zeros(RATE * 2, np.float32), "silent"),
                         (np.stack([tone(1.5, 200, 0)] * 2, axis=1), "mono")):
        with pytest.raises(AudioError, match=why) as err:
            vc.target(samples, spk=spk)
        assert "\n" not in str(err.value)
    with pytest.raises(SpeechkitError, match=r"shape \(3,\)"):
        vc.target(tone(1.5, 200, 0), spk=np.ones(3, np.float32))
    shutil.rmtree(moved / "speaker")
    (moved / "vc.json").write_text(json.dumps(cfg))
    with pytest.raises(SpeechkitError, match="ships no speaker encoder: pass spk="):
        VoiceConverter(moved).target(tone(1.5, 200, 0))
    with pytest.raises(AudioError, match="too short"):
        vc.convert(np.zeros(0, np.float32), vc.target(tone(1.5, 200, 0), spk=spk))


def test_runs_without_torch(exported):
    out = run_without_torch(f"""
        import numpy as np
        from speechkit.runtime.vc import VoiceConverter
        vc = VoiceConverter({str(exported)!r})
        t = np.arange(24000) / 16000
        ref = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.cos(2 * np.pi * 37 * t)).astype(np.float32)
        audio = vc.convert(ref[:20000], vc.target(ref))
        print(audio.shape[0], bool(np.isfinite(audio).all()))
    """)
    n, finite = out.split()
    assert int(n) > 0 and int(n) % 640 == 0 and finite == "True"
