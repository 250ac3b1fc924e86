"""Opening an exported model for the torch-free runtime: a CPU ONNX Runtime session, its
metadata, and the fbank configuration the metadata describes."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from speechkit.audio.fbank import FbankConfig
from speechkit.errors import SpeechkitError


def cpu_session(path: str | Path, num_threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def open_model(model_dir: str | Path, model_file: str, family: str, what: str, num_threads: int = 1
               ) -> tuple[ort.InferenceSession, dict[str, str], FbankConfig]:
    """→ (session, metadata, fbank config); one-line errors for a missing file or another family."""
    path = Path(model_dir) / model_file
    if not path.is_file():
        raise SpeechkitError(f"{path}: no such model (export one with `speechkit export onnx EXP_DIR OUT_DIR`)")
    session = cpu_session(path, num_threads)
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("model_family") != family:
        raise SpeechkitError(f"{path}: not a {what} model (model_family={meta.get('model_family')!r})")
    fbank = FbankConfig(sample_rate=int(meta["sample_rate"]), num_mel_bins=int(meta["num_mel_bins"]),
                        frame_length_ms=float(meta["frame_length_ms"]), frame_shift_ms=float(meta["frame_shift_ms"]))
    return session, meta, fbank
