"""`speechkit export sherpa`: a trained streaming experiment → a folder sherpa-onnx loads (a hybrid
CTC/transducer model as its online transducer, or its CTC head as a zipformer2 CTC; a streaming CTC
model as its zipformer2 CTC), with an ``export.json`` whose ``model_family`` lets speechkit's own
runtime (:mod:`speechkit.runtime.transducer`) open the same folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from speechkit.errors import SpeechkitError
from speechkit.export.sherpa import export_sherpa_ctc, export_sherpa_transducer, quantize_folder_int8
from speechkit.inference.asr import Recognizer
from speechkit.models.asr.ctc_model import CtcAsrModel
from speechkit.models.asr.transducer import HybridTransducerModel
from speechkit.nn.streaming_conformer import StreamingConformerEncoder
from speechkit.runtime.transducer import CTC_FAMILY, TRANSDUCER_FAMILY

HEADS = ("auto", "transducer", "ctc")  # auto: a hybrid's transducer, a CTC model's CTC


class ProjectedDecoder(nn.Module):
    """The stateless decoder followed by the joiner's decoder projection: (N, C) int64 → (N, J)."""

    def __init__(self, model: HybridTransducerModel):
        super().__init__()
        self.decoder, self.proj = model.decoder, model.joiner.decoder_proj

    def forward(self, y):
        return self.proj(self.decoder(y))


def _att_context(encoder: StreamingConformerEncoder, att_context: tuple[int, int] | None) -> tuple[int, int]:
    streamable = [tuple(c) for c in encoder.cfg.streamable()]
    if att_context is None:
        if not streamable:
            raise SpeechkitError("the encoder was trained with no finite (left, right) attention context to export")
        return streamable[0]
    if tuple(att_context) not in streamable:
        known = ", ".join(f"{l},{r}" for l, r in streamable)
        raise SpeechkitError(f"att_context {att_context[0]},{att_context[1]} was not trained (streamable: {known})")
    return tuple(att_context)


def _pick_head(exp_dir: str | Path, model: nn.Module, head: str) -> str:
    """``head`` resolved for ``model``: "transducer" or "ctc", or a one-line error when it has no such head."""
    if isinstance(model, HybridTransducerModel):
        if head == "ctc" and model.ctc is None:
            raise SpeechkitError(f"{exp_dir}: this transducer has no CTC head to export (head_conf.ctc_weight 0)")
        return "ctc" if head == "ctc" else "transducer"
    if isinstance(model, CtcAsrModel):
        if head == "transducer":
            raise SpeechkitError(f"{exp_dir}: a CTC model has no transducer head to export (use --head ctc or auto)")
        return "ctc"
    raise SpeechkitError(f"{exp_dir}: sherpa export covers the transducer and ctc heads, not '{model.cfg.head}'")


def export_sherpa_exp_dir(exp_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "model_avg.pt",
                          att_context: tuple[int, int] | None = None, head: str = "auto", int8: bool = False) -> dict:
    """Export an experiment's streaming conformer for one attention context (default: the first
    finite one it was trained with) to ``out_dir``, with the decoder ``head`` names (one of
    ``HEADS``: a hybrid's ``ctc`` head gives the same folder a CTC experiment does); the checks of
    ``speechkit.export.sherpa`` run before it returns; ``int8``: the graphs then stored with int8
    weights and checked against float32 (``quantize_folder_int8``). Returns the ``export.json``
    written there."""
    if head not in HEADS:
        raise SpeechkitError(f"head '{head}' is not one of {', '.join(HEADS)}")
    rec = Recognizer.from_exp_dir(exp_dir, checkpoint, device="cpu")
    model, tok = rec.model.float().eval(), rec.tokenizer
    if not isinstance(model.encoder, StreamingConformerEncoder):
        raise SpeechkitError(f"{exp_dir}: sherpa export needs a streaming_conformer encoder, not '{model.cfg.encoder}'")
    context = _att_context(model.encoder, att_context)
    tokens = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    fbank = model.cfg.frontend_conf
    head = _pick_head(exp_dir, model, head)
    if head == "transducer":
        family = TRANSDUCER_FAMILY
        report = export_sherpa_transducer(out_dir, encoder=model.encoder, frontend=model.cmvn, decoder=ProjectedDecoder(model),
                                          joiner=model.joiner, tokens=tokens, att_context=context,
                                          context_size=model.hc.context_size, fbank=fbank, encoder_proj=model.joiner.encoder_proj)
    else:
        family = CTC_FAMILY
        report = export_sherpa_ctc(out_dir, encoder=model.encoder, frontend=model.cmvn, ctc=model.ctc, tokens=tokens,
                                   att_context=context, fbank=fbank)
    out_dir = Path(out_dir)
    if (Path(exp_dir) / "bpe.model").is_file():  # our runtime spells pieces with the tokenizer, tokens.txt is sherpa-onnx's
        shutil.copy(Path(exp_dir) / "bpe.model", out_dir / "bpe.model")
    info = {"model_family": family, "exp_dir": str(exp_dir), "checkpoint": checkpoint, "head": head,
            "att_context": list(context), "tokenizer": tok.kind, **report, "weights": "fp32"}
    if int8:
        graph = report["metadata"]["encoder" if head == "transducer" else "model"]
        info["int8"] = quantize_folder_int8(out_dir, "encoder.onnx" if head == "transducer" else "model.onnx",
                                            int(graph["T"]), fbank.num_mel_bins)
        info["weights"] = "int8"
    info["size_mb"] = round(sum(f.stat().st_size for f in out_dir.glob("*.onnx")) / 1e6, 2)  # the graphs as written
    (out_dir / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
