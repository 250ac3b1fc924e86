"""`speechkit serve` with a voice-conversion model (``/vc``): a tiny randomly initialised MeanVC
exported with the shipped codec and content encoder and two preset reference voices; a client's
converted audio equals ``VoiceConverter.convert`` of the same input with the same seed (after the
16-bit quantisation of the wire), two clients with different voices are batched into shared
``step_many`` calls and each gets its own voice, and a bad reference or stream is closed with the
protocol's code and a one-line reason.

``export_tiny_vc`` is also used by the browser test (tests/test_serve_browser.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from serve_harness import LiveServer, raw_session
from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.serve.client import stream_audio
from speechkit.serve.protocol import Close, Limits, ProtocolError, Start, decode_audio, parse_start, pcm16

ROOT = Path(__file__).resolve().parents[1]
ASR_MODEL = ROOT / "models" / "asr-stream-synth"
RATE = 16000
LIMITS = Limits(max_frame_bytes=128 * 1024, max_stream_seconds=3.0, idle_timeout=1.5, max_connections=12)
SENTENCES = ["the museum opened a new hall for old maps", "seven small boats were tied along the river bank"]
VOICES = {"us": Voice("espeak-ng", "en-us", "espeak-en-us"), "gb": Voice("espeak-ng", "en-gb", "espeak-en-gb"),
          "f3": Voice("espeak-ng", "en-us+f3", "espeak-en-us-f3")}


def speech(voice: str, text: str) -> np.ndarray:
    """espeak-ng speech on the 16-bit grid, so that pcm16 sends it exactly."""
    return decode_audio(pcm16(synthesize(VOICES[voice], text, Prosody())), Start(RATE, "pcm16"))


def export_tiny_vc(root: Path) -> Path:
    """The tiny MeanVC export of tests/test_vc_runtime.py → ``root/onnx``."""
    from test_vc_runtime import make_vc_export

    return make_vc_export(root)


@pytest.fixture(scope="module")
def vc_dir(tmp_path_factory) -> Path:
    """The tiny export with two preset voices in its ``references/`` (what the server picks up)."""
    root = tmp_path_factory.mktemp("serve-vc")
    (root / "exp").mkdir()
    (root / "spk").mkdir()
    out = export_tiny_vc(root)
    (out / "references").mkdir()
    sf.write(out / "references" / "gb.wav", speech("gb", "a quiet voice reads the morning news"), RATE, subtype="PCM_16")
    sf.write(out / "references" / "f3.wav", speech("f3", "the garden was full of yellow flowers"), RATE, subtype="PCM_16")
    return out


@pytest.fixture(scope="module")
def live(vc_dir):
    server = LiveServer(vc_dir, LIMITS)
    yield server
    server.close()


@pytest.fixture(scope="module")
def vc(vc_dir):
    from speechkit.runtime.vc import VoiceConverter

    return VoiceConverter(vc_dir)


# --- protocol ---------------------------------------------------------------------------------
def test_parse_start_of_a_vc_stream():
    assert parse_start('{"type": "start", "mode": "vc", "sample_rate": 16000, "reference": "upload"}', "vc") == \
        Start(16000, "pcm16", "vc", "upload", 0)
    assert parse_start('{"type": "start", "sample_rate": 48000, "format": "float32", "reference": "gb", "seed": 7}', "vc") == \
        Start(48000, "float32", "vc", "gb", 7)
    for text, mode, words in [
        ('{"type": "start", "sample_rate": 16000}', "vc", "reference must be"),
        ('{"type": "start", "sample_rate": 16000, "reference": ""}', "vc", "reference must be"),
        ('{"type": "start", "sample_rate": 16000, "reference": "gb", "seed": -1}', "vc", "seed"),
        ('{"type": "start", "sample_rate": 16000, "reference": "gb", "seed": 1.5}', "vc", "seed"),
        ('{"type": "start", "mode": "vc", "sample_rate": 16000, "reference": "gb"}', "asr", "served at /vc"),
        ('{"type": "start", "mode": "tts", "sample_rate": 16000}', "asr", "served at /tts"),
        ('{"type": "start", "mode": "music", "sample_rate": 16000}', "asr", "one of"),
        ('{"type": "start", "sample_rate": 16000, "reference": "gb"}', "asr", "unknown field 'reference'"),
    ]:
        with pytest.raises(ProtocolError) as e:
            parse_start(text, mode)
        assert words in e.value.reason and "\n" not in e.value.reason and e.value.code == Close.BAD_MESSAGE, text


# --- a live server ----------------------------------------------------------------------------
def _quantised(x: np.ndarray) -> np.ndarray:
    return decode_audio(pcm16(x), Start(RATE, "pcm16"))


def _assert_wire_equal(got: np.ndarray, want: np.ndarray) -> None:
    """Equal after 16-bit quantisation: batching with other voices moves a sample by < 1e-5, which
    can flip its rounding by one step, no more."""
    want = _quantised(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.abs(got - want).max() <= 1 / 32768 + 1e-6
    assert np.mean(got == want) > 0.99


def test_streamed_files_equal_convert_each_in_its_own_voice_and_are_batched(live, vc, vc_dir, tmp_path):
    from speechkit.audio.io import load_audio

    sf.write(tmp_path / "source.wav", speech("us", SENTENCES[0]), RATE, subtype="PCM_16")
    source = load_audio(tmp_path / "source.wav")[0]  # a source file, as a user would stream it
    other = speech("f3", SENTENCES[1])
    upload = speech("us", "my own voice says a few words for the model")
    before = live.health()["vc"]

    async def run():
        return await asyncio.gather(
            stream_audio(live.url("/vc"), source, RATE, frame_ms=100, start={"mode": "vc", "reference": "upload", "seed": 5},
                         reference=upload),
            stream_audio(live.url("/vc"), other, RATE, frame_ms=40, start={"reference": "gb"}))

    mine, preset = asyncio.run(run())
    after = live.health()["vc"]
    gb = vc.target(*load_audio(vc_dir / "references" / "gb.wav"))
    want_mine = vc.convert(source, vc.target(upload, RATE), seed=5)
    _assert_wire_equal(mine.output, want_mine)
    _assert_wire_equal(preset.output, vc.convert(other, gb, seed=0))
    # each client got its own voice: the same source into the other voice is many 16-bit steps away
    # (this random model's voices differ by ~2 % of the signal; the seed's noise by far more)
    into_gb = _quantised(vc.convert(source, gb, seed=5))
    assert np.abs(mine.output - into_gb).max() > 20 / 32768 and np.mean(np.abs(mine.output - into_gb) > 2 / 32768) > 0.3
    for r, x in ((mine, source), (preset, other)):
        types = [m["type"] for m in r.messages]
        assert types == ["ready", "done"] and r.close_code == 1000, (types, r.close_code, r.close_reason)
        ready, done = r.messages
        assert ready["mode"] == "vc" and ready["output_rate"] == RATE and ready["chunk_ms"] == 200
        assert ready["latency_ms"] == round(vc.latency_ms)
        assert done["audio_seconds"] == round(len(x) / RATE, 3) and done["output_seconds"] == round(len(r.output) / RATE, 3)
        assert abs(len(r.output) - len(x)) <= 2 * 640  # one 40 ms frame per 640 samples in, give or take one
        assert len(r.audio) >= 10 and r.t_audio[0] < r.messages[-1]["t"]  # streamed in chunks, before `done`
    assert live.health()["vc"]["references"] == ["f3", "gb"]
    calls, chunks = after["model_calls"] - before["model_calls"], after["stream_chunks"] - before["stream_chunks"]
    print(f"vc batching: {calls} step_many calls for {chunks} stream-chunks, max batch {after['max_batch_seen']}")
    assert chunks == len(mine.audio) + len(preset.audio)
    assert calls < chunks and after["max_batch_seen"] >= 2, (calls, chunks)


def test_bad_references_and_limits_close_with_their_codes(live):
    def start(**kw) -> str:
        return json.dumps({"type": "start", "mode": "vc", "sample_rate": RATE, "format": "pcm16", **kw})

    voice = speech("gb", SENTENCES[0])
    long_source = np.concatenate([voice, voice])  # past max_stream_seconds

    async def run():
        return await asyncio.gather(
            raw_session(live.url("/vc"), start(reference="upload"), pcm16(voice[: RATE // 2])),  # half a second
            raw_session(live.url("/vc"), start(reference="upload"), pcm16(np.zeros(2 * RATE, np.float32))),  # silent
            raw_session(live.url("/vc"), start(reference="upload"), '{"type": "end"}'),  # text where the reference goes
            raw_session(live.url("/vc"), start(reference="nobody")),  # no such preset
            raw_session(live.url("/vc"), start()),  # no reference at all
            raw_session(live.url("/vc"), start(reference="upload")),  # never sends the reference
            raw_session(live.url("/vc"), start(reference="f3"), *[pcm16(long_source[i : i + 8000])
                                                      for i in range(0, len(long_source), 8000)]),
            raw_session(live.url("/asr"), start(reference="f3")),  # this server converts only
        )

    short, silent, text, unknown, missing, idle, too_long, asr = asyncio.run(run())
    for (got, audio, code, reason), words in ((short, "at least 1 s"), (silent, "silent"), (text, "must be the reference audio"),
                                              (unknown, "unknown reference 'nobody' (presets: f3, gb"),
                                              (missing, "reference must be")):
        assert code == Close.BAD_MESSAGE and audio == 0, (code, reason)
        assert got[-1]["type"] == "error" and got[-1]["code"] == Close.BAD_MESSAGE and words in got[-1]["reason"]
        assert "\n" not in got[-1]["reason"] and reason == got[-1]["reason"][:120]
    got, audio, code, _ = idle
    assert code == Close.IDLE and "no reference audio" in got[-1]["reason"]
    got, audio, code, _ = too_long  # converted up to the limit, then told why
    assert code == Close.TOO_LONG and [m["type"] for m in got] == ["ready", "done", "error"]
    assert got[1]["audio_seconds"] == LIMITS.max_stream_seconds and abs(audio / RATE - LIMITS.max_stream_seconds) <= 0.08
    assert asr[2] == Close.BAD_MESSAGE and "serves /vc" in asr[3]
    assert live.settled(live.server.vc_engine)  # nothing left behind


def test_vc_beside_asr_setup_errors_and_no_torch(vc, vc_dir, tmp_path, run_cli):
    from conftest import run_without_torch
    from speechkit.errors import SpeechkitError
    from speechkit.serve.server import SpeechServer, load_references

    health = SpeechServer(ASR_MODEL, vc_dir=vc_dir).health()  # --vc beside an ASR model: one page, both modes
    assert health["modes"] == ["asr", "vc"] and health["chunk_ms"] == 520 and health["vc"]["references"] == ["f3", "gb"]
    with pytest.raises(SpeechkitError, match="is a voice-conversion model; --vc adds one"):
        SpeechServer(vc_dir, vc_dir=vc_dir)
    with pytest.raises(SpeechkitError, match="needs a voice-conversion model"):
        SpeechServer(ASR_MODEL, references=tmp_path)
    with pytest.raises(SpeechkitError, match="no .wav files"):
        load_references(vc, tmp_path)
    sf.write(tmp_path / "quiet.wav", np.zeros(RATE * 2, np.float32), RATE)
    with pytest.raises(SpeechkitError, match=r"quiet.wav: reference: silent"):
        load_references(vc, tmp_path)
    code, _, err = run_cli("serve", str(vc_dir), "--vc", str(vc_dir))
    assert code == 2 and "--vc adds one" in err and len(err.strip().splitlines()) == 1
    out = run_without_torch(f"from speechkit.serve.server import SpeechServer; print(SpeechServer({str(vc_dir)!r}).modes)")
    assert out.strip() == "['vc']"
