"""The exported Paraformer through the torch-free runtime: same text as PyTorch, batched equals
alone, long audio cut into segments, bad input, `speechkit transcribe` and `decode-onnx`."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import run_without_torch, TINY_ENCODER_CONF, make_tiny_data_dir
from speechkit.errors import AudioError, SpeechkitError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(exp_dir, model_dir, data_dir): a tiny random Paraformer experiment exported to ONNX."""
    from speechkit.cli import main
    from speechkit.models.asr.heads import build_asr_model
    from speechkit.text.tokenizer import train_tokenizer
    from speechkit.checkpoint import save_atomic
    from speechkit.train.config import experiment_config_from_dict

    root = tmp_path_factory.mktemp("para")
    utts = make_tiny_data_dir(root / "data", n_utts=6, seed=4)
    tok = train_tokenizer("char", [u.text for u in utts], root / "exp")
    cfg = experiment_config_from_dict({
        "encoder_conf": TINY_ENCODER_CONF, "head": "paraformer",
        "head_conf": {"decoder_blocks": 1, "attention_heads": 2, "linear_units": 32},
        "tokenizer_conf": {"type": "char"},
    })
    torch.manual_seed(2)
    model = build_asr_model(cfg.model, tok.vocab_size, tok)
    with torch.no_grad():
        model.predictor.proj.bias.fill_(1.0)  # α ≈ 0.7 a frame: a random model still fires tokens
    save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict()}, root / "exp" / "model_avg.pt")
    assert main(["export", "onnx", str(root / "exp"), str(root / "model"), "--check-data", str(root / "data")]) == 0
    return root / "exp", root / "model", root / "data"


def test_export_records_the_family_and_parity(exported):
    _, model_dir, _ = exported
    info = json.loads((model_dir / "export.json").read_text())
    assert info["model_family"] == "paraformer"
    assert len(info["parity"]) == 4 and all(r["same_tokens"] for r in info["parity"])
    assert sum(r["tokens"] for r in info["parity"]) > 0


def test_runtime_equals_pytorch_decode(exported, tmp_path, run_cli):
    from speechkit.data.kaldi import read_table

    exp, model_dir, data = exported
    assert run_cli("decode", exp, data, tmp_path / "torch", "--device", "cpu")[0] == 0
    assert run_cli("decode-onnx", model_dir, data, tmp_path / "onnx", "--batch", "4")[0] == 0
    torch_hyps = read_table(tmp_path / "torch" / "hyp", allow_empty_value=True)
    assert read_table(tmp_path / "onnx" / "hyp", allow_empty_value=True) == torch_hyps
    assert any(torch_hyps.values())


def test_batched_equals_alone_and_word_times_are_ordered(exported):
    from speechkit.runtime.paraformer import OfflineRecognizer

    _, model_dir, data = exported
    rec = OfflineRecognizer(model_dir)
    waves = [sf.read(w, dtype="float32")[0] for w in sorted((data / "wav").glob("*.wav"))]
    together = rec.recognize(waves)
    assert [r.token_ids for r in together] == [rec.recognize([w])[0].token_ids for w in waves]
    for r, w in zip(together, waves):
        starts = [s for _, s, _ in r.words]
        assert starts == sorted(starts) and all(0 <= s < e <= len(w) / rec.sample_rate + 0.1 for _, s, e in r.words)


def test_runtime_runs_with_torch_unimportable(exported):
    from speechkit.runtime.paraformer import OfflineRecognizer

    _, model_dir, data = exported
    wav = sorted((data / "wav").glob("*.wav"))[0]
    expected = OfflineRecognizer(model_dir).recognize([sf.read(wav, dtype="float32")[0]])[0].text
    out = run_without_torch(f"""
        import soundfile as sf
        from speechkit.runtime.paraformer import OfflineRecognizer
        rec = OfflineRecognizer({str(model_dir)!r})
        print(repr(rec.recognize([sf.read({str(wav)!r}, dtype="float32")[0]])[0].text))
    """)
    assert out.strip() == repr(expected)


def test_long_audio_is_cut_at_quiet_points_and_covers_everything(exported):
    from speechkit.runtime.paraformer import OfflineRecognizer

    _, model_dir, _ = exported
    rec = OfflineRecognizer(model_dir, max_segment=2.0)
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.standard_normal(16000 * 9)).astype(np.float32)
    samples[int(16000 * 1.7) : int(16000 * 1.8)] = 0.0  # a quiet 100 ms in the last third of the first window
    pieces = rec.segments(samples)
    assert sum(len(p) for _, p in pieces) == len(samples)
    assert all(len(p) <= 2 * 16000 for _, p in pieces)
    assert 1.7 * 16000 <= pieces[1][0] <= 1.8 * 16000
    result = rec.transcribe_long(samples)
    assert all(0 <= s for _, s, _ in result.words)


def test_runtime_bad_input(exported):
    from speechkit.runtime.paraformer import OfflineRecognizer

    _, model_dir, _ = exported
    rec = OfflineRecognizer(model_dir)
    with pytest.raises(AudioError, match="NaN"):
        rec.recognize([np.array([0.0, np.nan], dtype=np.float32)])
    with pytest.raises(AudioError, match="mono"):
        rec.recognize([np.zeros((10, 2), dtype=np.float32)])
    assert len(rec.prepare(np.zeros(800, dtype=np.float32), 8000)) == 1600  # other rates are resampled
    assert [r.text for r in rec.recognize([np.zeros(0, dtype=np.float32), np.zeros(30, dtype=np.float32)])] == ["", ""]
    with pytest.raises(SpeechkitError, match="not a Paraformer"):
        OfflineRecognizer(Path(__file__).parents[1] / "models" / "asr-stream-synth")
    with pytest.raises(SpeechkitError, match="no such model"):
        OfflineRecognizer(model_dir.parent / "nowhere")


def test_transcribe_cli_prints_files_in_order_and_skips_bad_ones(exported, tmp_path, run_cli):
    _, model_dir, data = exported
    wavs = sorted((data / "wav").glob("*.wav"))[:3]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    rc, out, err = run_cli("transcribe", model_dir, wavs[0], bad, wavs[1], wavs[2])
    lines = out.strip().splitlines()
    assert [line.split(" ")[0] for line in lines] == [str(w) for w in wavs]
    assert "bad.wav" in err and rc != 0
