"""``speechkit bench serve-engine`` on the shipped model: a few short streams through the server's
decoding tick print the per-part table and write a JSON with every part, parts that add up to the
process's CPU time and transcripts equal to the single-stream decode; a differing transcript fails
the command. No timing thresholds are asserted."""

import json
from pathlib import Path

from speechkit.bench.serve_engine import PARTS

MODEL = Path(__file__).resolve().parents[1] / "models" / "asr-stream-synth"


def test_table_and_json(run_cli, tmp_path):
    out_file = tmp_path / "engine.json"
    code, out, err = run_cli("bench", "serve-engine", MODEL, "--streams", "3", "--seconds", "3", "--message-ms", "40",
                             "--json", "--out", out_file)
    assert code == 0, err
    r = json.loads(out_file.read_text())
    assert json.loads(out.strip().splitlines()[-1]) == r
    assert r["streams"] == 3 and r["message_ms"] == 40 and r["seconds_per_stream"] == 3 and r["distinct_signals"] == 3
    assert set(r["parts"]) == set(PARTS)
    for p, label in PARTS.items():
        assert r["parts"][p]["label"] == label and label in out
        assert r["parts"][p]["cpu_ms_per_stream_second"] >= 0
    assert r["parts"]["session"]["cpu_ms_per_stream_second"] > 0 and r["parts"]["fbank"]["cpu_ms_per_stream_second"] > 0
    total = sum(v["cpu_ms_per_stream_second"] for v in r["parts"].values())
    assert abs(total - r["total_cpu_ms_per_stream_second"]) < 0.01
    assert abs(sum(v["share"] for v in r["parts"].values()) - 1) < 0.01
    assert abs(r["parts_and_driver_over_process_cpu"] - 1) < 0.03
    assert r["transcripts_equal_single_stream"] is True and r["mismatched_streams"] == []
    assert all(r["single_stream_texts"])  # speech: the streams decoded words, not silence
    assert r["engine"]["stream_chunks"] >= 3 * 5  # 3 s of audio is 6 chunks of 520 ms a stream
    assert "CPU ms per stream-second" in out and "transcripts equal to the single-stream decode: yes" in out


def test_a_differing_transcript_fails(run_cli, monkeypatch):
    from speechkit.runtime.asr import OnlineRecognizer

    monkeypatch.setattr(OnlineRecognizer, "transcribe", lambda self, samples, rate=None: "not what the engine heard")
    code, out, err = run_cli("bench", "serve-engine", MODEL, "--streams", "2", "--seconds", "1", "--message-ms", "100")
    assert code != 0
    assert "transcripts equal to the single-stream decode: NO" in out
    assert "differs from the single-stream decode" in err and len(err.strip().splitlines()) == 1


def test_a_data_dir_gives_its_first_utterances_only(tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    from speechkit.bench import serve_engine

    lines = []
    for i, seconds in enumerate((0.5, 0.25, 1.0)):
        sf.write(tmp_path / f"u{i}.wav", np.full(int(16000 * seconds), 0.01 * (i + 1), np.float32), 16000)
        lines.append(f"u{i} {tmp_path / f'u{i}.wav'}\n")
    (tmp_path / "wav.scp").write_text("".join(lines))
    monkeypatch.setattr(serve_engine, "DATA_UTTERANCES", 2)
    speech, info = serve_engine.load_speech(16000, None, str(tmp_path))
    assert info["source"] == "data" and info["files"] == 2 and info["seconds"] == 0.75
    assert speech.size == 12000
