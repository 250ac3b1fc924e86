"""The speaker encoder: an embedding of fixed size and unit length whatever the input's length; a
tiny model trained on a tiny espeak-ng corpus separates voices it never heard far better than
before training; a SIGKILLed run resumes to the uninterrupted weights; `speechkit speaker embed`
and `eval` handle any sample rate and channel count, and refuse short or silent input in one line."""

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
from speechkit.errors import ConfigError, SpeechkitError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_ENCODER = {"channels": 64, "res2_scale": 4, "se_channels": 16, "mfa_channels": 192, "attention_channels": 16, "embed_dim": 64}
TINY_CONFIG = f"""\
encoder: ecapa
encoder_conf: {json.dumps(TINY_ENCODER)}
optim_conf: {{lr: 0.005, warmup_steps: 20}}
train_conf: {{max_steps: 300, batch_size: 16, segment_seconds: 1.5, margin_warmup_steps: 150, log_interval: 50,
             save_interval_steps: 1000, nj: 1}}
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A 0.1 h espeak-ng corpus: ~70 training utterances of ~65 voices; test_unseen holds 15 voices
    never heard in training, one utterance each."""
    from speechkit.data.synth.corpus import build_synth_corpus

    out = tmp_path_factory.mktemp("speaker") / "corpus"
    build_synth_corpus(out, hours=0.1, seed=0, nj=2, engines="espeak-ng")
    return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """An experiment dir of the tiny encoder trained on the corpus's train split (~15 s on one thread)."""
    from speechkit.train.speaker import load_speaker_experiment, train_speaker

    root = tmp_path_factory.mktemp("speaker_exp")
    (root / "conf.yaml").write_text(TINY_CONFIG)
    exp = load_speaker_experiment(root / "conf.yaml")
    threads = torch.get_num_threads()  # a module fixture runs before the tests' one_thread: the same here
    torch.set_num_threads(1)
    try:
        info = train_speaker(exp, [corpus / "train"], root / "exp", "cpu", eval_dirs=[corpus / "test_unseen"])
    finally:
        torch.set_num_threads(threads)
    assert info["steps"] == 300
    return root / "exp"


def test_embedding_is_length_independent_and_unit_length():
    from speechkit.models.speaker.ecapa import EcapaConfig, EcapaTdnn

    torch.manual_seed(0)
    model = EcapaTdnn(EcapaConfig(**TINY_ENCODER)).eval()
    short, long = torch.randn(3, 40, 80), torch.randn(3, 700, 80)
    with torch.no_grad():
        a, b = model.embed(short), model.embed(long)
        shifted = model.embed(short + 3.0)  # a constant gain in the log-mel domain
    assert a.shape == b.shape == (3, TINY_ENCODER["embed_dim"])
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5) and torch.allclose(b.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(a, shifted, atol=1e-5)  # mean-normalised per input
    assert (a[0] - a[1]).abs().max() > 1e-3  # different inputs, different embeddings


def test_aam_margin_lowers_the_target_logit():
    from speechkit.models.speaker.ecapa import AamConfig, AamSoftmax

    torch.manual_seed(0)
    head = AamSoftmax(8, 5, AamConfig(margin=0.2, scale=30.0))
    emb, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    plain, _ = head(emb, labels, margin=0.0)
    margined, _ = head(emb, labels)
    assert margined > plain
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(head.weight).T
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(30.0 * cos, labels), atol=1e-5)


def test_equal_error_rate():
    from speechkit.models.speaker.scoring import equal_error_rate

    assert equal_error_rate(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 0.0
    assert equal_error_rate(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 1.0
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000)])
    assert abs(equal_error_rate(scores, np.arange(40000) < 20000) - 0.1587) < 0.01  # Φ(-1)
    with pytest.raises(SpeechkitError, match="same- and different-speaker"):
        equal_error_rate(np.array([0.5, 0.4]), np.array([0, 0]))


def test_config_errors_name_the_line(tmp_path):
    from speechkit.train.speaker import load_speaker_experiment

    conf = tmp_path / "c.yaml"
    conf.write_text("encoder: ecapa\nencoder_conf:\n  channelz: 64\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: unknown key 'encoder_conf.channelz'"):
        load_speaker_experiment(conf)
    conf.write_text("encoder: xvector\n")
    with pytest.raises(ConfigError, match=r"c.yaml:1: unknown encoder 'xvector'"):
        load_speaker_experiment(conf)
    conf.write_text("encoder_conf: {channels: 100, res2_scale: 8}\n")
    with pytest.raises(ConfigError, match="multiple of res2_scale"):
        load_speaker_experiment(conf)


def test_training_separates_unseen_voices(trained, corpus):
    """Same-speaker pairs (the two halves of each held-out voice's utterance) against pairs of
    different held-out voices: the EER after training is far below chance and far below the
    untrained model's."""
    from speechkit.models.speaker.ecapa import EcapaConfig, EcapaTdnn
    from speechkit.models.speaker.scoring import evaluate_data_dir

    after = json.loads((trained / "eer.json").read_text())["results"][0]
    assert after["segments_per_utt"] == 2 and after["target_trials"] == 15 and after["nontarget_trials"] == 420
    torch.manual_seed(0)
    before = evaluate_data_dir(EcapaTdnn(EcapaConfig(**TINY_ENCODER)), corpus / "test_unseen")
    print(f"EER on test_unseen: {after['eer']:.3f} trained, {before['eer']:.3f} untrained")
    assert after["eer"] < 0.35
    assert after["eer"] < before["eer"] - 0.15
    assert after["target_score_mean"] > after["nontarget_score_mean"] + 0.2


def test_embed_and_eval_commands(trained, corpus, run_cli, tmp_path):
    import soundfile as sf
    import soxr

    from speechkit.data.kaldi import read_table

    wav = next(iter(read_table(corpus / "test_unseen" / "wav.scp").values()))
    x, rate = sf.read(wav, dtype="float32")
    stereo = soxr.resample(x, rate, 44100)
    sf.write(tmp_path / "stereo44k.wav", np.stack([stereo, stereo], axis=1), 44100)
    rc, out, err = run_cli("speaker", "embed", trained, wav, tmp_path / "stereo44k.wav", "--out", tmp_path / "emb.npy")
    assert rc == 0, err
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (2, TINY_ENCODER["embed_dim"]) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > 0.95  # the same audio at another rate, in two channels

    # one bad file among good ones: reported in one line, a NaN row, the others keep theirs
    sf.write(tmp_path / "silent.wav", np.zeros(rate, np.float32), rate)
    rc, out, err = run_cli("speaker", "embed", trained, wav, tmp_path / "silent.wav", wav, "--out", tmp_path / "emb3.npy")
    three = np.load(tmp_path / "emb3.npy")
    assert rc != 0 and "skipped" in err and "Traceback" not in err
    assert np.isnan(three[1]).all() and np.allclose(three[0], emb[0], atol=1e-5) and np.allclose(three[2], emb[0], atol=1e-5)

    # longer than 1.5 windows: embedded window by window, the result still one unit vector
    from speechkit.models.speaker import embed

    long = np.concatenate([x] * int(np.ceil(1.6 * embed.WINDOW_SECONDS * rate / len(x))))
    sf.write(tmp_path / "long.wav", long, rate)
    rc, out, err = run_cli("speaker", "embed", trained, tmp_path / "long.wav")
    values = np.array(out.split()[1:], dtype=np.float32)
    assert rc == 0 and values.shape == (TINY_ENCODER["embed_dim"],) and abs(np.linalg.norm(values) - 1) < 1e-3

    rc, out, err = run_cli("speaker", "eval", trained, corpus / "test_unseen", "--json")
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["eer"] == json.loads((trained / "eer.json").read_text())["results"][0]["eer"]


def test_short_or_silent_input_is_one_line_error(trained, run_cli, tmp_path):
    import soundfile as sf

    from speechkit.models.speaker.embed import embed_file
    from speechkit.models.speaker.io import load_speaker_encoder

    sf.write(tmp_path / "short.wav", 0.3 * np.sin(np.arange(4000) / 5.0).astype(np.float32), 16000)  # 0.25 s
    sf.write(tmp_path / "silent.wav", np.zeros(48000, np.float32), 48000)
    sf.write(tmp_path / "hum.wav", 0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000).astype(np.float32), 16000)
    model = load_speaker_encoder(trained)
    with pytest.raises(SpeechkitError, match="0.25 s of audio; a speaker embedding needs at least 0.5 s"):
        embed_file(model, tmp_path / "short.wav")
    for name in ("silent.wav", "hum.wav"):
        with pytest.raises(SpeechkitError, match="no speech found"):
            embed_file(model, tmp_path / name)
        rc, out, err = run_cli("speaker", "embed", trained, tmp_path / name)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no speech found" in err
    rc, _, err = run_cli("speaker", "embed", tmp_path / "nothing", tmp_path / "short.wav")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no such checkpoint" in err


def test_every_command_has_help(capsys):
    from speechkit.cli import build_parser

    for action in ("train", "embed", "eval"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["speaker", action, "--help"])
        assert e.value.code == 0 and "usage: " in capsys.readouterr().out


RESUME_CONFIG = """\
encoder: ecapa
encoder_conf: {channels: 16, res2_scale: 4, se_channels: 8, mfa_channels: 32, attention_channels: 8, embed_dim: 8}
optim_conf: {warmup_steps: 2}
train_conf: {max_steps: 12, batch_size: 4, segment_seconds: 0.5, margin_warmup_steps: 6, log_interval: 1,
             save_interval_steps: 3, nj: 1}
"""


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    make_tiny_data_dir(tmp_path / "data", n_utts=6, n_speakers=3)
    (tmp_path / "conf.yaml").write_text(RESUME_CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def cmd(exp: str) -> list[str]:
        return [sys.executable, "-m", "speechkit.cli", "speaker", "train", "--config", str(tmp_path / "conf.yaml"),
                "--data", str(tmp_path / "data"), "--exp-dir", str(tmp_path / exp), "--device", "cpu"]

    subprocess.run(cmd("full"), check=True, env=env, capture_output=True)
    state = kill_after_first_checkpoint(cmd("killed"), tmp_path / "killed" / "checkpoint.pt", env)
    assert 0 < state["step"] < 12 and not (tmp_path / "killed" / "model.pt").exists(), \
        "the kill should land mid-run, after the first checkpoint"
    resumed = subprocess.run(cmd("killed"), check=True, env=env, capture_output=True, text=True)
    assert "resuming from" in resumed.stderr

    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    again = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert full["config"] == again["config"] and full["model"].keys() == again["model"].keys()
    for k in full["model"]:
        assert torch.equal(full["model"][k], again["model"][k]), f"{k} differs after resume"
    head = "head.weight"
    ck_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    ck_again = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["model"]
    assert torch.equal(ck_full[head], ck_again[head])

    # a checkpoint of another speaker set stops in one line instead of deep in load_state_dict
    make_tiny_data_dir(tmp_path / "two", n_utts=6, n_speakers=2)
    from speechkit.train.speaker import load_speaker_experiment, train_speaker

    with pytest.raises(SpeechkitError, match="trained on 3 speakers, these data dirs have 2"):
        train_speaker(load_speaker_experiment(tmp_path / "conf.yaml"), [tmp_path / "two"], tmp_path / "killed", "cpu")
