"""Opening an exported model for the torch-free runtime: an ONNX Runtime session on the CPU or a
CUDA GPU, its metadata, and the fbank configuration the metadata describes."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from speechkit.audio.fbank import FbankConfig
from speechkit.devices import parse_device
from speechkit.errors import SpeechkitError

GPU_INSTALL = "pip uninstall -y onnxruntime && pip install 'speechkit[gpu]'"


def make_session(path: str | Path, num_threads: int = 1, memory_arena: bool = True,
                 device: str = "cpu") -> ort.InferenceSession:
    """``device``: ``cpu``, ``cuda`` or ``cuda:N``; a CUDA session that ONNX Runtime could only
    start on the CPU is an error, never a silent fallback. ``memory_arena=False`` gives working
    memory back after each call instead of keeping the largest batch's (a server whose batch size
    follows its load)."""
    kind, index = parse_device(device)
    # the CPU stays behind CUDA for the few operators the CUDA provider lacks (ONNX Runtime places
    # each node on the first provider that has a kernel for it)
    first = "CUDAExecutionProvider" if kind == "cuda" else "CPUExecutionProvider"
    providers = [(first, {"device_id": index}), "CPUExecutionProvider"] if kind == "cuda" else [first]
    if first not in ort.get_available_providers():
        raise SpeechkitError(f"device={device!r}: this onnxruntime {ort.__version__} has no {first} "
                             f"(for a GPU: {GPU_INSTALL})")
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = memory_arena
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    # weight-only int8 files (export/quantize.py): fold DequantizeLinear into float32 weights once
    # at load instead of keeping QDQ pairs for integer kernels
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), opts, providers=providers)
    if session.get_providers()[0] != first:  # ONNX Runtime only logs a warning when CUDA fails to load
        raise SpeechkitError(f"{path}: onnxruntime could not start {first} (the session runs on "
                             f"{session.get_providers()[0]}); check the CUDA and cuDNN libraries onnxruntime-gpu "
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
