"""Opening an exported model for the torch-free runtime: a CPU ONNX Runtime session, its
metadata, and the fbank configuration the metadata describes."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from speechkit.audio.fbank import FbankConfig
from speechkit.errors import SpeechkitError


def cpu_session(path: str | Path, num_threads: int = 1, memory_arena: bool = True) -> ort.InferenceSession:
    """``memory_arena=False`` gives working memory back after each call instead of keeping the
    largest batch's (a server whose batch size follows its load)."""
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = memory_arena
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    # weight-only int8 files (export/quantize.py): fold DequantizeLinear into float32 weights once
    # at load instead of keeping QDQ pairs for integer kernels
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def open_model(model_dir: str | Path, model_file: str, family: str, what: str, num_threads: int = 1,
               memory_arena: bool = True) -> tuple[ort.InferenceSession, dict[str, str], FbankConfig]:
    """→ (session, metadata, fbank config); one-line errors for a missing file or another family."""
    path = Path(model_dir) / model_file
    if not path.is_file():
        raise SpeechkitError(f"{path}: no such model (export one with `speechkit export onnx EXP_DIR OUT_DIR`)")
    session = cpu_session(path, num_threads, memory_arena)
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("model_family") != family:
        raise SpeechkitError(f"{path}: not a {what} model (model_family={meta.get('model_family')!r})")
    fbank = FbankConfig(sample_rate=int(meta["sample_rate"]), num_mel_bins=int(meta["num_mel_bins"]),
                        frame_length_ms=float(meta["frame_length_ms"]), frame_shift_ms=float(meta["frame_shift_ms"]))
    return session, meta, fbank
