"""Long and strange inputs in bounded memory (DESIGN.md, "Bounded memory"; issue 19).

A 20-minute file of synthetic speech and silence (written to disk a block at a time) goes
through `speechkit transcribe` with both ASR families, `speechkit decode-onnx` and the Python
API, and a 2-minute one through `speechkit codec resynth` (the codec runs at RTF ≈ 0.12 on one
CPU thread: 20 minutes would take 2.5 minutes alone). Each runs in a fresh process whose peak
resident memory (the kernel's ru_maxrss for that child) must stay within ``GROWTH_MB`` of the same
command on a 2-minute (codec: 30-second) file and under an absolute cap: a whole-file load of
the 20-minute file would add 77 MB as float32, and the old code grew by GBs (the codec by 5 GB
for 2 minutes). A data dir with the huge file and a broken one still decodes the rest; silence,
low noise and tones give no text with either family, and the speech-activity gate leaves the
text of real speech unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechkit.data.synth.engines import Prosody, Voice, synthesize

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
STREAM, PARAFORMER, CODEC = MODELS / "asr-stream-synth", MODELS / "asr-paraformer-synth", MODELS / "codec-vae-synth"
RATE = 16000
GROWTH_MB = 40.0  # peak RSS on the long file minus peak RSS on the short one
TEXTS = ["a quiet garden behind the old library", "the committee met on tuesday to vote",
         "seven boats sailed across the bay at dawn", "please bring the blue folder to my office"]


def write_long(path: Path, seconds: float, utterances: list[np.ndarray]) -> Path:
    """Utterances in turn with 0.3-1.2 s pauses and 10 s of silence after every 20th, written a
    block at a time (the file is never in memory)."""
    rng = np.random.default_rng(0)
    total, done, i = int(seconds * RATE), 0, 0
    with sf.SoundFile(str(path), "w", RATE, 1, "PCM_16") as f:
        while done < total:
            pause = 10.0 if i % 20 == 19 else rng.uniform(0.3, 1.2)
            for x in (utterances[i % len(utterances)], np.zeros(int(pause * RATE), np.float32)):
                x = x[: total - done]
                f.write(x)
                done += len(x)
            i += 1
    return path


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("long")
    utts = [synthesize(Voice("espeak-ng", v, f"espeak-{i}"), t, Prosody(peak=0.5))
            for i, (v, t) in enumerate(zip(["en-us", "en-gb+m3", "en-us+f3", "en"], TEXTS))]
    files = {"utts": utts}
    for name, seconds in (("2min", 120), ("20min", 1200), ("30s", 30), ("12s", 12)):
        files[name] = write_long(d / f"{name}.wav", seconds, utts)
    for name in ("2min", "20min"):  # a data dir: the long file, a broken one and two short ones
        dd = d / f"data_{name}"
        dd.mkdir()
        (dd / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt not really audio")
        for i in range(2):
            sf.write(dd / f"short{i}.wav", utts[i], RATE, subtype="PCM_16")
        rows = {"a-long": files[name], "b-broken": dd / "broken.wav", "c-short0": dd / "short0.wav", "c-short1": dd / "short1.wav"}
        (dd / "wav.scp").write_text("".join(f"{k} {w}\n" for k, w in rows.items()))
        (dd / "text").write_text("".join(f"{k} x\n" for k in rows))
        (dd / "utt2spk").write_text("".join(f"{k} {k}\n" for k in rows))
        (dd / "spk2utt").write_text("".join(f"{k} {k}\n" for k in rows))
        files[f"data_{name}"] = dd
    return files


# Runs ``python ARGS...`` inside a process that writes its own VmHWM (peak resident memory of the
# image after exec) at exit. The kernel's ru_maxrss of a child would not do: it keeps the high-water
# mark of the forked copy of this test process, which a long pytest run has grown past the bounds.
_RUNNER = """
import atexit, os, runpy, sys

def _report():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["SPEECHKIT_TEST_PEAK_FILE"], "w") as f:
        f.write(kb)

atexit.register(_report)
flag, what, *rest = sys.argv[1:]
sys.argv = [what if flag == "-m" else "-c", *rest]
if flag == "-m":
    runpy.run_module(what, run_name="__main__", alter_sys=True)
else:
    exec(compile(what, "<string>", "exec"), {"__name__": "__main__"})
"""


def peak_rss(*args) -> tuple[float, str, str]:
    """Run ``python -m MODULE ARGS...`` or ``python -c CODE ARGS...`` in a fresh process → (its peak
    RSS in MB, stdout, stderr); fails on a non-zero exit."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        runner, peak = Path(tmp) / "runner.py", Path(tmp) / "peak"
        runner.write_text(_RUNNER)
        env = dict(os.environ, OMP_NUM_THREADS="1", SPEECHKIT_TEST_PEAK_FILE=str(peak))
        p = subprocess.run([sys.executable, str(runner), *map(str, args)], stdout=out, stderr=err, cwd=ROOT, env=env)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
        assert p.returncode == 0, stderr[-2000:]
        return int(peak.read_text()) / 1024.0, stdout, stderr


def assert_bounded(short_mb: float, long_mb: float, cap_mb: float) -> None:
    assert long_mb <= short_mb + GROWTH_MB, f"peak RSS grew from {short_mb:.0f} MB to {long_mb:.0f} MB"
    assert long_mb <= cap_mb, f"peak RSS {long_mb:.0f} MB over {cap_mb:.0f} MB"


def cli(*args) -> tuple[float, str, str]:
    return peak_rss("-m", "speechkit.cli", *args)


@pytest.mark.parametrize("model", [STREAM, PARAFORMER], ids=["streaming", "paraformer"])
def test_transcribe_20_minutes_in_bounded_memory(audio, model):
    short, _, _ = cli("transcribe", model, audio["2min"])
    long, out, _ = cli("transcribe", model, audio["20min"])
    assert_bounded(short, long, cap_mb=900.0)
    path, text = out.strip().split(" ", 1)
    assert path == str(audio["20min"])
    assert text.count("library") >= 20  # a "library" in most of the 57 rounds of the four sentences


def test_decode_onnx_20_minutes_next_to_a_broken_file(audio, tmp_path):
    from speechkit.data.kaldi import read_table

    short, _, _ = cli("decode-onnx", PARAFORMER, audio["data_2min"], tmp_path / "short")
    long, _, err = cli("decode-onnx", PARAFORMER, audio["data_20min"], tmp_path / "long")
    assert_bounded(short, long, cap_mb=900.0)
    hyps = read_table(tmp_path / "long" / "hyp", allow_empty_value=True)
    assert sorted(hyps) == ["a-long", "c-short0", "c-short1"] and all(hyps.values())
    skipped = (tmp_path / "long" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(str(audio["data_20min"] / "broken.wav"))
    assert "broken.wav" in err and "Traceback" not in err


def test_decode_onnx_streaming_skips_the_broken_file(audio, tmp_path, run_cli):
    from speechkit.data.kaldi import read_table

    rc, _, err = run_cli("decode-onnx", STREAM, audio["data_2min"], tmp_path / "out", "--batch", "3")
    assert rc == 0 and "broken.wav" in err
    hyps = read_table(tmp_path / "out" / "hyp", allow_empty_value=True)
    assert sorted(hyps) == ["a-long", "c-short0", "c-short1"] and "library" in hyps["a-long"]
    assert "broken.wav" in (tmp_path / "out" / "skipped.txt").read_text()


def test_python_api_20_minutes_in_bounded_memory(audio):
    code = "import sys, speechkit; print(speechkit.load(sys.argv[1]).transcribe(sys.argv[2]).text)"
    short, _, _ = peak_rss("-c", code, PARAFORMER, audio["2min"])
    long, out, _ = peak_rss("-c", code, PARAFORMER, audio["20min"])
    assert_bounded(short, long, cap_mb=600.0)
    assert out.count("library") >= 20


def test_codec_resynth_in_bounded_memory_equals_whole_file_codec(audio, tmp_path):
    from speechkit.runtime.codec import CodecRuntime

    short, _, _ = cli("codec", "resynth", CODEC, audio["30s"], tmp_path / "30s.wav")
    long, _, _ = cli("codec", "resynth", CODEC, audio["2min"], tmp_path / "2min.wav")
    assert_bounded(short, long, cap_mb=1000.0)  # the whole-file codec took 5 GB for 2 minutes
    assert sf.info(str(tmp_path / "2min.wav")).frames == sf.info(str(audio["2min"])).frames
    x = sf.read(audio["30s"], dtype="float32")[0]
    codec = CodecRuntime(CODEC)
    whole = codec.stream().decode(codec._encode(x))[: len(x)]  # one encoder and one decoder call
    assert np.abs(sf.read(tmp_path / "30s.wav", dtype="float32")[0] - whole).max() < 2e-4  # 16-bit rounding


def test_codec_encode_then_decode_equals_resynth(audio, tmp_path, run_cli):
    """12 s: two encoder blocks of 10 s, the second with the first's tail as context."""
    from speechkit.runtime.codec import CodecRuntime

    assert run_cli("codec", "encode", CODEC, audio["12s"], tmp_path / "z.npy")[0] == 0
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (64, 300)
    assert np.abs(z - CodecRuntime(CODEC)._encode(sf.read(audio["12s"], dtype="float32")[0])).max() < 1e-4
    assert run_cli("codec", "decode", CODEC, tmp_path / "z.npy", tmp_path / "y.wav")[0] == 0
    assert run_cli("codec", "resynth", CODEC, audio["12s"], tmp_path / "r.wav")[0] == 0
    y, r = sf.read(tmp_path / "y.wav", dtype="float32")[0], sf.read(tmp_path / "r.wav", dtype="float32")[0]
    assert len(y) == len(r) == 12 * RATE and np.abs(y - r).max() < 2e-4


def non_speech() -> dict[str, np.ndarray]:
    rng, t = np.random.default_rng(1), np.arange(6 * RATE) / RATE
    sounds = {"digital silence": np.zeros(6 * RATE), "noise at -60 dBFS": 1e-3 * rng.standard_normal(6 * RATE),
              "noise at -40 dBFS": 1e-2 * rng.standard_normal(6 * RATE)}
    for hz in (100, 440, 1000, 3000):
        sounds[f"{hz} Hz tone"] = 0.3 * np.sin(2 * np.pi * hz * t)
    sounds["tone after silence"] = np.concatenate([np.zeros(RATE), 0.3 * np.sin(2 * np.pi * 440 * t)])
    return {k: v.astype(np.float32) for k, v in sounds.items()}


@pytest.mark.parametrize("model", [STREAM, PARAFORMER], ids=["streaming", "paraformer"])
def test_silence_noise_and_tones_give_no_text(model):
    import speechkit

    asr = speechkit.load(model)
    sounds = non_speech()
    texts = [t.text for t in asr.transcribe(list(sounds.values()))]
    assert dict(zip(sounds, texts)) == dict.fromkeys(sounds, "")


@pytest.mark.parametrize("model", [STREAM, PARAFORMER], ids=["streaming", "paraformer"])
def test_the_gate_keeps_real_speech(audio, model):
    """Single utterances: the gate changes nothing. Two with 10 s of silence between: every word
    outside the silence stays, none is left inside it (the Paraformer alone writes
    "a r rrrr errrrrrre" there; the streaming model writes nothing)."""
    import speechkit

    gated, plain = speechkit.load(model), speechkit.load(model, gate=None)
    for x in audio["utts"]:
        assert gated.transcribe(x).text == plain.transcribe(x).text != ""
    first, second = audio["utts"][:2]
    x = np.concatenate([first, np.zeros(10 * RATE, np.float32), second])
    g, p = gated.transcribe(x), plain.transcribe(x)
    if model == STREAM:
        assert g.text == p.text != ""
        return
    quiet = (len(first) / RATE, len(first) / RATE + 9.7)  # CIF word starts run up to 0.3 s early
    speech = [w for w, start, _ in p.words if not quiet[0] < start < quiet[1]]
    assert [w for w, _, _ in g.words] == speech and len(speech) >= 8
    assert g.text.split() == speech
