"""`speechkit bench vc` on a tiny exported MeanVC (random weights: the speed of a model does not
depend on them): every figure reported and sane, the chunks it counts are the chunks the converter
makes, the JSON line equals the --out file, and anything but an export is a one-line error. No
timing thresholds are asserted."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import bench_args, run_bench
from test_vc_runtime import RATE, make_vc_export, tone

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return make_vc_export(tmp_path_factory.mktemp("vc"))


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    """Two sources (one at 22.05 kHz in stereo: the bench resamples and downmixes) and a reference."""
    import soxr

    d = tmp_path_factory.mktemp("wavs")
    sf.write(d / "src1.wav", tone(1.7, 160, 1), RATE)
    other = soxr.resample(tone(1.3, 210, 2), RATE, 22050).astype(np.float32)
    sf.write(d / "src2.wav", np.stack([other, 0.5 * other], axis=1), 22050)
    sf.write(d / "ref.wav", tone(1.5, 230, 3), RATE)
    return {"src1": d / "src1.wav", "src2": d / "src2.wav", "ref": d / "ref.wav"}


@pytest.fixture(scope="module")
def vc(exported):
    from speechkit.runtime.vc import VoiceConverter

    return VoiceConverter(exported)


def test_the_bench_reports_every_figure(exported, wavs, vc, tmp_path, capsys):
    from speechkit.audio.io import load_audio
    from speechkit.bench.vc_convert import STAGES, add_parser

    out = tmp_path / "bench" / "vc.json"
    args = bench_args(add_parser, ["vc", exported, "--source", wavs["src1"], wavs["src2"], "--reference", wavs["ref"],
                                   "--streams", "1", "3", "--stream-seconds", "1.0", "--repeats", "2", "--json", "--out", out])
    lines, r = run_bench(args, capsys)
    assert r["bench"] == "vc" and r["threads"] == 1 and r["steps"] == 1
    assert r["chunk_ms"] == 200.0 and r["latency_ms"] == vc.latency_ms > 0
    sources = [load_audio(p, RATE, resample=True, downmix=True)[0] for p in (wavs["src1"], wavs["src2"])]
    assert r["sources"]["seconds"] == pytest.approx(sum(len(x) for x in sources) / RATE, abs=1e-3)
    assert r["audio_seconds"] == pytest.approx(2 * r["sources"]["seconds"], abs=1e-3)
    # every chunk the converter makes of each source, twice; blocks: 200 ms pieces and a finish each
    chunks = sum(-(-len(vc.content.encode(x)) // vc.chunk) for x in sources)
    assert r["chunks"] == 2 * chunks
    assert r["blocks"] == 2 * sum(-(-len(x) // 3200) + 1 for x in sources)
    assert 0 < r["rtf"] and math.isfinite(r["rtf"]) and r["reference_ms"] > 0
    assert r["chunk_compute_ms_p95"] >= r["chunk_compute_ms_p50"] > 0
    assert set(r["stages"]) == set(STAGES)
    assert sum(s["share"] for s in r["stages"].values()) == pytest.approx(1.0, abs=1e-9)
    for name, s in r["stages"].items():
        assert 0 < s["share"] < 1 and s["ms_p95"] >= s["ms_p50"] > 0, name
    # the whole path of one chunk takes more than any one stage of it
    assert r["chunk_compute_ms_p50"] >= max(s["ms_p50"] for s in r["stages"].values())
    one, three = r["throughput"]
    assert (one["streams"], three["streams"]) == (1, 3)
    assert three["stream_chunks"] == 3 * one["stream_chunks"] and one["stream_chunks"] in (5, 6)  # 1 s: 25 or 26 frames
    assert three["audio_seconds"] == pytest.approx(3 * one["audio_seconds"])
    assert three["step_many_calls"] == one["step_many_calls"]  # the three streams step together
    for t in (one, three):
        assert t["stream_chunks_per_second"] > 0 and t["realtime_streams"] > 0 and 0 < t["step_many_share"] <= 1
        assert t["realtime_streams"] == pytest.approx(t["audio_seconds"] / t["compute_seconds"], rel=0.01)
        assert t["step_many_ms_p95"] >= t["step_many_ms_p50"] > 0
    assert any("rtf" in line for line in lines) and any("3 stream(s)" in line for line in lines)


def test_only_an_export_is_benchmarked(exported, wavs, run_cli, tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "model.pt").write_bytes(b"")
    for model, why in ((tmp_path / "nowhere", "not an exported voice-conversion model"),
                       (tmp_path / "exp", "a training experiment: export it first")):
        rc, out, err = run_cli("bench", "vc", model, "--source", wavs["src1"], "--reference", wavs["ref"])
        assert rc == 2 and why in err and "speechkit vc export" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run_cli("bench", "vc", exported, "--source", wavs["src1"], "--reference", wavs["ref"], "--streams", "0")
    assert rc == 2 and "must be positive" in err
    short = tmp_path / "short.wav"
    sf.write(short, tone(0.5, 200, 4), RATE)
    rc, _, err = run_cli("bench", "vc", exported, "--source", wavs["src1"], "--reference", short, "--streams")
    assert rc == 2 and "at least 1 s" in err and len(err.strip().splitlines()) == 1
