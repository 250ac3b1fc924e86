"""`speechkit vc prepare` and `speechkit vc train`: the dump holds the shipped codec's latents, the
shipped streaming ASR's content features and the speaker embeddings of every good file (a broken
one is skipped and listed), and a SIGKILLed training run resumes to the uninterrupted weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import kill_after_first_checkpoint, make_tiny_data_dir
from speechkit.data.vc_dump import VcDump
from speechkit.errors import SpeechkitError

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
CODEC, ASR = REPO / "models/codec-vae-synth", REPO / "models/asr-stream-synth"
TINY_SPEAKER = {"channels": 32, "res2_scale": 4, "se_channels": 8, "mfa_channels": 96, "attention_channels": 8, "embed_dim": 16}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from speechkit.models.speaker.ecapa import EcapaConfig, EcapaTdnn
    from speechkit.models.speaker.io import save_speaker_encoder
    from speechkit.train.vc_prepare import prepare_vc_dump

    root = tmp_path_factory.mktemp("vc")
    utts = make_tiny_data_dir(root / "data", n_utts=6, n_speakers=2)
    (Path(utts[2].wav)).write_bytes(b"RIFF not a wav")  # one broken file among good ones
    torch.manual_seed(0)
    cfg = EcapaConfig(**TINY_SPEAKER)
    save_speaker_encoder(EcapaTdnn(cfg).state_dict(), cfg, root / "speaker.pt")
    stats = prepare_vc_dump(root / "data", root / "dump", CODEC, ASR, root / "speaker.pt", nj=2)
    return root, utts, stats


def test_dump_holds_the_models_features(prepared):
    from speechkit.audio.io import load_audio
    from speechkit.runtime.codec import CodecRuntime
    from speechkit.runtime.content import ContentEncoder

    root, utts, stats = prepared
    dump = VcDump.open(root / "dump")
    assert dump.utt_ids == [u.utt_id for i, u in enumerate(utts) if i != 2]
    assert dump.spk == [u.speaker for i, u in enumerate(utts) if i != 2]
    assert stats["skipped"] == 1 and utts[2].utt_id in (root / "dump/skipped.txt").read_text()
    assert not (root / "dump.tmp").exists()
    assert dump.latents.dtype == np.float16 and dump.latents.shape[1] == 64 == stats["latent_dim"]
    assert dump.content.shape[1] == 192 == stats["content_dim"] and stats["content_layer"] == 12
    assert dump.spk_emb.shape == (5, 16) and np.allclose(np.linalg.norm(dump.spk_emb, axis=1), 1, atol=1e-4)
    codec, content = CodecRuntime(CODEC), ContentEncoder(ASR, layer=12, att_context=(64, 4))
    u = utts[3]
    x = load_audio(u.wav, 16000)[0]
    lat, con = dump.frames(dump.utt_ids.index(u.utt_id))
    want_lat, want_con = codec.encode(x).T, content.encode(x)
    n = min(len(want_lat), len(want_con))
    assert len(lat) == n and abs(len(want_lat) - len(want_con)) <= 2
    np.testing.assert_allclose(lat.astype(np.float32), want_lat[:n], atol=2e-2 * np.abs(want_lat).max())
    np.testing.assert_allclose(con.astype(np.float32), want_con[:n], atol=2e-2 * np.abs(want_con).max())
    all_lat = dump.latents.astype(np.float64)
    np.testing.assert_allclose(stats["latent_mean"], all_lat.mean(0), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(stats["latent_std"], all_lat.std(0), rtol=1e-3, atol=1e-3)


def test_missing_model_and_not_a_dump_are_one_line(prepared, tmp_path):
    from speechkit.train.vc_prepare import prepare_vc_dump

    root, _, _ = prepared
    with pytest.raises(SpeechkitError, match="no such codec"):
        prepare_vc_dump(root / "data", tmp_path / "d", tmp_path / "nowhere", ASR, root / "speaker.pt")
    with pytest.raises(SpeechkitError, match="no such checkpoint"):  # exists, but not a model: one line, no hang
        prepare_vc_dump(root / "data", tmp_path / "d", CODEC, ASR, tmp_path, nj=2)
    with pytest.raises(SpeechkitError, match="not a voice-conversion dump"):
        VcDump.open(tmp_path)


VC_CONFIG = """\
model_conf: {latent_dim: 64, content_dim: 192, spk_dim: 16, dim: 32, layers: 2, heads: 2, chunk: 5, cache_chunks: 2, ref_frames: 20}
optim_conf: {lr: 0.001, warmup_steps: 5}
train_conf: {max_steps: 8, batch_size: 4, segment_frames: 15, min_frames: 5, log_interval: 2, save_interval_steps: 3}
"""


def test_cli_train_resumes_after_sigkill(prepared, tmp_path):
    root, _, _ = prepared
    (tmp_path / "vc.yaml").write_text(VC_CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "speechkit.cli", "vc", "train", "--config", str(tmp_path / "vc.yaml"), "--dump", str(root / "dump")]
    subprocess.run(cmd + ["--exp-dir", str(tmp_path / "a"), "--device", "cpu"], env=env, check=True, capture_output=True)
    ck = kill_after_first_checkpoint(cmd + ["--exp-dir", str(tmp_path / "b"), "--device", "cpu"], tmp_path / "b/checkpoint.pt", env)
    assert 0 < ck["step"] < 8
    done = subprocess.run(cmd + ["--exp-dir", str(tmp_path / "b"), "--device", "cpu"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = torch.load(tmp_path / "a/model.pt", weights_only=True)
    b = torch.load(tmp_path / "b/model.pt", weights_only=True)
    assert a["features"]["content_layer"] == 12 and a["family"] == "vc"
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=0, rtol=0)
    rows = [json.loads(line) for line in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and all(np.isfinite(r["loss"]) for r in rows)


def test_cli_errors_are_one_line(prepared, tmp_path):
    root, _, _ = prepared
    out = subprocess.run([sys.executable, "-m", "speechkit.cli", "vc", "prepare", str(root / "data"), str(tmp_path / "d"),
                          "--speaker-model", str(tmp_path / "none.pt")], capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "no such speaker encoder" in out.stderr
    out = subprocess.run([sys.executable, "-m", "speechkit.cli", "vc", str(tmp_path), "--source", "a.wav", "--reference", "b.wav",
                          "--out", str(tmp_path / "o.wav")], capture_output=True, text=True)
    assert out.returncode != 0 and "neither an exported voice-conversion model" in out.stderr


def test_eval_and_convert_with_an_experiment(prepared, tmp_path):
    """`vc eval` converts the same pairs with two systems (mean flow, Euler) and writes the floor's
    and ceiling's audio beside them; `vc convert` of an experiment writes the source's length."""
    import soundfile as sf

    root, utts, _ = prepared
    (tmp_path / "vc.yaml").write_text(VC_CONFIG.replace("max_steps: 8", "max_steps: 2"))
    run = [sys.executable, "-m", "speechkit.cli", "vc"]
    subprocess.run(run + ["train", "--config", str(tmp_path / "vc.yaml"), "--dump", str(root / "dump"), "--exp-dir",
                          str(tmp_path / "exp"), "--device", "cpu"], check=True, capture_output=True)
    out = subprocess.run(run + ["eval", "--system", f"mf1={tmp_path / 'exp'}", "--system", f"fm2={tmp_path / 'exp'}:euler:2",
                                "--dump", str(root / "dump"), "--data", str(root / "data"), "--out-dir", str(tmp_path / "ev"),
                                "--judges", "none", "--device", "cpu", "--max-utts", "3", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(r["systems"]) == {"mf1", "fm2"} and r["systems"]["fm2"]["sampler"] == "euler"
    pairs = [json.loads(line) for line in (tmp_path / "ev/pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 3 and all(p["ref_utt"].split("-")[0] != p["utt"].split("-")[0] for p in pairs)
    for p in pairs:
        a = sf.read(tmp_path / "ev/wav/mf1" / f"{p['utt']}.wav")[0]
        b = sf.read(tmp_path / "ev/wav/fm2" / f"{p['utt']}.wav")[0]
        src = sf.read(tmp_path / "ev" / p["wav"])[0]
        assert abs(len(a) - len(src)) <= 3 * 640 and len(a) == len(b) and not np.allclose(a, b)
    good = [u for i, u in enumerate(utts) if i != 2]
    long_ref = next(u for u in good if u.duration >= 1.05)
    short_ref = next(u for u in good if u.duration < 0.95)
    out = subprocess.run(run + [str(tmp_path / "exp"), "--source", good[0].wav, "--reference", long_ref.wav, "--out",
                                str(tmp_path / "o.wav"), "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert abs(sf.info(str(tmp_path / "o.wav")).frames - good[0].duration * 16000) <= 3 * 640
    out = subprocess.run(run + [str(tmp_path / "exp"), "--source", good[0].wav, "--reference", short_ref.wav, "--out",
                                str(tmp_path / "o2.wav"), "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode != 0 and "needs at least 1 s" in out.stderr and out.stderr.strip().count("\n") == 0
    # the experiment exported (its speaker encoder with it) and streamed by the torch-free runtime
    out = subprocess.run(run + ["export", str(tmp_path / "exp"), str(tmp_path / "onnx")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "onnx/speaker/speaker.onnx").is_file() and (tmp_path / "onnx/step.onnx").is_file()
    out = subprocess.run(run + [str(tmp_path / "onnx"), "--source", good[0].wav, "--reference", long_ref.wav, "--out",
                                str(tmp_path / "s.wav"), "--stream"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "latency 208 ms" in out.stdout and abs(sf.info(str(tmp_path / "s.wav")).frames - good[0].duration * 16000) <= 3 * 640
