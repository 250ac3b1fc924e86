"""`speechkit bench tts`: the grid it promises (with the flow head, transformer step and codec per
latent, and per utterance phonemisation, prompt encoding and prefix, on one CPU thread), one JSON
line last, the same for a config (random weights) and a trained experiment; bad input refused in one
line; an exported model (or any with --onnx, int8 too) timed through the ONNX runtime. Figures are
not asserted beyond being there and adding up."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import bench_args, run_bench
from speechkit.bench.tts_synth import add_parser
from speechkit.errors import SpeechkitError

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
CODEC = ROOT / "models" / "codec-vae-synth"
CONFIG = ROOT / "egs" / "synth" / "tts" / "conf" / "train_clear_cpu.yaml"


def _args(model, *extra: str):
    return bench_args(add_parser, ["tts", model, "--codec", CODEC, "--device", "cpu", "--frames", "6", "--text", "hello there",
                                   "--repeats", "1", "--steps", "1,2", "--chunk-frames", "2,4", *extra])


def _check(r: dict, lines: list[str], path: str = "eager") -> None:
    assert r["device"].startswith("cpu") and r["path"] == path
    assert r["torch"] == torch.__version__ if path == "eager" else r["flow_objective"] == "rectified"
    assert r["threads"] == 1 and "1 thread(s)" in r["device"]  # the default: one CPU thread
    assert (r["frames"], r["text"], r["repeats"]) == (6, "hello there", 1) and r["phonemes"] > 5
    assert r["audio_seconds"] == pytest.approx(6 / 25)
    assert [(row["steps"], row["chunk_frames"]) for row in r["rows"]] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    for row in r["rows"]:
        assert row["rtf"] > 0 and row["loop_ms_per_latent"] > 0 and row["codec_ms_per_latent"] > 0
        assert row["flow_ms_per_latent"] > 0 and row["step_ms_per_latent"] > 0
        assert row["first_audio_ms"] >= row["first_latent_ms"] > 0
    u = r["utterance"]
    assert u["phonemiser"].startswith("resident espeak-ng") and u["prompt_seconds"] == 3.0
    assert u["phonemise_ms"] > 0 and u["phonemiser_start_ms"] > 0 and u["prompt_encode_ms"] > 0 and u["prefix_ms"] > 0
    assert len(lines) == 2 + 4 + 1  # title, header, one line per (steps, chunk), the per-utterance line
    assert lines[1].split()[-4:] == ["loop/latent", "flow/latent", "step/latent", "codec/latent"]
    assert lines[-1].startswith("per utterance: phonemise") and "prompt encode" in lines[-1] and "prefix" in lines[-1]
    json.dumps(r, allow_nan=False)


def test_a_config_is_benchmarked_with_random_weights(tmp_path, capsys):
    lines, r = run_bench(_args(CONFIG, "--json", "--out", str(tmp_path / "res" / "bench.json")), capsys)
    assert "random weights" in r["model"] and "random weights" in lines[0]
    _check(r, lines)


def test_a_trained_experiment_is_benchmarked_the_same_way(tmp_path, capsys):
    from speechkit.models.tts.clear import ClearTTS
    from speechkit.models.tts.io import save_tts
    from speechkit.train.tts import load_tts_experiment
    from speechkit.text.phonemes import PhonemeVocab, text_to_phonemes

    vocab = PhonemeVocab.build(text_to_phonemes(["hello"]))  # "there" has symbols it lacks: <unk>, as in synthesis
    model = ClearTTS(dataclasses.replace(load_tts_experiment(CONFIG).model, vocab_size=len(vocab)))
    (tmp_path / "exp").mkdir()
    save_tts(model, vocab.symbols, str(CODEC), tmp_path / "exp" / "model.pt")
    lines, r = run_bench(_args(tmp_path / "exp", "--json"), capsys)
    assert r["model"] == str(tmp_path / "exp")
    _check(r, lines)


def test_the_onnx_runtime_is_benchmarked_from_an_export_or_with_onnx(tmp_path, capsys):
    lines, r = run_bench(_args(CONFIG, "--onnx", "--int8", "--json"), capsys)
    assert r["model"] == f"{CONFIG} exported int8 (weights)" and "onnxruntime" in r["device"]
    _check(r, lines, "onnx runtime")
    from speechkit.cli import main
    from speechkit.models.tts.io import save_tts

    from speechkit.bench.tts_synth import load_model

    model, vocab, _, _ = load_model(str(CONFIG), str(CODEC), torch.device("cpu"), "hello there")
    (tmp_path / "exp").mkdir()
    vocab.save(tmp_path / "exp" / "phones.txt")
    save_tts(model, vocab.symbols, str(CODEC), tmp_path / "exp" / "model.pt")
    assert main(["tts", "export", str(tmp_path / "exp"), str(tmp_path / "onnx"), "--codec-dir", str(CODEC)]) == 0
    lines, r = run_bench(_args(tmp_path / "onnx", "--json"), capsys)
    assert r["model"] == str(tmp_path / "onnx") and r["codec"] == str(CODEC.resolve())
    _check(r, lines, "onnx runtime")


def test_bad_input_is_refused():
    for model, message in (("nowhere.yaml", "no such config"), ("nowhere", "neither an experiment dir")):
        args = _args(model)
        with pytest.raises(SpeechkitError, match=message):
            args.func(args)
    with pytest.raises(SystemExit):
        _args(CONFIG, "--steps", "0")
    args = _args(CONFIG, "--int8")
    with pytest.raises(SpeechkitError, match="--int8 is an export option: add --onnx"):
        args.func(args)
    args = _args(CONFIG, "--onnx", "--frames", "500")
    with pytest.raises(SpeechkitError, match="--frames 500: the runtime stops"):
        args.func(args)
