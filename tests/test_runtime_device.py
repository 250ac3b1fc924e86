"""The runtime's ``device``: ``cuda`` without a CUDA onnxruntime is a one-line error (API and CLI),
a bad device string too; with CUDA faked, every session asks for the CUDA provider first and one
that ONNX Runtime could only start on the CPU is an error, never a silent fallback; the ``gpu``
extra never pulls torch. CPU results are the rest of the suite's."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import onnxruntime as ort
import pytest
import soundfile as sf

import speechkit
from speechkit import api
from speechkit.data.synth.engines import Prosody, Voice, synthesize
from speechkit.errors import SpeechkitError
from speechkit.export.attention import OnnxAttentionModel
from speechkit.runtime.asr import OnlineRecognizer
from speechkit.runtime.audiogen import MusicGenerator
from speechkit.runtime.codec import CodecRuntime
from speechkit.runtime.content import ContentEncoder
from speechkit.runtime.paraformer import OfflineRecognizer
from speechkit.runtime.session import cpu_session, make_session, open_model
from speechkit.runtime.speaker import SpeakerRuntime
from speechkit.runtime.transducer import SherpaCtcRecognizer, TransducerRecognizer
from speechkit.runtime.tts import Synthesizer
from speechkit.runtime.vc import VoiceConverter

ROOT = Path(__file__).resolve().parents[1]
STREAM, PARAFORMER, CODEC = (ROOT / "models" / m for m in ("asr-stream-synth", "asr-paraformer-synth", "codec-vae-synth"))
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def no_cuda(monkeypatch):
    """The CPU onnxruntime wheel's providers (what this machine has; pinned so a GPU machine tests the same)."""
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [p for p in real() if p != "CUDAExecutionProvider"])


def fake_cuda(monkeypatch, reports: list[str] | None = None) -> list[list[str]]:
    """Pretend onnxruntime-gpu is installed: sessions run on the CPU but say they run on ``reports``
    (None: on the providers asked for). → the provider lists the runtime asked for, one per session."""
    asked, real = [], ort.InferenceSession

    def session(path, opts=None, providers=None):
        asked.append(list(providers))
        s = real(path, opts, providers=["CPUExecutionProvider"])
        s.get_providers = lambda: list(reports or providers)
        return s

    monkeypatch.setattr(ort, "get_available_providers", lambda: CUDA)
    monkeypatch.setattr(ort, "InferenceSession", session)
    return asked


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("open_", [
    lambda: open_model(STREAM, "model.onnx", "ctc-streaming-conformer", "streaming CTC", device="cuda"),
    lambda: speechkit.load(STREAM, device="cuda"),
    lambda: speechkit.load(PARAFORMER, device="cuda"),
    lambda: CodecRuntime(CODEC, device="cuda"),
], ids=["open_model", "streaming", "paraformer", "codec"])
def test_cuda_without_onnxruntime_gpu_is_one_line(no_cuda, open_):
    with pytest.raises(SpeechkitError) as e:
        open_()
    msg = one_line(e)
    assert "CUDAExecutionProvider" in msg and "pip uninstall -y onnxruntime" in msg and "speechkit[gpu]" in msg


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:0", ""])
def test_a_bad_device_is_one_line(device):
    with pytest.raises(SpeechkitError) as e:
        speechkit.load(STREAM, device=device)
    assert f"got {device!r}" in one_line(e)
    with pytest.raises(SpeechkitError):
        make_session(CODEC / "decoder.onnx", device=device)


def test_cuda_is_asked_first_and_decodes_as_the_cpu(monkeypatch, tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, synthesize(Voice("espeak-ng", "en-us", "espeak-0"), "a quiet garden behind the old library", Prosody()), 16000)
    cpu_text = speechkit.load(STREAM).transcribe(wav).text
    asked = fake_cuda(monkeypatch)
    asr = speechkit.load(STREAM, device="cuda")
    assert asked == [CUDA] and asr.transcribe(wav).text == cpu_text and cpu_text
    CodecRuntime(CODEC, device="cuda")
    OfflineRecognizer(PARAFORMER, device="cuda")
    assert asked == [CUDA] * 4  # the codec's encoder and decoder, the Paraformer
    make_session(CODEC / "decoder.onnx")
    assert asked[-1] == ["CPUExecutionProvider"]


@pytest.mark.parametrize("open_", [lambda: OnlineRecognizer(STREAM, device="cuda"), lambda: CodecRuntime(CODEC, device="cuda")],
                         ids=["streaming", "codec"])
def test_no_silent_fallback_to_the_cpu(monkeypatch, open_):
    fake_cuda(monkeypatch, ["CPUExecutionProvider"])  # what ONNX Runtime does when the CUDA libraries fail to load
    with pytest.raises(SpeechkitError) as e:
        open_()
    msg = one_line(e)
    assert "could not start CUDAExecutionProvider" in msg and "runs on CPUExecutionProvider" in msg


@pytest.mark.parametrize("argv", [["transcribe", STREAM, "WAV"], ["stream", STREAM, "--wav", "WAV"],
                                  ["decode-onnx", STREAM, "DATA", "OUT"], ["serve", STREAM, "--port", "0"],
                                  ["transcribe", PARAFORMER, "WAV"]],
                         ids=["transcribe", "stream", "decode-onnx", "serve", "transcribe-paraformer"])
def test_cli_device_cuda_is_one_line(no_cuda, run_cli, tmp_path, argv):
    from conftest import make_tiny_data_dir

    make_tiny_data_dir(tmp_path / "data", n_utts=1)
    names = {"WAV": next((tmp_path / "data" / "wav").iterdir()), "DATA": tmp_path / "data", "OUT": tmp_path / "out"}
    rc, out, err = run_cli(*(names.get(a, a) for a in argv), "--device", "cuda")
    assert rc == 2 and not out
    assert err.startswith("speechkit: error: ") and len(err.strip().splitlines()) == 1 and "CUDAExecutionProvider" in err


def test_cli_device_choices(run_cli):
    with pytest.raises(SystemExit) as e:
        run_cli("transcribe", STREAM, "x.wav", "--device", "gpu")
    assert e.value.code == 2


@pytest.mark.parametrize("engine", [OnlineRecognizer, TransducerRecognizer, SherpaCtcRecognizer, OfflineRecognizer, CodecRuntime,
                                    Synthesizer, VoiceConverter, MusicGenerator, SpeakerRuntime, ContentEncoder, OnnxAttentionModel,
                                    api.StreamingAsr, api.OfflineAsr, api.VoiceConversion, api.TextToMusic, api.load], ids=lambda e: e.__name__)
def test_every_engine_takes_a_device(engine):
    param = inspect.signature(engine).parameters["device"]
    assert param.default == "cpu" and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)


def test_the_gpu_extra_never_pulls_torch():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = [re.match(r"[A-Za-z0-9._-]+", req).group().lower() for req in extras["gpu"]]
    assert names == ["onnxruntime-gpu"]


def test_the_cpu_session_is_todays():
    for s in (make_session(CODEC / "decoder.onnx"), cpu_session(CODEC / "decoder.onnx")):
        assert s.get_providers() == ["CPUExecutionProvider"]
