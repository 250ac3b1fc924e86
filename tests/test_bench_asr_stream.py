"""The streaming-recognizer benchmark on the shipped model: the figures it reports, its refusal of
unusable audio and of a sherpa-onnx comparison on our own CTC layout, and the ``bench asr-stream``
argument parser. No timing thresholds are asserted."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import bench_args, run_bench
from speechkit.bench.asr_stream import add_parser, bench_asr_stream, synthetic_speech
from speechkit.errors import AudioError, SpeechkitError

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "asr-stream-synth"


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "synth.wav"
    sf.write(str(path), synthetic_speech(10.0, 16000, seed=1), 16000)
    return path


@pytest.fixture(scope="module")
def result(wav) -> dict:
    return bench_asr_stream(MODEL_DIR, wav=wav, seconds=8.0, memory_seconds=70.0, progress=False)


def test_result_reports_every_figure(result, wav):
    assert result["audio"]["source"] == "wav" and result["audio"]["path"] == str(wav)
    assert result["threads"] == 1 and result["att_context"] == [64, 12]
    assert result["family"] == "ctc-streaming-conformer" and result["beam"] == 1 and result["search"] == "greedy"
    assert result["vs_sherpa"] is None
    for key in ("rtf", "chunk_ms", "chunk_compute_ms_p50", "chunk_compute_ms_p95", "feed_rtf", "audio_seconds",
                "rss_after_warmup_mb", "rss_end_mb"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert math.isfinite(result["rss_growth_mb_per_hour"])
    assert result["chunk_compute_ms_p50"] <= result["chunk_compute_ms_p95"]
    assert result["audio_seconds"] >= 8.0 and result["memory_audio_seconds"] >= 70.0
    assert result["calls"] >= result["audio_seconds"] * 1000 / result["chunk_ms"]
    # audio time alone: no partial can show before one chunk of audio was fed
    assert result["first_partial_ms"] is None or result["first_partial_ms"] >= result["chunk_ms"]
    assert result["final_after_endpoint_ms"] is None or result["final_after_endpoint_ms"] > 0
    assert result["machine"]["cpu_count"] >= 1
    json.dumps(result, allow_nan=False)


def test_a_stereo_wav_is_refused(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.zeros((16000, 2), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="channels"):
        bench_asr_stream(MODEL_DIR, wav=path, seconds=1.0, memory_seconds=0, progress=False)


def test_a_memory_run_shorter_than_the_warmup_is_refused(wav):
    with pytest.raises(SpeechkitError, match="warm-up"):
        bench_asr_stream(MODEL_DIR, wav=wav, seconds=1.0, memory_seconds=30.0, progress=False)


def test_a_comparison_with_sherpa_onnx_is_refused_on_our_ctc_layout(wav):
    with pytest.raises(SpeechkitError, match="sherpa-onnx cannot load") as e:
        bench_asr_stream(MODEL_DIR, wav=wav, seconds=1.0, memory_seconds=0, vs_sherpa=True, progress=False)
    assert "\n" not in str(e.value) and "speechkit export sherpa" in str(e.value)


def test_the_command_prints_figures_then_one_json_line(wav, tmp_path, capsys):
    args = bench_args(add_parser, ["asr-stream", MODEL_DIR, "--wav", wav, "--seconds", "2", "--memory-seconds", "0",
                                   "--beam", "3", "--json", "--out", tmp_path / "res" / "bench.json"])
    assert args.threads == 1 and args.att_context is None and not args.vs_sherpa
    lines, last = run_bench(args, capsys)
    assert last["audio_seconds"] >= 2.0 and last["rss_growth_mb_per_hour"] is None
    assert last["beam"] == 3 and last["search"] == "CTC prefix beam"
    assert any(line.startswith("rtf: ") for line in lines)
    assert "model: ctc-streaming-conformer, CTC prefix beam search (beam 3)" in lines


def test_the_command_refuses_a_malformed_context(wav):
    args = bench_args(add_parser, ["asr-stream", MODEL_DIR, "--att-context", "64"])
    with pytest.raises(SpeechkitError, match="LEFT,RIGHT"):
        args.func(args)
