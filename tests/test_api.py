"""`speechkit.load`: the Python API on the shipped models — files, arrays and lists transcribe as
the runtimes do, live sessions at any rate give the same text with partials then finals, the
module docstring's example runs, and bad input fails with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

import speechkit
from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.errors import SpeechkitError
from speechkit.runtime import OnlineRecognizer

ROOT = Path(__file__).resolve().parents[1]
STREAM, PARAFORMER = ROOT / "models" / "asr-stream-synth", ROOT / "models" / "asr-paraformer-synth"


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    texts = ["a quiet garden behind the old library", "the committee met on tuesday to vote"]
    out = []
    for i, (voice, text) in enumerate(zip(["en-us", "en-gb+m3"], texts)):
        x = synthesize(Voice("espeak-ng", voice, f"espeak-{i}"), text, Prosody())
        sf.write(d / f"{i}.wav", x, 16000, subtype="FLOAT")
        out.append(d / f"{i}.wav")
    return out


def test_load_picks_the_family():
    assert isinstance(speechkit.load(STREAM), speechkit.api.StreamingAsr)
    assert isinstance(speechkit.load(PARAFORMER), speechkit.api.OfflineAsr)


def test_streaming_transcribe_matches_the_runtime(wavs):
    asr, rec = speechkit.load(STREAM), OnlineRecognizer(STREAM)
    x = sf.read(wavs[0], dtype="float32")[0]
    t = asr.transcribe(wavs[0])
    assert t.text == str(t) == rec.transcribe(x) and t.text
    assert asr.transcribe(x).text == t.text
    assert t.segments and t.segments[0][1] <= t.segments[-1][2]
    many = asr.transcribe([wavs[0], wavs[1]])
    assert [m.text for m in many] == [t.text, asr.transcribe(wavs[1]).text]


def test_stream_session_in_pieces_at_another_rate(wavs):
    asr = speechkit.load(STREAM)
    x = sf.read(wavs[1], dtype="float32")[0]
    x48 = soxr.resample(x, 16000, 48000).astype(np.float32)
    results = []
    with asr.stream(sample_rate=48000) as s:
        for i in range(0, len(x48), 4801):  # odd block size: nothing may be lost at block edges
            results += s.feed(x48[i : i + 4801])
    results += s.results[len(results):]
    kinds = [r.kind for r in results]
    assert "partial" in kinds and kinds[-1] == "final"
    assert s.text == " ".join(r.text for r in results if r.kind == "final")
    assert s.text == asr.recognizer.transcribe(x48, 48000)


def test_a_finished_stream_ends_with_a_final_and_is_done(wavs):
    asr = speechkit.load(STREAM)
    rec = asr.recognizer
    s = asr.stream()
    s.feed(sf.read(wavs[0], dtype="float32")[0])
    assert not rec.is_done(s.stream) and s.partial  # input not finished: the segment is open
    last = s.finish()
    assert rec.is_done(s.stream) and s.partial == "" and s.text and last[-1].kind == "final"


def test_paraformer_transcribe_matches_its_recognizer(wavs):
    asr = speechkit.load(PARAFORMER)
    x = sf.read(wavs[0], dtype="float32")[0]
    t = asr.transcribe(wavs[0])
    assert t.text == asr.recognizer.recognize([x])[0].text and t.text
    assert t.words and all(s <= e for _, s, e in t.words)
    assert [m.text for m in asr.transcribe(wavs)] == [t.text, asr.transcribe(wavs[1]).text]
    with pytest.raises(SpeechkitError, match="offline"):
        asr.stream()


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(SpeechkitError, match="not a model directory"):
        speechkit.load(tmp_path)
    asr = speechkit.load(STREAM)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(SpeechkitError, match="bad.wav: unreadable audio"):
        asr.transcribe(tmp_path / "bad.wav")
    with pytest.raises(SpeechkitError, match="NaN"):
        asr.stream().feed(np.array([0.0, np.nan], np.float32))


def test_the_docstring_example_runs(wavs, monkeypatch):
    import speechkit.api

    code = "\n".join(line[8:] for line in speechkit.api.__doc__.splitlines() if line.startswith(("    >>> ", "    ... ")))
    x = sf.read(wavs[0], dtype="float32")[0]
    blocks = np.array_split(soxr.resample(x, 16000, 48000).astype(np.float32), 10)
    monkeypatch.chdir(ROOT)
    scope = {"blocks": blocks}
    exec(code.replace('"some.wav"', repr(str(wavs[0]))), scope)
    assert scope["s"].text == scope["asr"].transcribe(x).text


def test_api_runs_without_torch(wavs):
    from conftest import run_without_torch

    out = run_without_torch(f"import speechkit; print(speechkit.load({str(STREAM)!r}).transcribe({str(wavs[0])!r}).text)")
    assert out.strip()
