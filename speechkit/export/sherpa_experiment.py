"""`speechkit export sherpa`: a trained streaming experiment → a folder sherpa-onnx loads (a hybrid
CTC/transducer model as its online transducer, a streaming CTC model as its zipformer2 CTC), with
an ``export.json`` whose ``model_family`` lets speechkit's own runtime open the same folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from speechkit.errors import SpeechkitError
from speechkit.export.sherpa import export_sherpa_ctc, export_sherpa_transducer
from speechkit.inference.asr import Recognizer
from speechkit.models.asr.ctc_model import CtcAsrModel
from speechkit.models.asr.transducer import HybridTransducerModel
from speechkit.nn.streaming_conformer import StreamingConformerEncoder

TRANSDUCER_FAMILY = "transducer-streaming-conformer"
CTC_FAMILY = "ctc-streaming-conformer-sherpa"  # not our model.onnx layout, so not "ctc-streaming-conformer"


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


def export_sherpa_exp_dir(exp_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "model_avg.pt",
                          att_context: tuple[int, int] | None = None) -> dict:
    """Export an experiment's streaming conformer for one attention context (default: the first
    finite one it was trained with) to ``out_dir``; the checks of ``speechkit.export.sherpa`` run
    before it returns. Returns the ``export.json`` written there."""
    rec = Recognizer.from_exp_dir(exp_dir, checkpoint, device="cpu")
    model, tok = rec.model.float().eval(), rec.tokenizer
    if not isinstance(model.encoder, StreamingConformerEncoder):
        raise SpeechkitError(f"{exp_dir}: sherpa export needs a streaming_conformer encoder, not '{model.cfg.encoder}'")
    context = _att_context(model.encoder, att_context)
    tokens = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    fbank = model.cfg.frontend_conf
    if isinstance(model, HybridTransducerModel):
        family = TRANSDUCER_FAMILY
        report = export_sherpa_transducer(out_dir, encoder=model.encoder, frontend=model.cmvn, decoder=ProjectedDecoder(model),
                                          joiner=model.joiner, tokens=tokens, att_context=context,
                                          context_size=model.hc.context_size, fbank=fbank, encoder_proj=model.joiner.encoder_proj)
    elif isinstance(model, CtcAsrModel):
        family = CTC_FAMILY
        report = export_sherpa_ctc(out_dir, encoder=model.encoder, frontend=model.cmvn, ctc=model.ctc, tokens=tokens,
                                   att_context=context, fbank=fbank)
    else:
        raise SpeechkitError(f"{exp_dir}: sherpa export covers the transducer and ctc heads, not '{model.cfg.head}'")
    out_dir = Path(out_dir)
    if (Path(exp_dir) / "bpe.model").is_file():  # our runtime spells pieces with the tokenizer, tokens.txt is sherpa-onnx's
        shutil.copy(Path(exp_dir) / "bpe.model", out_dir / "bpe.model")
    info = {"model_family": family, "exp_dir": str(exp_dir), "checkpoint": checkpoint, "att_context": list(context),
            "tokenizer": tok.kind, **report}
    (out_dir / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
