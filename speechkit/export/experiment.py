"""`speechkit export onnx`: an experiment dir → a model dir (model.onnx, tokenizer, export.json),
by model family — the streaming CTC chunk graph or the Paraformer graph — never without its
parity check against PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from speechkit.errors import SpeechkitError
from speechkit.export import paraformer as pf
from speechkit.export import streaming_asr as sa
from speechkit.inference.asr import Recognizer
from speechkit.models.asr.ctc_model import CtcAsrModel
from speechkit.nn.streaming_conformer import StreamingConformerEncoder


def export_exp_dir(exp_dir: str | Path, out_dir: str | Path, utterances: list[np.ndarray], *, checkpoint: str = "model_avg.pt",
                   int8: bool = False) -> dict:
    """Export an experiment to ``out_dir`` (model.onnx, tokenizer, export.json): a streaming CTC
    model as the chunk graph, a Paraformer as one offline graph. The fp32 graph is checked against
    PyTorch on ``utterances`` (fbank arrays) before anything is kept; with ``int8`` the shipped
    model.onnx stores its weights as int8 (float32 arithmetic: export/quantize.py), kept only when
    it gives the float32 graph's tokens within the family's stated tolerance (``check_int8``)."""
    rec = Recognizer.from_exp_dir(exp_dir, checkpoint, device="cpu")
    model = rec.model.float().eval()
    if len(utterances) < 1:
        raise SpeechkitError("export needs at least one test utterance for the parity check")
    if isinstance(model, pf.ParaformerModel):
        export, check, check_int8, meta = pf.export_paraformer, pf.check_parity, pf.check_int8, pf.metadata(model, rec.tokenizer)
    elif isinstance(model, CtcAsrModel) and isinstance(model.encoder, StreamingConformerEncoder):
        export, check, check_int8, meta = sa.export_streaming_ctc, sa.check_parity, sa.check_int8, sa.metadata(model, rec.tokenizer)
    else:
        raise SpeechkitError(f"{exp_dir}: ONNX export covers streaming_conformer + ctc and paraformer models, "
                             f"not encoder '{model.cfg.encoder}' with head '{model.cfg.head}'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = out_dir / "model.fp32.onnx"
    export(model, fp32, meta)
    try:
        report = check(model, fp32, utterances)
    except Exception:
        fp32.unlink(missing_ok=True)
        raise
    for name in ("tokens.txt", "bpe.model"):
        if (Path(exp_dir) / name).is_file():
            shutil.copy(Path(exp_dir) / name, out_dir / name)
    if int8:
        import onnx

        from speechkit.export.quantize import quantize_weights_int8

        tmp = out_dir / "model.int8.onnx"
        onnx.save(quantize_weights_int8(onnx.load(str(fp32))), str(tmp))
        try:
            int8_report = check_int8(model, fp32, tmp, utterances)
        except Exception:
            tmp.unlink(missing_ok=True)
            fp32.unlink(missing_ok=True)
            raise
        tmp.replace(out_dir / "model.onnx")
        fp32.unlink()
    else:
        fp32.replace(out_dir / "model.onnx")
    info = {"exp_dir": str(exp_dir), "checkpoint": checkpoint, "model_family": meta["model_family"], "int8": int8,
            "parity": report, **({"int8_check": int8_report} if int8 else {}),
            "size_mb": round((out_dir / "model.onnx").stat().st_size / 1e6, 2)}
    (out_dir / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
