"""egs/synth/vc/local/content_layer_probe.py: the speaker probe behind the VC content layer picks
speakers and halves as it says, scores a voice it can hear, and runs end to end on a tiny model."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechkit.audio.io import save_audio
from speechkit.checkpoint import save_atomic
from speechkit.data.kaldi import Utterance, write_data_dir
from speechkit.errors import SpeechkitError
from speechkit.text.tokenizer import train_tokenizer
from speechkit.train.asr import build_model
from speechkit.train.config import load_experiment_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def _probe():
    spec = importlib.util.spec_from_file_location("content_layer_probe", ROOT / "egs/synth/vc/local/content_layer_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _utts(counts: dict[str, int]) -> list[Utterance]:
    return [Utterance(f"{s}-{i:02d}", s, f"/x/{s}-{i:02d}.wav", "a b") for s, n in counts.items() for i in range(n)]


def test_pick_keeps_speakers_with_enough_utterances_and_alternates_halves():
    chosen, spks = _probe().pick(_utts({"a": 7, "b": 1, "c": 4}), min_utts=2, max_speakers=5)
    assert spks == ["a", "c"]  # b has one utterance
    assert [(u.utt_id, f) for u, s, f in chosen if s == "a"] == [("a-00", True), ("a-01", False), ("a-02", True), ("a-03", False)]
    _, drawn = _probe().pick(_utts({"a": 7, "b": 3, "c": 4}), min_utts=2, max_speakers=2)
    assert len(drawn) == 2 and set(drawn) < {"a", "b", "c"}
    with pytest.raises(SpeechkitError, match="two speakers"):
        _probe().pick(_utts({"a": 9, "b": 1}), min_utts=2, max_speakers=5)


def test_accuracy_hears_separable_voices_and_not_shuffled_labels():
    probe = _probe()
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    fit = np.tile([True, False], 20)
    x = rng.standard_normal((40, 8)) + 6 * np.eye(8)[y]
    assert probe.accuracy(x, y, fit) == 1.0
    noise = rng.standard_normal((40, 8))
    assert probe.accuracy(noise, y, fit) < 0.6


def test_the_probe_runs_end_to_end_and_the_fbank_row_hears_two_tones(tmp_path, capsys):
    cfg = load_experiment_config(ROOT / "egs/synth/asr/conf/train_cpu.yaml")
    exp = tmp_path / "exp"
    tok = train_tokenizer("char", ["a b"], exp)
    torch.manual_seed(0)
    model = build_model(cfg, tok.vocab_size)
    save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict()}, exp / "model.pt")
    sr, utts = 16000, []
    t = np.arange(sr) / sr
    for spk, f0 in (("low", 150.0), ("high", 900.0)):
        for i in range(4):
            wav = tmp_path / f"{spk}-{i}.wav"
            save_audio(wav, (0.3 * np.sin(2 * np.pi * f0 * (1 + 0.01 * i) * t)).astype(np.float32), sr)
            utts.append(Utterance(f"{spk}-{i}", spk, str(wav), "a b"))
    write_data_dir(tmp_path / "data", sorted(utts, key=lambda u: u.utt_id))
    out = tmp_path / "probe.json"
    assert _probe().main([str(exp), "--data", str(tmp_path / "data"), "--min-utts", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["speakers"] == 2 and r["utterances"] == 8 and r["chance"] == 0.5
    accs = r["models"][str(exp)]
    assert list(accs) == ["fbank"] + [f"block {i + 1}" for i in range(cfg.model.encoder_conf.num_blocks)]
    assert accs["fbank"] == 1.0
    # too few speakers for the probe: a one-line error, no traceback
    capsys.readouterr()
    assert _probe().main([str(exp), "--data", str(tmp_path / "data"), "--min-utts", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "need two speakers" in err[0]
