"""The runtime's ``device``: ``cpu``, ``cuda[:N]`` or ``tensorrt[:N]``, read by one parser (a bad
form is a one-line error, from the API and argparse's from the CLI); ``cuda`` or ``tensorrt``
without the provider in this onnxruntime is a one-line error (API and CLI); with CUDA (and
TensorRT) faked, every session asks for the provider first, on GPU N, with CUDA and the CPU behind
it; one that ONNX Runtime could only start on a later provider, or not at all (a GPU index past
the last), is a one-line error, never a silent fallback or a traceback; the streaming recognizer
keeps its caches on any GPU; the ``gpu`` extra never pulls torch; the commands that open exported
dirs (generate, vc, tts, codec, speaker embed and the tts and codec evals) pass ``--device`` on to
every session, cpu by default. CPU results are the rest of the suite's."""

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
from speechkit.runtime.session import cpu_session, make_session, open_model, parse_device
from speechkit.runtime.speaker import SpeakerRuntime
from speechkit.runtime.transducer import SherpaCtcRecognizer, TransducerRecognizer
from speechkit.runtime.tts import Synthesizer
from speechkit.runtime.vc import VoiceConverter

ROOT = Path(__file__).resolve().parents[1]
STREAM, PARAFORMER, CODEC = (ROOT / "models" / m for m in ("asr-stream-synth", "asr-paraformer-synth", "codec-vae-synth"))
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
TRT = ["TensorrtExecutionProvider", *CUDA]
DEVICES = "cpu, cuda, cuda:N, tensorrt or tensorrt:N (N: the GPU's index, cuda = cuda:0, tensorrt = tensorrt:0)"


@pytest.fixture
def no_cuda(monkeypatch):
    """The CPU onnxruntime wheel's providers (what this machine has; pinned so a GPU machine tests the same)."""
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [p for p in real() if p != "CUDAExecutionProvider"])


def fake_cuda(monkeypatch, reports: list[str] | None = None, options: list[dict] | None = None,
              available: list[str] = CUDA, raises: Exception | None = None, kwargs: list[dict] | None = None) -> list[list[str]]:
    """Pretend onnxruntime-gpu is installed with the ``available`` providers: sessions run on the
    CPU but say they run on ``reports`` (None: on the providers asked for), or fail with ``raises``.
    → the provider names the runtime asked for, one list per session; ``options`` (when given) gets
    each session's provider options by name, as asked, and ``kwargs`` its other keyword arguments."""
    asked, real = [], ort.InferenceSession

    def session(path, opts=None, providers=None, provider_options=None, **extra):
        names = [p if isinstance(p, str) else p[0] for p in providers]  # a name, or (name, options)
        given = provider_options or [{} if isinstance(p, str) else p[1] for p in providers]
        asked.append(names)
        if options is not None:
            options.append(dict(zip(names, given)))
        if kwargs is not None:
            kwargs.append(extra)
        if raises is not None:
            raise raises
        s = real(path, opts, providers=["CPUExecutionProvider"])
        s.get_providers = lambda: list(reports or names)
        # as ONNX Runtime reports them: every value a string
        s.get_provider_options = lambda: {n: {k: str(v) for k, v in o.items()} for n, o in zip(names, given)}
        return s

    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
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


@pytest.mark.parametrize("device", ["gpu", "CUDA", "", "cuda:", "cuda:x", "cuda:-1"])
def test_a_bad_device_is_one_line(device):
    with pytest.raises(SpeechkitError) as e:
        speechkit.load(STREAM, device=device)
    assert f"got {device!r}" in one_line(e)
    with pytest.raises(SpeechkitError):
        make_session(CODEC / "decoder.onnx", device=device)


@pytest.mark.parametrize("device, parsed", [("cpu", ("cpu", 0)), ("cuda", ("cuda", 0)), ("cuda:0", ("cuda", 0)),
                                            ("cuda:1", ("cuda", 1)), ("cuda:12", ("cuda", 12)), ("tensorrt", ("tensorrt", 0)),
                                            ("tensorrt:0", ("tensorrt", 0)), ("tensorrt:3", ("tensorrt", 3))])
def test_parse_device(device, parsed):
    assert parse_device(device) == parsed


@pytest.mark.parametrize("device", ["gpu", "CUDA", "Cuda:1", "", "cuda:", "cuda:x", "cuda:-1", "cuda:1.5", "cuda:1 ", " cuda",
                                    "cuda1", "cpu:0", "cuda:1:2", "cuda:\u0661", None, 1, "tensorrt:", "TensorRT", "trt",
                                    "tensorrt:x", "tensorrt:-1", "tensorrt1", "tensorrt:cuda", "cuda:tensorrt", "tensorrt:1 "])
def test_parse_device_names_the_forms(device):
    with pytest.raises(SpeechkitError) as e:
        parse_device(device)
    assert one_line(e) == f"device must be {DEVICES}, got {device!r}"


@pytest.mark.parametrize("device, gpu", [("cuda", 0), ("cuda:0", 0), ("cuda:1", 1), ("cuda:7", 7)])
def test_cuda_n_reaches_the_cuda_provider(monkeypatch, device, gpu):
    """What reaches ort.InferenceSession: CUDA with {"device_id": N} first, the CPU behind it; the
    codec's two sessions both on GPU N; the CPU asks for no GPU."""
    options = []
    asked = fake_cuda(monkeypatch, options=options)
    make_session(CODEC / "decoder.onnx", device=device)
    CodecRuntime(CODEC, device=device)
    assert asked == [CUDA] * 3
    assert options == [{"CUDAExecutionProvider": {"device_id": gpu}, "CPUExecutionProvider": {}}] * 3
    make_session(CODEC / "decoder.onnx", device="cpu")
    assert asked[-1] == ["CPUExecutionProvider"] and options[-1] == {"CPUExecutionProvider": {}}


@pytest.mark.parametrize("device, states", [("cuda", True), ("cuda:1", True), ("cuda:3", True), ("tensorrt:2", True),
                                            ("cpu", False)])
def test_device_states_follow_the_kind_of_device(monkeypatch, tmp_path, device, states):
    """The caches stay on the device for every GPU, not only the first, TensorRT's too: the plain
    graph opens on the CPU (metadata and shapes only, its weights not on the GPU twice), the state
    pool's graph on the recognizer's provider and GPU, its pools in that GPU's memory;
    device_states=False keeps them on the host on any GPU, the one session on the GPU."""
    options, placed = [], []
    real_value = ort.OrtValue.ortvalue_from_numpy
    monkeypatch.setenv("SPEECHKIT_TRT_CACHE", str(tmp_path))
    asked = fake_cuda(monkeypatch, options=options, available=TRT)
    monkeypatch.setattr(ort, "get_device", lambda: "GPU")
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy",  # recorded, then made on the host
                        staticmethod(lambda arr, kind="cpu", index=0: placed.append((kind, index)) or real_value(arr)))
    rec = OnlineRecognizer(STREAM, device=device)
    assert (rec._pool is not None) == states
    kind, index = parse_device(device)
    first = {"cuda": CUDA, "tensorrt": TRT, "cpu": ["CPUExecutionProvider"]}[kind]
    if states:
        assert asked == [["CPUExecutionProvider"], first]
        assert options[1][first[0]]["device_id"] == options[1]["CUDAExecutionProvider"]["device_id"] == index
        assert (rec._pool.device_type, rec._pool.device_id) == ("cuda", index)
        assert placed and set(placed) == {("cuda", index)}
        rec = OnlineRecognizer(STREAM, device=device, device_states=False)
        assert rec._pool is None and asked[2:] == [first] and options[2][first[0]]["device_id"] == index
    else:
        assert asked == [first] and placed == []


def test_cuda_is_asked_first_and_decodes_as_the_cpu(monkeypatch, tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, synthesize(Voice("espeak-ng", "en-us", "espeak-0"), "a quiet garden behind the old library", Prosody()), 16000)
    cpu_text = speechkit.load(STREAM).transcribe(wav).text
    asked = fake_cuda(monkeypatch)
    asr = speechkit.load(STREAM, device="cuda")
    # the plain graph's session (metadata only) and the one that keeps the caches on the device (runtime/state_pool.py)
    assert asked == [["CPUExecutionProvider"], CUDA] and asr.recognizer._pool is not None
    assert asr.transcribe(wav).text == cpu_text and cpu_text
    CodecRuntime(CODEC, device="cuda")
    OfflineRecognizer(PARAFORMER, device="cuda")
    assert asked[2:] == [CUDA] * 3  # the codec's encoder and decoder, the Paraformer
    make_session(CODEC / "decoder.onnx")
    assert asked[-1] == ["CPUExecutionProvider"]


@pytest.mark.parametrize("open_", [lambda: OnlineRecognizer(STREAM, device="cuda"), lambda: CodecRuntime(CODEC, device="cuda"),
                                   lambda: OnlineRecognizer(STREAM, device="cuda:1"), lambda: CodecRuntime(CODEC, device="cuda:2")],
                         ids=["streaming", "codec", "streaming-cuda:1", "codec-cuda:2"])
def test_no_silent_fallback_to_the_cpu(monkeypatch, open_):
    fake_cuda(monkeypatch, ["CPUExecutionProvider"])  # what ONNX Runtime does when the CUDA libraries fail to load
    with pytest.raises(SpeechkitError) as e:
        open_()
    msg = one_line(e)
    assert "could not start CUDAExecutionProvider" in msg and "runs on CPUExecutionProvider" in msg


@pytest.mark.parametrize("device, providers", [
    ("cpu", ["CPUExecutionProvider"]),
    ("cuda", [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]),
    ("cuda:2", [("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"]),
    ("tensorrt:1", [("TensorrtExecutionProvider", {"device_id": 1, "trt_engine_cache_enable": True,
                                                   "trt_engine_cache_path": "CACHE", "trt_fp16_enable": False}),
                    ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]),
])
def test_the_providers_each_device_asks_for(monkeypatch, tmp_path, device, providers):
    """The providers argument as it reaches ort.InferenceSession; TensorRT caches its engines under
    ~/.cache/speechkit/tensorrt (made if missing), fp16 off; GPU sessions turn ORT's own CPU retry off."""
    got = []

    class Session:
        def __init__(self, path, opts, providers, **kw):
            got.append((providers, kw))
            self.get_providers = lambda: [p if isinstance(p, str) else p[0] for p in providers]

    monkeypatch.setattr(ort, "get_available_providers", lambda: TRT)
    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SPEECHKIT_TRT_CACHE", raising=False)
    monkeypatch.delenv("SPEECHKIT_TRT_FP16", raising=False)
    cache = tmp_path / ".cache" / "speechkit" / "tensorrt"
    assert isinstance(make_session(CODEC / "decoder.onnx", device=device), Session)
    want = [(p[0], {k: str(cache) if v == "CACHE" else v for k, v in p[1].items()}) if isinstance(p, tuple) else p for p in providers]
    assert got == [(want, {} if device == "cpu" else {"enable_fallback": 0})]
    assert cache.is_dir() == device.startswith("tensorrt")


def test_tensorrt_options_follow_the_environment(monkeypatch, tmp_path):
    options = []
    fake_cuda(monkeypatch, options=options, available=TRT)
    monkeypatch.setenv("SPEECHKIT_TRT_CACHE", str(tmp_path / "engines"))
    monkeypatch.setenv("SPEECHKIT_TRT_FP16", "1")
    make_session(CODEC / "decoder.onnx", device="tensorrt")
    assert options[-1]["TensorrtExecutionProvider"] == {"device_id": 0, "trt_engine_cache_enable": True,
                                                        "trt_engine_cache_path": str(tmp_path / "engines"), "trt_fp16_enable": True}
    assert (tmp_path / "engines").is_dir() and options[-1]["CUDAExecutionProvider"] == {"device_id": 0}
    monkeypatch.setenv("SPEECHKIT_TRT_FP16", "true")
    with pytest.raises(SpeechkitError) as e:
        make_session(CODEC / "decoder.onnx", device="tensorrt")
    assert one_line(e) == "SPEECHKIT_TRT_FP16 must be 0 or 1, got 'true'"


@pytest.mark.parametrize("open_", [lambda d: make_session(CODEC / "decoder.onnx", device=d), lambda d: CodecRuntime(CODEC, device=d),
                                   lambda d: speechkit.load(STREAM, device=d)], ids=["session", "codec", "streaming"])
def test_tensorrt_without_its_provider_is_one_line(monkeypatch, open_):
    asked = fake_cuda(monkeypatch)  # onnxruntime-gpu without TensorRT: CUDA and the CPU only
    for device in ("tensorrt", "tensorrt:1"):
        with pytest.raises(SpeechkitError) as e:
            open_(device)
        msg = one_line(e)
        assert msg.startswith(f"device={device!r}: this onnxruntime ") and "has no TensorrtExecutionProvider" in msg
        assert "onnxruntime-gpu plus the TensorRT libraries" in msg and "speechkit[gpu]" in msg
    assert asked == []  # refused before any session opened


@pytest.mark.parametrize("reports", [CUDA, ["CPUExecutionProvider"]], ids=["on-cuda", "on-cpu"])
def test_no_silent_fallback_from_tensorrt(monkeypatch, tmp_path, reports):
    """TensorRT that could not load (ORT logs it and goes on with the providers behind it) is an error."""
    monkeypatch.setenv("SPEECHKIT_TRT_CACHE", str(tmp_path))
    fake_cuda(monkeypatch, reports, available=TRT)
    with pytest.raises(SpeechkitError) as e:
        CodecRuntime(CODEC, device="tensorrt:1")
    msg = one_line(e)
    assert "could not start TensorrtExecutionProvider" in msg and f"runs on {reports[0]}" in msg and "TensorRT (libnvinfer)" in msg


# what onnxruntime-gpu raises for device_id 7 on a machine with fewer GPUs (pybind's RuntimeError), and a status error
ORDINAL = ("/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_call.cc:123 std::conditional_t<THRW, void, "
           "onnxruntime::common::Status> onnxruntime::CudaCall(ERRTYPE, const char*, const char*, ERRTYPE, const char*, "
           "const char*, int) [with ERRTYPE = cudaError; bool THRW = true; std::conditional_t<THRW, void, "
           "onnxruntime::common::Status> = void] CUDA failure 101: invalid device ordinal ; GPU=7 ; hostname=gpu-host ; "
           "file=/onnxruntime_src/onnxruntime/core/providers/cuda/cuda_execution_provider.cc ; line=282 ; "
           "expr=cudaSetDevice(info_.device_id); \n\n")


@pytest.mark.parametrize("device", ["cuda:7", "tensorrt:7"])
@pytest.mark.parametrize("gpus, seen", [(2, "; this process sees 2 GPUs (index 0 to 1), so there is no GPU 7"),
                                        (1, "; this process sees 1 GPU (index 0), so there is no GPU 7"),
                                        (0, "; this process sees no GPU, so there is no GPU 7"), (None, "")])
def test_a_gpu_past_the_last_is_one_line(monkeypatch, tmp_path, device, gpus, seen):
    """ORT's exception at session creation becomes one line: the device, the provider, ORT's reason
    without its C++ location, and how many GPUs the driver shows when it can say."""
    import speechkit.runtime.session as session

    monkeypatch.setenv("SPEECHKIT_TRT_CACHE", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(session, "visible_gpus", lambda: gpus)
    kwargs = []
    fake_cuda(monkeypatch, available=TRT, raises=RuntimeError(ORDINAL), kwargs=kwargs)
    with pytest.raises(SpeechkitError) as e:
        make_session(CODEC / "decoder.onnx", device=device)
    first = "TensorrtExecutionProvider" if device.startswith("tensorrt") else "CUDAExecutionProvider"
    assert one_line(e) == (f"device={device!r}: onnxruntime could not open {CODEC / 'decoder.onnx'} on {first}: "
                           f"CUDA failure 101: invalid device ordinal ; GPU=7{seen}")
    assert kwargs == [{"enable_fallback": 0}]  # else ORT prints the error to stdout and retries on the CPU


def test_an_onnxruntime_status_error_is_one_line(monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    import speechkit.runtime.session as session

    monkeypatch.setattr(session, "visible_gpus", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,6")
    fake_cuda(monkeypatch, raises=Fail("[ONNXRuntimeError] : 1 : FAIL : CUDA error cudaErrorNoDevice:no CUDA-capable device\nmore"))
    with pytest.raises(SpeechkitError) as e:
        CodecRuntime(CODEC, device="cuda:1")
    assert one_line(e).endswith(": CUDA error cudaErrorNoDevice:no CUDA-capable device; this process sees 4 GPUs (index 0 to 3) "
                                "(CUDA_VISIBLE_DEVICES='2,3,5,6')")


def test_visible_gpus_asks_the_driver_and_never_fails(monkeypatch):
    import ctypes

    from speechkit.devices import visible_gpus

    class Driver:
        def __init__(self, init: int, count: int):
            self.init, self.count = init, count

        def cuInit(self, flags):
            return self.init

        def cuDeviceGetCount(self, out):
            out._obj.value = self.count
            return 0

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert visible_gpus() is None
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver(0, 3))
    assert visible_gpus() == 3
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Driver(100, 3))  # CUDA_ERROR_NO_DEVICE from cuInit
    assert visible_gpus() is None


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


@pytest.mark.parametrize("argv", [["transcribe", STREAM, "x.wav"], ["serve", STREAM], ["generate", STREAM, "--text", "t"],
                                  ["bench", "serve", STREAM]], ids=lambda a: " ".join(map(str, a[:2])))
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "CUDA"])
def test_cli_device_choices(run_cli, capsys, argv, device):
    """A bad --device stops argparse before anything opens: its one-line error names the forms."""
    with pytest.raises(SystemExit) as e:
        run_cli(*argv, "--device", device)
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse prints its usage, then the error on one line
    assert last.endswith(f"error: argument --device: device must be {DEVICES}, got {device!r}"), last


@pytest.mark.parametrize("argv", [["transcribe", STREAM, "x.wav"], ["stream", STREAM, "--wav", "x.wav"],
                                  ["decode-onnx", STREAM, "d", "o"], ["serve", STREAM], ["generate", STREAM, "--text", "t"],
                                  ["bench", "serve", STREAM]], ids=lambda a: " ".join(map(str, a[:2])))
def test_cli_device_takes_cuda_n(argv):
    from speechkit.cli import build_parser

    for device in ("cuda:1", "cuda", "cpu"):
        assert build_parser().parse_args([*map(str, argv), "--device", device]).device == device
    assert build_parser().parse_args(list(map(str, argv))).device == "cpu"


def test_cli_cuda_n_reaches_the_session(no_cuda, run_cli, tmp_path):
    """cuda:1 passes argparse and reaches make_session: on the CPU onnxruntime, its one-line error."""
    wav = tmp_path / "a.wav"
    sf.write(wav, synthesize(Voice("espeak-ng", "en-us", "espeak-0"), "a garden", Prosody()), 16000)
    rc, out, err = run_cli("transcribe", STREAM, wav, "--device", "cuda:1")
    assert rc == 2 and not out
    assert err.startswith("speechkit: error: device='cuda:1': ") and len(err.strip().splitlines()) == 1, err
    assert "CUDAExecutionProvider" in err


def test_bench_serve_samples_the_gpu_it_names(monkeypatch):
    """cuda:N's GPU as nvidia-smi and NVML number them: the N-th of CUDA_VISIBLE_DEVICES, else N."""
    from speechkit.bench.serve_load import GpuProbe

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [GpuProbe(i).index for i in (0, 1, 3)] == [0, 1, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert [GpuProbe(i).index for i in (0, 1)] == [4, 6]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert GpuProbe().index == 5


@pytest.mark.parametrize("engine", [OnlineRecognizer, TransducerRecognizer, SherpaCtcRecognizer, OfflineRecognizer, CodecRuntime,
                                    Synthesizer, VoiceConverter, MusicGenerator, SpeakerRuntime, ContentEncoder, OnnxAttentionModel,
                                    api.StreamingAsr, api.OfflineAsr, api.VoiceConversion, api.TextToMusic, api.load], ids=lambda e: e.__name__)
def test_every_engine_takes_a_device(engine):
    param = inspect.signature(engine).parameters["device"]
    assert param.default == "cpu" and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)


def test_the_gpu_extra_never_pulls_torch():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = [re.match(r"[A-Za-z0-9._-]+", req).group().lower() for req in extras["gpu"]]
    assert names == ["onnxruntime-gpu", "onnx"]  # onnx: the state pool wraps the streaming graph; neither pulls torch


def test_the_cpu_session_is_todays():
    for s in (make_session(CODEC / "decoder.onnx"), cpu_session(CODEC / "decoder.onnx")):
        assert s.get_providers() == ["CPUExecutionProvider"]


# ---- the model commands: generate, vc, tts (synth, eval), codec (encode, decode, resynth, eval), speaker embed ----

@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """Tiny exports for the commands (about 6 s, on one torch thread): MAGNeT alone, MeanVC with its
    speaker encoder, CLEAR; a spoken wav, codec latents, a data dir. The codec is the shipped one."""
    import numpy as np
    import torch

    from conftest import make_tiny_data_dir
    from speechkit.export.audiogen import export_audiogen
    from speechkit.runtime.codec import CodecRuntime
    from test_audiogen_export import _codec as music_codec
    from test_audiogen_export import _models as music_models
    from test_tts_export import _codec as tts_codec
    from test_tts_export import _experiment as tts_experiment
    from test_vc_runtime import make_vc_export, tone

    root = tmp_path_factory.mktemp("device_commands")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (root / "music").mkdir()
        magnet, _ = music_models(root / "music", music_codec(root / "music")[1])
        export_audiogen(magnet, root / "music" / "onnx", weights="fp32")
        (root / "vc").mkdir()
        vc = make_vc_export(root / "vc")
        (root / "tts").mkdir()
        exp = tts_experiment(root / "tts", "exp", tts_codec(root / "tts"), stop_bias=-30.0)
        from speechkit.cli import main

        assert main(["tts", "export", str(exp), str(root / "tts" / "onnx")]) == 0
    finally:
        torch.set_num_threads(threads)
    sf.write(root / "a.wav", synthesize(Voice("espeak-ng", "en-us", "espeak-0"), "a quiet garden", Prosody()), 16000)
    np.save(root / "a.npy", CodecRuntime(CODEC).encode(tone(0.5, 150.0, 1)))
    make_tiny_data_dir(root / "data", n_utts=4)
    return {"MUSIC": root / "music" / "onnx", "VC": vc, "SPK": root / "vc" / "spk_onnx", "TTS": root / "tts" / "onnx",
            "CODEC": CODEC, "STREAM": STREAM, "WAV": root / "a.wav", "NPY": root / "a.npy", "DATA": root / "data"}


# argv of each command on an exported dir, upper-case words standing for the paths of ``exports`` ("OUT": the output);
# EVALS are not run to the end on the CPU here (codec eval's judge takes many seconds)
COMMANDS = {
    "generate": ["generate", "MUSIC", "--text", "calm piano", "--seconds", "0.2", "--steps", "2,1,1", "--out", "OUT"],
    "vc": ["vc", "VC", "--source", "WAV", "--reference", "WAV", "--out", "OUT"],
    "vc-stream": ["vc", "convert", "VC", "--source", "WAV", "--reference", "WAV", "--out", "OUT", "--stream"],
    "tts": ["tts", "TTS", "--text", "hi", "--prompt", "WAV", "--out", "OUT", "--steps", "2"],
    "codec-encode": ["codec", "encode", "CODEC", "WAV", "OUT"],
    "codec-decode": ["codec", "decode", "CODEC", "NPY", "OUT"],
    "codec-resynth": ["codec", "resynth", "CODEC", "WAV", "OUT"],
    "speaker-embed": ["speaker", "embed", "SPK", "WAV", "--out", "OUT"],
}
EVALS = {
    "tts-eval": ["tts", "eval", "TTS", "DATA", "--out-dir", "OUT", "--judges", "none", "--max-utts", "2"],
    "codec-eval": ["codec", "eval", "CODEC", "DATA", "--asr-model", "STREAM", "--max-utts", "2", "--rtf-utts", "1"],
}


def _argv(exports: dict, argv: list[str], out: Path) -> list:
    return [out if a == "OUT" else exports.get(a, a) for a in argv]


@pytest.mark.parametrize("name", [*COMMANDS, *EVALS])
def test_model_commands_device_cuda_is_one_line(no_cuda, run_cli, exports, tmp_path, name):
    """An exported dir with --device cuda on the CPU onnxruntime: make_session's one line, nothing written."""
    out = tmp_path / "out.bin"
    rc, stdout, err = run_cli(*_argv(exports, {**COMMANDS, **EVALS}[name], out), "--device", "cuda")
    assert rc == 2 and not stdout, err
    assert err.startswith("speechkit: error: ") and len(err.strip().splitlines()) == 1, err
    assert "CUDAExecutionProvider" in err and "speechkit[gpu]" in err
    assert not out.exists() or not list(out.rglob("*.wav"))  # tts eval makes its --out-dir before it opens the model


def _output(path: Path):
    import numpy as np

    if path.suffix == ".wav":
        return sf.read(path, dtype="float32")[0]
    return np.load(path)


@pytest.mark.parametrize("name", COMMANDS)
def test_model_commands_put_every_session_on_the_device_asked(monkeypatch, run_cli, exports, tmp_path, name):
    """With CUDA faked: no --device (and --device cpu) asks the CPU alone for every session, --device
    cuda asks CUDA first for every session (the vc's content encoder, codec and speaker encoder too),
    on GPU 0, and cuda:1 on GPU 1 (tried on the commands with the most sessions), and the output is
    the CPU's (the fake runs on the CPU)."""
    import numpy as np

    options = []
    asked = fake_cuda(monkeypatch, options=options)
    suffix = ".npy" if name in ("codec-encode", "speaker-embed") else ".wav"
    outs = {}
    for device in (None, "cpu", "cuda", "cuda:1"):
        if device == "cpu" and name not in ("generate", "vc", "codec-resynth"):
            continue  # the default is cpu; a few commands say so explicitly
        if device == "cuda:1" and name not in ("generate", "vc", "tts"):
            continue
        del asked[:], options[:]
        outs[device] = tmp_path / f"{device}{suffix}"
        rc, _, err = run_cli(*_argv(exports, COMMANDS[name], outs[device]), *(["--device", device] if device else []))
        assert rc == 0, err
        want = CUDA if device in ("cuda", "cuda:1") else ["CPUExecutionProvider"]
        assert asked and all(a == want for a in asked), (device, asked)
        gpus = {int(o["CUDAExecutionProvider"]["device_id"]) for o in options if "CUDAExecutionProvider" in o}
        assert gpus == ({1} if device == "cuda:1" else {0} if device == "cuda" else set()), (device, options)
        if name.startswith("vc") and device in ("cuda", "cuda:1"):
            assert len(asked) >= 6  # reference, step, codec encoder + decoder, content encoder, speaker encoder
    for device in outs:
        a, b = _output(outs[None]), _output(outs[device])
        assert a.shape == b.shape and a.size and np.array_equal(a, b), device


def test_the_evals_label_their_timing_with_the_device(monkeypatch, run_cli, exports, tmp_path):
    """tts eval and codec eval's codec on an exported dir with --device cuda (faked): every session on
    CUDA and the speed reported as cuda's, not the CPU's (codec eval's own run is left out: its judge's
    held-out text takes seconds)."""
    import json

    import numpy as np

    from speechkit.eval.codec_eval import load_eval_codec

    asked = fake_cuda(monkeypatch)
    rc, _, err = run_cli(*_argv(exports, EVALS["tts-eval"], tmp_path / "tts"), "--device", "cuda")
    assert rc == 0, err
    assert asked and all(a == CUDA for a in asked), asked
    assert json.loads((tmp_path / "tts" / "synth.json").read_text())["device"] == "cuda (onnxruntime)"
    for device, sessions, label, rtf in ((None, ["CPUExecutionProvider"], "onnxruntime, 1 thread", {"cpu", "cpu_threads"}),
                                         ("cuda", CUDA, "onnxruntime, cuda", {"cuda"})):
        del asked[:]
        codec = load_eval_codec(CODEC, device)
        assert asked == [sessions] * 2 and codec.device == (device or "cpu") and codec.runtime == label
        assert set(codec.rtf([np.zeros(1600, np.float32)])) == rtf


def test_codec_eval_counts_tensorrt_as_a_gpu(monkeypatch, tmp_path):
    from speechkit.eval.codec_eval import load_eval_codec

    monkeypatch.setenv("SPEECHKIT_TRT_CACHE", str(tmp_path))
    asked = fake_cuda(monkeypatch, available=TRT)
    codec = load_eval_codec(CODEC, "tensorrt:1")
    assert asked == [TRT] * 2 and codec.on_gpu and codec.runtime == "onnxruntime, tensorrt:1"


def test_generate_takes_only_cpu_or_cuda(run_cli, exports, tmp_path):
    with pytest.raises(SystemExit) as e:
        run_cli(*_argv(exports, COMMANDS["generate"], tmp_path / "x.wav"), "--device", "gpu")
    assert e.value.code == 2


@pytest.mark.parametrize("argv", [["generate"], ["vc", "convert"], ["tts", "synth"], ["tts", "eval"], ["codec", "encode"],
                                  ["codec", "decode"], ["codec", "resynth"], ["codec", "eval"], ["speaker", "embed"]],
                         ids=" ".join)
def test_device_help_names_both_runtimes(argv):
    import argparse

    from speechkit.commands.tts import build_tts_parser
    from speechkit.commands.vc import build_vc_parser

    if argv[0] in ("vc", "tts"):
        parser = (build_vc_parser if argv[0] == "vc" else build_tts_parser)()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[1]]
    else:
        from speechkit.cli import build_parser

        sub = build_parser()
        for word in argv:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    help_ = next(a for a in sub._actions if "--device" in a.option_strings).help
    assert "ONNX Runtime on cpu (default), cuda[:N] or tensorrt[:N]" in help_, help_
    assert argv == ["generate"] or help_.startswith("experiment dirs: cuda | cpu (default"), help_
