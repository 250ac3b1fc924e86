"""The speaker encoder exported to ONNX: the graph gives PyTorch's L2-normalised embedding for any
batch and length (max |Δ| under ``EMBED_TOL`` = 1e-4 on unit vectors, 1 − cosine under 1e-6), the
torch-free runtime gives ``embed_samples`` / ``embed_file``'s embeddings (one pass up to 1.5
windows, window by window past that, never more than one window's frames a call), ``embed_batch``
gives ``embed``'s rows, the CLI exports and embeds with the folder, and bad folders, rates or
audio stop in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import run_without_torch
from speechkit.audio.fbank import compute_fbank
from speechkit.errors import AudioError, SpeechkitError
from test_speaker import TINY_ENCODER

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 16000
TEXTS = ["the museum opened a new hall", "a quiet garden behind the old library"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised tiny encoder saved as model.pt, its BatchNorm statistics gathered on
    random fbank-like input as training would: fresh statistics leave a bias that makes every
    input's embedding nearly the same (cosine 0.999), too blunt to test parity with."""
    from speechkit.models.speaker.ecapa import EcapaConfig, EcapaTdnn
    from speechkit.models.speaker.io import save_speaker_encoder

    torch.manual_seed(0)
    model = EcapaTdnn(EcapaConfig(**TINY_ENCODER))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 200, 80) * 3.0 - 5.0)
    path = tmp_path_factory.mktemp("spk") / "model.pt"
    save_speaker_encoder(model.state_dict(), model.cfg, path)
    return path


@pytest.fixture(scope="module")
def exported(tiny_model) -> Path:
    from speechkit.export.speaker import export_speaker

    threads = torch.get_num_threads()  # a module fixture runs before the tests' one_thread: the same here
    torch.set_num_threads(1)
    try:
        export_speaker(tiny_model, tiny_model.parent / "onnx")
    finally:
        torch.set_num_threads(threads)
    return tiny_model.parent / "onnx"


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    """Two espeak-ng utterances at 16 kHz (the speech gate passes them; tones it would not)."""
    from speechkit.data.synth.engines import Prosody, Voice, synthesize

    return [synthesize(Voice("espeak-ng", "en-us", "espeak-en-us"), t, Prosody(peak=0.5)) for t in TEXTS]


@pytest.fixture(scope="module")
def encoder(tiny_model):
    from speechkit.models.speaker.io import load_speaker_encoder

    return load_speaker_encoder(tiny_model)


def test_graph_matches_torch_for_any_batch_and_length(exported, encoder):
    import onnx

    from speechkit.export.speaker import EMBED_TOL
    from speechkit.runtime.session import cpu_session

    info = json.loads((exported / "export.json").read_text())
    assert info["model_family"] == "speaker" and info["embed_dim"] == TINY_ENCODER["embed_dim"] and info["weights"] == "float32"
    assert max(r["frames"] for r in info["parity"]) >= 3000  # the longest window embed_file runs in one pass
    assert all(r["max_abs_diff"] <= EMBED_TOL for r in info["parity"]) and info["size_mb"] > 0
    meta = {p.key: p.value for p in onnx.load(str(exported / "speaker.onnx")).metadata_props}
    assert meta["num_mel_bins"] == "80" and meta["sample_rate"] == str(RATE) and meta["embed_dim"] == "64"

    session = cpu_session(exported / "speaker.onnx")
    rng = np.random.default_rng(1)
    for batch, frames in [(1, 5), (2, 77), (3, 2500)]:  # shapes the export never saw
        x = rng.normal(-5.0, 3.0, (batch, frames, 80)).astype(np.float32)
        got = session.run(None, {"feats": x})[0]
        with torch.no_grad():
            ref = encoder.embed(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 64)
        assert np.abs(got - ref).max() <= EMBED_TOL, (batch, frames)
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(ref[0] - ref[1]).max() > 100 * EMBED_TOL  # inputs lie far apart next to the tolerance


def test_a_failed_parity_check_leaves_no_graph(tiny_model, tmp_path, monkeypatch):
    from speechkit.export import speaker

    monkeypatch.setattr(speaker, "EMBED_TOL", -1.0)
    with pytest.raises(SpeechkitError, match="ONNX Runtime and PyTorch disagree"):
        speaker.export_speaker(tiny_model, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_export_takes_a_model_in_memory_and_leaves_it_as_it_was(exported, tiny_model, tmp_path):
    from speechkit.export.speaker import export_speaker
    from speechkit.models.speaker.io import load_speaker_encoder
    from speechkit.runtime.session import cpu_session

    model = load_speaker_encoder(tiny_model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    info = export_speaker(model, tmp_path / "mem")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert info["model"] == "EcapaTdnn in memory" and json.loads((tmp_path / "mem" / "export.json").read_text())["parity"]
    x = np.random.default_rng(2).normal(-5.0, 3.0, (2, 150, 80)).astype(np.float32)
    a = cpu_session(tmp_path / "mem" / "speaker.onnx").run(None, {"feats": x})[0]
    b = cpu_session(exported / "speaker.onnx").run(None, {"feats": x})[0]
    assert np.abs(a - b).max() <= 1e-6  # the same eval-mode graph as the file's


class CallLog:
    """A session stand-in that records the (B, T) of every call."""

    def __init__(self, session):
        self.session, self.shapes = session, []

    def run(self, names, feeds):
        self.shapes.append(feeds["feats"].shape[:2])
        return self.session.run(names, feeds)


def windowed_reference(encoder, x: np.ndarray) -> np.ndarray:
    """PyTorch's embed_samples on embed_file's split of ``x`` (1 s blocks), weighted by seconds."""
    from speechkit.models.speaker import embed
    from speechkit.runtime.speaker import windows  # the split embed.embed_file uses

    blocks = (x[i : i + RATE] for i in range(0, len(x), RATE))
    pieces = list(windows(blocks, int(embed.WINDOW_SECONDS * RATE)))
    assert [len(p) for p in pieces] == [20 * RATE, 20 * RATE, len(x) - 40 * RATE]
    total = sum(len(p) * embed.embed_samples(encoder, p).astype(np.float64) for p in pieces)
    return total / np.linalg.norm(total)


def test_long_inputs_are_embedded_window_by_window(exported, encoder, speech):
    """Up to 1.5 windows one pass (= embed_samples); 2.6 windows → 20 s + 20 s + 12 s pieces, each
    embedded alone and averaged by seconds, no call above one pass's frames."""
    from speechkit.export.speaker import EMBED_TOL
    from speechkit.models.speaker import embed
    from speechkit.runtime.speaker import SpeakerRuntime

    rt = SpeakerRuntime(exported)
    rt.session = log = CallLog(rt.session)
    rng = np.random.default_rng(3)
    voice = np.concatenate([speech[0], speech[1], 0.3 * speech[0]])
    long = (np.resize(voice, int(2.6 * rt.window)) + rng.normal(0, 0.01, int(2.6 * rt.window))).astype(np.float32)
    long[: rt.window] *= 0.2  # the first window quieter than the rest: its embedding differs
    near = long[: int(1.45 * rt.window)]  # just under 1.5 windows: one pass

    assert np.abs(rt.embed(near) - embed.embed_samples(encoder, near)).max() <= EMBED_TOL
    assert log.shapes == [(1, len(compute_fbank(near)))]
    log.shapes.clear()
    got = rt.embed(long)
    assert np.abs(got - windowed_reference(encoder, long)).max() <= EMBED_TOL
    assert abs(np.linalg.norm(got) - 1.0) < 1e-5
    assert len(log.shapes) == 3 and max(t for _, t in log.shapes) <= rt.max_call_frames < len(long) / RATE * 100
    assert np.abs(got - embed.embed_samples(encoder, long)).max() > 10 * EMBED_TOL  # not one pass in disguise


def test_embed_batch_gives_embeds_rows(exported, speech):
    """Equal frame counts share one call, others run alone, a long input is windowed; every row
    = embed(x) (1e-5: batched convolutions may round differently) from any rate."""
    from speechkit.audio.io import resample_audio
    from speechkit.runtime.speaker import SpeakerRuntime

    rt = SpeakerRuntime(exported)
    a, b = sorted(speech, key=len)
    n = (len(a) - 200) // 160 * 160 + 120  # n and n - 10 samples give the same frames (round(N / 160))
    long = np.resize(np.concatenate([a, b]), int(1.7 * rt.window))
    batch = [a[:n], b, b[:n], long, a[: n - 10]]  # rows 0, 2 and 4 share a call
    assert len({len(compute_fbank(batch[i])) for i in (0, 2, 4)}) == 1 and len(compute_fbank(b)) > len(compute_fbank(a[:n]))
    want = np.stack([rt.embed(x) for x in batch])
    rt.session = log = CallLog(rt.session)
    got = rt.embed_batch(batch)
    assert got.shape == (5, 64) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5
    assert sorted(rows for rows, _ in log.shapes) == [1, 1, 1, 3]  # b alone, the long one's two windows, the trio
    x44 = [resample_audio(x, RATE, 44100) for x in (a, b)]
    got44 = rt.embed_batch(x44, sample_rate=44100)
    assert np.abs(got44 - np.stack([rt.embed(x, 44100) for x in x44])).max() <= 1e-5
    assert rt.embed_batch([]).shape == (0, 64)


def test_runtime_matches_torch(exported, encoder, speech, tmp_path):
    """embed = embed_samples (also from another rate), embed_file = embed_file on a one-pass file
    and on one past 1.5 windows (windowed, speech-weighted)."""
    from speechkit.audio.io import resample_audio
    from speechkit.export.speaker import EMBED_TOL
    from speechkit.models.speaker import embed
    from speechkit.runtime.speaker import SpeakerRuntime

    rt = SpeakerRuntime(exported)
    assert rt.embed_dim == 64 and rt.sample_rate == embed.SAMPLE_RATE
    assert (rt.min_seconds, rt.window_seconds) == (embed.MIN_SECONDS, embed.WINDOW_SECONDS)
    a, b = (rt.embed(x) for x in speech)
    assert np.abs(a - embed.embed_samples(encoder, speech[0])).max() <= EMBED_TOL
    assert np.abs(b - embed.embed_samples(encoder, speech[1])).max() <= EMBED_TOL
    assert np.abs(a - b).max() > 100 * EMBED_TOL  # two utterances (one voice) lie far apart next to the tolerance
    x44 = resample_audio(speech[0], RATE, 44100)
    ref = embed.embed_samples(encoder, resample_audio(x44, 44100, RATE))
    assert np.abs(rt.embed(x44, sample_rate=44100) - ref).max() <= EMBED_TOL

    gap = np.zeros(RATE // 2, np.float32)
    one = np.concatenate([speech[0], gap, speech[1]])
    sf.write(tmp_path / "short.wav", one, RATE)
    reps = int(np.ceil(1.6 * embed.WINDOW_SECONDS * RATE / (len(one) + 2 * len(gap))))
    long = np.concatenate([np.concatenate([one, gap, 0.5 * speech[i % 2], gap]) for i in range(reps)])
    sf.write(tmp_path / "long.wav", long, RATE)
    for name in ("short.wav", "long.wav"):
        got, want = rt.embed_file(tmp_path / name), embed.embed_file(encoder, tmp_path / name)
        assert np.abs(got - want).max() <= EMBED_TOL, name
        assert abs(np.linalg.norm(got) - 1.0) < 1e-5
    assert len(long) > 1.5 * embed.WINDOW_SECONDS * RATE


def test_bad_folders_and_audio_are_one_line_errors(exported, tiny_model, tmp_path):
    from speechkit.export.onnx_file import write_onnx
    from speechkit.runtime.speaker import SpeakerRuntime

    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tiny_model.parent):  # nothing, and an experiment dir (model.pt, not exported)
        with pytest.raises(SpeechkitError, match="not an exported speaker encoder .no speaker.onnx"):
            SpeakerRuntime(folder)
    other = tmp_path / "other"
    other.mkdir()
    write_onnx(torch.nn.Identity(), (torch.zeros(1, 3),), other / "speaker.onnx", ["x"], ["y"], {}, {"model_family": "codec-vae"})
    with pytest.raises(SpeechkitError, match="not a speaker encoder model .model_family='codec-vae'"):
        SpeakerRuntime(other)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "speaker.onnx").write_bytes(b"not a graph")
    with pytest.raises(SpeechkitError, match="speaker.onnx: not a readable ONNX file"):
        SpeakerRuntime(tmp_path / "broken")
    with pytest.raises(SpeechkitError, match="not an exported speaker encoder"):
        SpeakerRuntime(tmp_path / "missing")

    rt = SpeakerRuntime(exported)
    with pytest.raises(AudioError, match="0.25 s of audio; a speaker embedding needs at least 0.5 s"):
        rt.embed(np.zeros(4000, np.float32))
    with pytest.raises(AudioError, match="0.25 s of audio"):
        rt.embed(np.zeros(11025, np.float32), sample_rate=44100)
    with pytest.raises(AudioError, match="mono"):
        rt.embed(np.zeros((2, 16000), np.float32))
    with pytest.raises(AudioError, match="^0.00 s of audio"):
        rt.embed(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        rt.embed(np.full(RATE, np.nan, np.float32))
    for rate in (0, -16000, 16000.5, True, "16000"):
        with pytest.raises(AudioError, match="sample_rate must be a positive whole number of Hz"):
            rt.embed(np.zeros(RATE, np.float32), sample_rate=rate)
    assert rt.embed(0.1 * np.sin(np.arange(RATE, dtype=np.float32)), sample_rate=16000.0).shape == (64,)
    with pytest.raises(AudioError, match="^input 1: 0.10 s of audio"):  # every input checked before any is embedded
        rt.embed_batch([np.zeros(RATE, np.float32), np.zeros(1600, np.float32)])
    sf.write(tmp_path / "short.wav", 0.3 * np.sin(np.arange(4000) / 5.0).astype(np.float32), RATE)
    sf.write(tmp_path / "hum.wav", 0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / RATE).astype(np.float32), RATE)
    sf.write(tmp_path / "silent.wav", np.zeros(48000, np.float32), 48000)
    with pytest.raises(AudioError, match="short.wav: 0.25 s of audio"):
        rt.embed_file(tmp_path / "short.wav")
    for name in ("hum.wav", "silent.wav"):
        with pytest.raises(AudioError, match="no speech found"):
            rt.embed_file(tmp_path / name)


def test_cli_export_then_embed_with_the_folder(tiny_model, speech, run_cli, tmp_path, capsys):
    from speechkit.cli import build_parser
    from speechkit.export.speaker import EMBED_TOL

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["speaker", "export", "--help"])
    assert e.value.code == 0 and "speaker.onnx" in capsys.readouterr().out
    rc, out, err = run_cli("speaker", "export", tiny_model, "--out", tmp_path / "onnx")
    assert rc == 0, err
    assert "speaker.onnx" in out and "float32" in out and (tmp_path / "onnx" / "export.json").is_file()
    assert build_parser().parse_args(["speaker", "export", "m", "d"]).out_dir == "d"  # the other exporters' form
    for args in ([], [tmp_path / "y", "--out", tmp_path / "x"]):
        rc, out, err = run_cli("speaker", "export", tiny_model, *args)
        assert rc == 2 and "give the output folder once" in err and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    sf.write(tmp_path / "a.wav", speech[0], RATE)
    stereo = np.stack([speech[1], speech[1]], axis=1)
    sf.write(tmp_path / "b.wav", stereo, RATE)
    rc, out, err = run_cli("speaker", "embed", tmp_path / "onnx", tmp_path / "a.wav", tmp_path / "b.wav", "--out", tmp_path / "onnx.npy")
    assert rc == 0, err
    rc, out, err = run_cli("speaker", "embed", tiny_model, tmp_path / "a.wav", tmp_path / "b.wav", "--out", tmp_path / "torch.npy")
    assert rc == 0, err
    got, want = np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy")
    assert got.shape == (2, 64) and np.abs(got - want).max() <= EMBED_TOL

    (tmp_path / "empty").mkdir()
    rc, out, err = run_cli("speaker", "export", tmp_path / "empty", "--out", tmp_path / "out")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no such checkpoint" in err
    sf.write(tmp_path / "silent.wav", np.zeros(RATE, np.float32), RATE)
    rc, out, err = run_cli("speaker", "embed", tmp_path / "onnx", tmp_path / "silent.wav")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no speech found" in err


def test_runtime_runs_without_torch(exported, encoder, speech, tmp_path):
    from speechkit.models.speaker.embed import embed_file

    sf.write(tmp_path / "a.wav", speech[0], RATE)
    from speechkit.models.speaker.embed import embed_samples

    out = run_without_torch(f"""
        import numpy as np, soundfile as sf
        from speechkit.runtime.speaker import SpeakerRuntime
        rt = SpeakerRuntime({str(exported)!r})
        x, _ = sf.read({str(tmp_path / 'a.wav')!r}, dtype="float32")
        for e in (rt.embed_file({str(tmp_path / 'a.wav')!r}), rt.embed(x), *rt.embed_batch([x, x[::-1]])):
            print(" ".join(repr(float(v)) for v in e))
    """)
    got = np.array([line.split() for line in out.splitlines()], dtype=np.float32)
    assert got.shape == (4, 64)
    assert np.abs(got[0] - embed_file(encoder, tmp_path / "a.wav")).max() <= 1e-4
    x, _ = sf.read(tmp_path / "a.wav", dtype="float32")
    want = np.stack([embed_samples(encoder, x), embed_samples(encoder, x), embed_samples(encoder, x[::-1].copy())])
    assert np.abs(got[1:] - want).max() <= 1e-4
