"""Opening an exported model for the torch-free runtime: an ONNX Runtime session on the CPU, a
CUDA GPU or TensorRT on a GPU, its metadata, and the fbank configuration the metadata describes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from speechkit.audio.fbank import FbankConfig
from speechkit.devices import parse_device, visible_gpus
from speechkit.errors import SpeechkitError

GPU_INSTALL = "pip uninstall -y onnxruntime && pip install 'speechkit[gpu]'"
FIRST_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
# what a GPU provider raises while it starts: pybind's RuntimeError for a CUDA call that failed
# (a bad device ordinal), ValueError for options, and ONNX Runtime's own status exceptions
# (Fail, EPFail, ...), which derive from Exception alone
ORT_ERRORS = (RuntimeError, ValueError, *(e for e in vars(ort_state).values()
                                         if isinstance(e, type) and issubclass(e, Exception)))


def trt_options(index: int) -> dict:
    """TensorRT's options on GPU ``index``: built engines cached under $SPEECHKIT_TRT_CACHE (default
    ~/.cache/speechkit/tensorrt), since a build takes minutes; fp16 only with SPEECHKIT_TRT_FP16=1,
    as it changes the numbers."""
    fp16 = os.environ.get("SPEECHKIT_TRT_FP16", "0")
    if fp16 not in ("0", "1"):
        raise SpeechkitError(f"SPEECHKIT_TRT_FP16 must be 0 or 1, got {fp16!r}")
    cache = Path(os.environ.get("SPEECHKIT_TRT_CACHE") or Path.home() / ".cache" / "speechkit" / "tensorrt")
    return {"device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_fp16_enable": fp16 == "1"}


def providers_for(kind: str, index: int) -> list:
    """ONNX Runtime's providers for a device, in order: it places each node on the first provider
    with a kernel for it, so CUDA stays behind TensorRT, and the CPU behind both, for what they lack."""
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    cuda = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return [("TensorrtExecutionProvider", trt_options(index)), *cuda] if kind == "tensorrt" else cuda


def ort_reason(error: Exception) -> str:
    """ONNX Runtime's message in one line: its first non-empty line without the status prefix, the
    C++ source location and signature, or the host and source of a CUDA call."""
    line = next((x.strip() for x in str(error).splitlines() if x.strip()), type(error).__name__)
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
    line = re.sub(r"^\S+\.(?:cc|cpp|cu|h):\d+ [^(]*\([^)]*\)(?: \[with [^\]]*\])? ", "", line)
    return re.sub(r" ; hostname=.*", "", line)


def gpus_seen(index: int) -> str:
    """What this process can see, for an error on GPU ``index`` (empty where unknown)."""
    count = visible_gpus()
    if count is None:
        return ""
    where = f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})" if "CUDA_VISIBLE_DEVICES" in os.environ else ""
    gpus = "no GPU" if count == 0 else "1 GPU (index 0)" if count == 1 else f"{count} GPUs (index 0 to {count - 1})"
    return f"; this process sees {gpus}{where}" + (f", so there is no GPU {index}" if index >= count else "")


def require_provider(device: str) -> tuple[str, int, str]:
    """``device`` → (kind, index, its first provider), or a one-line error when this onnxruntime
    lacks that provider; before any session opens (a recognizer with a device state pool opens
    its plain graph on the CPU first)."""
    kind, index = parse_device(device)
    first = FIRST_PROVIDER[kind]
    if first not in ort.get_available_providers():
        need = ("TensorRT needs onnxruntime-gpu plus the TensorRT libraries (libnvinfer)" if kind == "tensorrt"
                else "for a GPU")
        raise SpeechkitError(f"device={device!r}: this onnxruntime {ort.__version__} has no {first} "
                             f"({need}: {GPU_INSTALL})")
    return kind, index, first


def make_session(path: str | Path | bytes, num_threads: int = 1, memory_arena: bool = True,
                 device: str = "cpu", name: str | None = None) -> ort.InferenceSession:
    """``path``: a model file, or a serialized model (a graph built in memory) that errors call
    ``name``; ``device``: ``cpu``, ``cuda[:N]`` or ``tensorrt[:N]``; a GPU session that ONNX Runtime
    could not start on the provider asked, or only on a later one, is a one-line error, never a
    silent fallback. ``memory_arena=False`` gives working memory back after each call instead of
    keeping the largest batch's (a server whose batch size follows its load)."""
    model = path if isinstance(path, bytes) else str(path)
    name = name or ("a serialized model" if isinstance(path, bytes) else str(path))
    kind, index, first = require_provider(device)
    providers = providers_for(kind, index)
    if kind == "tensorrt":
        Path(providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = memory_arena
    # without an arena, the memory pattern's one large block per call had glibc give memory back and
    # page-fault it in again every call (`bench serve-engine`, 1000 streams: 18 s of kernel time
    # against 3.5 s without the pattern, and a lower peak; docs/serve.md)
    opts.enable_mem_pattern = memory_arena
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    # weight-only int8 files (export/quantize.py): fold DequantizeLinear into float32 weights once
    # at load instead of keeping QDQ pairs for integer kernels
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if kind == "cpu":
        return ort.InferenceSession(model, opts, providers=providers)
    try:
        # enable_fallback=0: ONNX Runtime's Python layer would otherwise print the error to stdout
        # and retry on the CPU (at load, and again whenever a run fails on the GPU)
        session = ort.InferenceSession(model, opts, providers=providers, enable_fallback=0)
    except ORT_ERRORS as e:
        raise SpeechkitError(f"device={device!r}: onnxruntime could not open {name} on {first}: "
                             f"{ort_reason(e)}{gpus_seen(index)}") from None
    if session.get_providers()[0] != first:  # ONNX Runtime only logs a warning when a provider's libraries fail to load
        libraries = "TensorRT (libnvinfer), CUDA and cuDNN" if kind == "tensorrt" else "CUDA and cuDNN"
        raise SpeechkitError(f"{name}: onnxruntime could not start {first} (the session runs on "
                             f"{session.get_providers()[0]}); check the {libraries} libraries onnxruntime-gpu "
                             f"{ort.__version__} needs")
    return session


def cpu_session(path: str | Path, num_threads: int = 1, memory_arena: bool = True) -> ort.InferenceSession:
    """A CPU session: what the export's parity checks compare against PyTorch."""
    return make_session(path, num_threads, memory_arena)


def open_model(model_dir: str | Path, model_file: str, family: str, what: str, num_threads: int = 1,
               memory_arena: bool = True, device: str = "cpu") -> tuple[ort.InferenceSession, dict[str, str], FbankConfig]:
    """→ (session, metadata, fbank config); one-line errors for a missing file or another family."""
    path = Path(model_dir) / model_file
    if not path.is_file():
        raise SpeechkitError(f"{path}: no such model (export one with `speechkit export onnx EXP_DIR OUT_DIR`)")
    session = make_session(path, num_threads, memory_arena, device)
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("model_family") != family:
        raise SpeechkitError(f"{path}: not a {what} model (model_family={meta.get('model_family')!r})")
    fbank = FbankConfig(sample_rate=int(meta["sample_rate"]), num_mel_bins=int(meta["num_mel_bins"]),
                        frame_length_ms=float(meta["frame_length_ms"]), frame_shift_ms=float(meta["frame_shift_ms"]))
    return session, meta, fbank
