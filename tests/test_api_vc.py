"""`speechkit.load` on an exported voice-conversion model (a tiny random MeanVC): conversion from
arrays and files at any rate equals the runtime's, a live stream at another rate equals the whole
conversion, bad input fails with one line, no torch is needed; and `speechkit vc MODEL --mic`: one
line when sounddevice or a device is missing, and with a (fake) device it plays what the file
conversion gives and ends cleanly on Ctrl-C."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

import speechkit
from conftest import run_without_torch
from speechkit.errors import AudioError, SpeechkitError
from test_vc_runtime import RATE, make_vc_export, tone

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return make_vc_export(tmp_path_factory.mktemp("vc"))


@pytest.fixture(scope="module")
def runtime(exported):
    from speechkit.runtime.vc import VoiceConverter

    return VoiceConverter(exported)


@pytest.fixture(scope="module")
def api(exported):
    return speechkit.load(exported)


SRC, REF = tone(1.7, 160, 1), tone(1.5, 230, 3)


def test_load_gives_a_converter_that_converts_as_the_runtime(api, runtime):
    assert isinstance(api, speechkit.api.VoiceConversion) and api.sample_rate == RATE
    want = runtime.convert(SRC, runtime.target(REF))
    got = api.convert(SRC, REF)
    assert got.dtype == np.float32 and len(got) > 0
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(api.convert(SRC, api.target(REF)), want)  # a target voice is reused as is
    np.testing.assert_array_equal(api.convert(SRC, REF, sample_rate=RATE), want)
    assert not np.array_equal(api.convert(SRC, REF, seed=1), want)


def test_files_at_any_rate_and_in_stereo(api, runtime, tmp_path):
    src8 = soxr.resample(SRC, RATE, 8000).astype(np.float32)
    sf.write(tmp_path / "src.wav", np.stack([src8, src8], axis=1), 8000, subtype="FLOAT")  # stereo: downmixed
    sf.write(tmp_path / "ref.wav", REF, RATE, subtype="FLOAT")
    got = api.convert(tmp_path / "src.wav", str(tmp_path / "ref.wav"))
    np.testing.assert_array_equal(got, runtime.convert(src8, runtime.target(REF), 8000))
    # an 8 kHz array with its rate named converts as the file did; the reference's path as its array
    np.testing.assert_array_equal(api.convert(src8, api.target(tmp_path / "ref.wav"), sample_rate=8000), got)


def test_a_live_stream_at_another_rate_is_the_whole_conversion(api):
    src48 = soxr.resample(SRC, RATE, 48000).astype(np.float32)
    ref48 = soxr.resample(REF, RATE, 48000).astype(np.float32)
    s = api.stream(ref48, sample_rate=48000, seed=2)
    parts = [s.accept(src48[at : at + 4801]) for at in range(0, len(src48), 4801)]  # odd blocks
    assert sum(len(p) > 0 for p in parts) > 3  # audio came out while the source was still coming in
    parts.append(s.finish())
    np.testing.assert_array_equal(np.concatenate(parts), api.convert(src48, ref48, sample_rate=48000, seed=2))


def test_one_line_errors(api, exported, tmp_path):
    for call, why in ((lambda: api.convert(np.stack([SRC, SRC], axis=1), REF), r"source: expected mono samples"),
                      (lambda: api.convert(SRC, REF[:8000]), "at least 1 s"),
                      (lambda: api.stream(np.zeros(2 * RATE, np.float32)), "silent"),
                      (lambda: api.stream(REF).accept(np.zeros((10, 2), np.float32)), "source: expected mono"),
                      (lambda: api.convert(tmp_path / "missing.wav", REF), "missing.wav: unreadable audio")):
        with pytest.raises(AudioError, match=why) as err:
            call()
        assert "\n" not in str(err.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vc.json").write_text((exported / "vc.json").read_text())  # no step.onnx
    with pytest.raises(SpeechkitError, match="not a model directory"):
        speechkit.load(tmp_path / "half")


def test_the_api_runs_without_torch(exported):
    out = run_without_torch(f"""
        import numpy as np
        import speechkit
        vc = speechkit.load({str(exported)!r})
        t = np.arange(24000) / 16000
        ref = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.cos(2 * np.pi * 37 * t)).astype(np.float32)
        whole = vc.convert(ref[:20000], ref)
        s = vc.stream(ref)
        live = np.concatenate([s.accept(ref[:7000]), s.accept(ref[7000:20000]), s.finish()])
        print(len(whole), bool(np.array_equal(whole, live)))
    """)
    n, same = out.split()
    assert int(n) > 0 and same == "True"


# speechkit vc MODEL --mic --reference R.wav


def fake_sounddevice(blocks: list[np.ndarray] | None, played: list[np.ndarray]) -> types.ModuleType:
    """A stand-in for sounddevice: without ``blocks`` it has no device; with them its duplex
    stream reads them in turn, then raises KeyboardInterrupt (the user's Ctrl-C), and keeps
    what is written in ``played``."""
    sd = types.ModuleType("sounddevice")

    class PortAudioError(Exception):
        pass

    def query_devices(device=None, kind=None):
        if blocks is None:
            raise PortAudioError("Error querying device -1")
        return {"name": "fake", "max_input_channels": 1}

    class Stream:
        def __init__(self, device=None, channels=1, samplerate=None, dtype=None, blocksize=None):
            assert channels == 1 and samplerate == RATE and dtype == "float32"
            self.blocksize, self.todo = blocksize, list(blocks)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            assert n == self.blocksize
            if not self.todo:
                raise KeyboardInterrupt
            return self.todo.pop(0)[:, None], False

        def write(self, data):
            assert data.ndim == 2 and data.shape[1] == 1
            played.append(data[:, 0].copy())

    sd.PortAudioError, sd.query_devices, sd.Stream = PortAudioError, query_devices, Stream
    return sd


@pytest.fixture(scope="module")
def ref_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mic") / "ref.wav"
    sf.write(path, REF, RATE, subtype="FLOAT")
    return path


def test_mic_without_sounddevice_or_a_device_is_one_line(exported, ref_wav, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # not installed
    rc, out, err = run_cli("vc", exported, "--mic", "--reference", ref_wav)
    assert rc == 2 and "--mic needs sounddevice" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(None, []))
    rc, out, err = run_cli("vc", exported, "--mic", "--reference", ref_wav)
    assert rc == 2 and "no audio input device (Error querying device -1)" in err and len(err.strip().splitlines()) == 1
    for argv, why in (([], "give one of --source"), (["--source", ref_wav, "--mic"], "give one of --source"),
                      (["--mic", "--out", "o.wav"], "--out is for --source"), (["--source", ref_wav], "needs --out")):
        rc, _, err = run_cli("vc", exported, "--reference", ref_wav, *argv)
        assert rc == 2 and why in err and len(err.strip().splitlines()) == 1, argv
    rc, _, err = run_cli("vc", exported.parent / "exp", "--mic", "--reference", ref_wav)
    assert rc == 2 and "needs an exported voice-conversion model" in err


def test_mic_plays_the_conversion_and_stops_cleanly_on_ctrl_c(exported, runtime, ref_wav, run_cli, monkeypatch):
    block = 3200  # one 200 ms chunk
    blocks = [SRC[at : at + block] for at in range(0, len(SRC), block)]
    played: list[np.ndarray] = []
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sounddevice(blocks, played))
    rc, out, err = run_cli("vc", exported, "--mic", "--reference", ref_wav)
    assert rc == 0, err
    assert "Ctrl-C to stop" in err and "converted" in err
    np.testing.assert_array_equal(played[0], np.zeros(block, np.float32))  # one chunk of silence first
    assert len(played) > 3  # audio was played while the microphone was still being read
    want = runtime.convert(SRC, runtime.target(REF))
    np.testing.assert_array_equal(np.concatenate(played[1:]), want)  # the rest played after Ctrl-C
