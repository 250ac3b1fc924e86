"""Speaker encoder (ECAPA-TDNN) → ONNX: ``speaker.onnx`` takes fbank (B, T, num_mel_bins), any B
and T, and gives the L2-normalised embedding (B, D) that ``embed_feats`` gives, so the torch-free
runtime (``speechkit.runtime.speaker``) can embed a reference voice. The metadata carries the
fbank configuration and the file windowing of ``speechkit.models.speaker.embed``. Export refuses
to finish unless ONNX Runtime and PyTorch agree on random inputs of several lengths, one as long
as the longest window a file is embedded in.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speechkit.config import to_dict
from speechkit.errors import SpeechkitError
from speechkit.export.onnx_file import write_onnx
from speechkit.models.speaker import embed
from speechkit.models.speaker.ecapa import EcapaTdnn
from speechkit.models.speaker.io import FAMILY, load_speaker_encoder

MODEL_FILE = "speaker.onnx"
EMBED_TOL = 1e-4  # max |Δ| of unit-length float32 embeddings, ONNX Runtime vs PyTorch
COSINE_TOL = 1e-6  # 1 − cosine between the two embeddings
# frames of the parity inputs: a minimum-length file (0.5 s), odd lengths, and the longest window
# ``embed_file`` runs in one pass (1.5 × WINDOW_SECONDS = 30 s)
CHECK_SECONDS = (embed.MIN_SECONDS, 1.37, 4.01, 1.5 * embed.WINDOW_SECONDS)


class EmbedGraph(nn.Module):
    """B: batch, T: fbank frames (every row T real frames), F: mel bins.
    feats (B, T, F) → L2-normalised embedding (B, D)."""

    def __init__(self, model: EcapaTdnn):
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.embed(feats)


def metadata(model: EcapaTdnn) -> dict:
    fbank = embed.fbank_config(model)
    return {"model_family": FAMILY, **fbank.as_dict(), "embed_dim": model.cfg.embed_dim,
            "min_seconds": embed.MIN_SECONDS, "window_seconds": embed.WINDOW_SECONDS,
            "encoder_config": json.dumps({"encoder": "ecapa", "encoder_conf": to_dict(model.cfg)})}


def export_speaker(model: EcapaTdnn | str | Path, out_dir: str | Path, seed: int = 0) -> dict:
    """An encoder (in memory: a copy is exported, the caller's is left as it was), an experiment
    dir, model.pt or checkpoint.pt → ``out_dir/speaker.onnx`` (float32 weights) and
    ``out_dir/export.json`` (metadata, parity report, file size). The files are written to a
    staging folder and moved into ``out_dir`` only after the parity check passes."""
    if isinstance(model, EcapaTdnn):
        encoder, source = copy.deepcopy(model).cpu(), f"{type(model).__name__} in memory"
    else:
        encoder, source = load_speaker_encoder(model), str(model)
    encoder = encoder.float().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        info = _write_and_check(encoder, staging, seed)
        info["model"] = source
        (staging / "export.json").write_text(json.dumps(info, indent=1) + "\n")
        for f in sorted(staging.iterdir()):
            f.replace(out_dir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _write_and_check(model: EcapaTdnn, out_dir: Path, seed: int) -> dict:
    meta = metadata(model)
    dummy = torch.randn(2, 123, model.cfg.num_mel_bins)  # batch and length unlike any checked below
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, children included
    write_onnx(EmbedGraph(model).eval(), (dummy,), out_dir / MODEL_FILE, ["feats"], ["embedding"],
               {"feats": {0: "B", 1: "T"}, "embedding": {0: "B"}}, meta)
    report = check_parity(model, out_dir / MODEL_FILE, seed)
    size = (out_dir / MODEL_FILE).stat().st_size
    return {**meta, "weights": "float32", "size_mb": round(size / 1e6, 3), "tolerance": {"max_abs_diff": EMBED_TOL,
            "one_minus_cosine": COSINE_TOL}, "parity": report}


def check_parity(model: EcapaTdnn, onnx_path: Path, seed: int = 0) -> list[dict]:
    """Random fbank-like inputs of ``CHECK_SECONDS`` one at a time, and a batch of three, through
    PyTorch and through the runtime's session (so the runtime opens the file and reads its
    metadata) → one row per input; a one-line error past the tolerances."""
    from speechkit.runtime.speaker import SpeakerRuntime

    session = SpeakerRuntime(onnx_path.parent).session
    fbank = embed.fbank_config(model)
    rng = np.random.default_rng(seed)
    inputs = [rng.normal(-5.0, 3.0, (1, round(s * fbank.frames_per_second), fbank.num_mel_bins)) for s in CHECK_SECONDS]
    inputs.append(rng.normal(-5.0, 3.0, (3, inputs[1].shape[1], fbank.num_mel_bins)))
    report = []
    for feats in inputs:
        x = feats.astype(np.float32)
        with torch.no_grad():
            ref = model.embed(torch.from_numpy(x)).numpy()
        got = session.run(None, {"feats": x})[0]
        row = {"batch": x.shape[0], "frames": x.shape[1], "max_abs_diff": float(np.abs(got - ref).max()),
               "min_cosine": float(np.min(np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)))}
        report.append(row)
        if got.shape != ref.shape or row["max_abs_diff"] > EMBED_TOL or 1.0 - row["min_cosine"] > COSINE_TOL:
            raise SpeechkitError(f"ONNX Runtime and PyTorch disagree on a speaker embedding: {row} "
                                 f"(tolerance {EMBED_TOL} max |Δ|, {COSINE_TOL} 1 − cosine)")
    return report
