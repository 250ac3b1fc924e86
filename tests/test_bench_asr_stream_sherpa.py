"""``bench asr-stream`` on sherpa-format folders: a tiny hybrid experiment (the CPU config's model,
random weights, its joiner biased so symbols appear) exported by ``speechkit export sherpa`` as a
transducer and as a zipformer2 CTC; the bench opens each by family, records the search, and with
``--vs-sherpa`` decodes the same pieces with sherpa-onnx's C++ runtime: both sides' figures exist
and are finite, both decode the same chunks, the texts agree. Bad usage is refused in one line.
No timing thresholds are asserted."""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import bench_args, make_tiny_data_dir, run_bench
from speechkit.audio.fbank import compute_fbank
from speechkit.audio.io import load_audio
from speechkit.bench.asr_stream import add_parser, bench_asr_stream, synthetic_speech, text_agreement
from speechkit.bench.sherpa_ref import sherpa_recognizer
from speechkit.checkpoint import save_atomic
from speechkit.cli import main
from speechkit.errors import SpeechkitError
from speechkit.models.asr.heads import build_asr_model
from speechkit.text.tokenizer import train_tokenizer
from speechkit.train.config import load_experiment_config
from test_transducer_e2e import CPU_CONFIG, _bias_joiner

SR = 16000
SECONDS = 3.0  # the timed run; the latency run and the comparison each decode this much
FIGURES = ("rtf", "chunk_compute_ms_p50", "chunk_compute_ms_p95", "feed_rtf")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """The tiny hybrid exported twice → {"transducer": folder, "ctc": folder, "wav": a 6 s wav}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("bench_sherpa")
        utts = make_tiny_data_dir(root / "data", n_utts=3, seed=5)
        exp = root / "exp"
        tok = train_tokenizer("char", [u.text for u in utts], exp)
        cfg = load_experiment_config(CPU_CONFIG)
        torch.manual_seed(0)
        model = build_asr_model(cfg.model, tok.vocab_size).eval()
        _bias_joiner(model, [compute_fbank(load_audio(u.wav, SR)[0]) for u in utts])
        save_atomic({"model": model.state_dict(), "config": cfg.to_yaml_dict()}, exp / "model_avg.pt")
        with contextlib.redirect_stdout(io.StringIO()):
            for head in ("transducer", "ctc"):
                assert main(["export", "sherpa", str(exp), str(root / head), "--att-context", "16,3", "--head", head]) == 0
    finally:
        torch.set_num_threads(threads)
    wav = root / "speech.wav"
    sf.write(str(wav), synthetic_speech(6.0, SR, seed=2), SR)
    return {"transducer": root / "transducer", "ctc": root / "ctc", "wav": wav}


@pytest.fixture(scope="module")
def greedy(folders) -> dict:
    return bench_asr_stream(folders["transducer"], wav=folders["wav"], seconds=SECONDS, memory_seconds=0,
                            vs_sherpa=True, progress=False)


def check_comparison(v: dict, chunk_ms: float, min_words: int = 5) -> None:
    """Both sides' figures finite and positive, the same whole chunks decoded, the texts equal
    and not empty (the CTC head of this random model spells no word boundary: one long word)."""
    for side in ("ours", "sherpa"):
        for key in FIGURES:
            assert math.isfinite(v[side][key]) and v[side][key] > 0, (side, key)
        assert v[side]["chunk_compute_ms_p50"] <= v[side]["chunk_compute_ms_p95"]
    assert v["ours"]["calls"] == v["sherpa"]["calls"] == math.ceil(SECONDS * 1000 / chunk_ms)
    assert v["rtf_ratio"] == pytest.approx(v["ours"]["rtf"] / v["sherpa"]["rtf"])
    assert v["p50_ratio"] == pytest.approx(v["ours"]["chunk_compute_ms_p50"] / v["sherpa"]["chunk_compute_ms_p50"])
    assert v["texts_equal"] and v["text_wer"] == 0.0 and v["words"] >= min_words
    assert v["sherpa_onnx"] and v["sherpa_onnxruntime"]


def test_transducer_greedy_against_sherpa(greedy, folders):
    r = greedy
    assert r["family"] == "transducer-streaming-conformer" and r["beam"] == 1 and r["search"] == "greedy"
    assert r["att_context"] == [16, 3] and r["chunk_ms"] == 160.0 and r["audio"]["path"] == str(folders["wav"])
    for key in FIGURES:
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["calls"] >= SECONDS * 1000 / r["chunk_ms"] and r["rss_growth_mb_per_hour"] is None
    check_comparison(r["vs_sherpa"], r["chunk_ms"])
    json.dumps(r, allow_nan=False)


def test_the_command_runs_modified_beam_search_on_both_sides(folders, tmp_path, capsys):
    args = bench_args(add_parser, ["asr-stream", folders["transducer"], "--wav", folders["wav"], "--seconds", SECONDS,
                                   "--memory-seconds", "0", "--beam", "4", "--vs-sherpa", "--json", "--out", tmp_path / "b.json"])
    lines, last = run_bench(args, capsys)
    assert last["beam"] == 4 and last["search"] == "modified beam"
    check_comparison(last["vs_sherpa"], last["chunk_ms"])
    assert "model: transducer-streaming-conformer, modified beam search (beam 4)" in lines
    assert any(line.startswith("vs sherpa-onnx rtf: ours ") for line in lines)
    assert any(line.startswith("vs sherpa-onnx texts: equal") for line in lines)
    # sherpa-onnx searched with the same beam, not greedily
    config = sherpa_recognizer(folders["transducer"], beam=4).config
    assert config.decoding_method == "modified_beam_search" and config.max_active_paths == 4


def test_sherpa_ctc_folder_against_sherpa(folders):
    r = bench_asr_stream(folders["ctc"], wav=folders["wav"], seconds=SECONDS, memory_seconds=0, vs_sherpa=True, progress=False)
    assert r["family"] == "ctc-streaming-conformer-sherpa" and r["beam"] == 1 and r["search"] == "greedy"
    check_comparison(r["vs_sherpa"], r["chunk_ms"], min_words=1)
    with pytest.raises(SpeechkitError, match="greed"):
        bench_asr_stream(folders["ctc"], wav=folders["wav"], seconds=1.0, memory_seconds=0, beam=2, progress=False)


def test_without_the_flag_there_is_no_comparison(folders):
    r = bench_asr_stream(folders["transducer"], wav=folders["wav"], seconds=1.0, memory_seconds=0, progress=False)
    assert r["vs_sherpa"] is None and r["search"] == "greedy"


def test_bad_usage_is_refused_in_one_line(folders, monkeypatch):
    wav = folders["wav"]
    with pytest.raises(SpeechkitError, match="beam must be a positive integer") as bad_beam:
        bench_asr_stream(folders["transducer"], wav=wav, seconds=1.0, memory_seconds=0, beam=0, progress=False)
    monkeypatch.setitem(sys.modules, "sherpa_onnx", None)  # as if it were not installed
    with pytest.raises(SpeechkitError, match="pip install sherpa-onnx") as missing:
        bench_asr_stream(folders["transducer"], wav=wav, seconds=1.0, memory_seconds=0, vs_sherpa=True, progress=False)
    assert "\n" not in str(bad_beam.value) + str(missing.value)


def test_text_agreement():
    assert text_agreement("a b  c", " a b c") == {"texts_equal": True, "text_wer": 0.0, "words": 3}
    assert text_agreement("a x c d", "a b c") == {"texts_equal": False, "text_wer": pytest.approx(2 / 3), "words": 3}
    assert text_agreement("a", "") == {"texts_equal": False, "text_wer": None, "words": 0}
    assert text_agreement("", "")["texts_equal"]
