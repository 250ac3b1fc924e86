"""ASR heads by name: each is a model class on the shared encoder front and its config dataclass.

Every model has ``forward(feats, feat_lens, tokens, token_lens) -> (loss, stats)`` and
``recognize(feats, feat_lens, beam, att_context) -> token ids per utterance``.
"""

from __future__ import annotations

from speechkit.models.asr.attention_decoder import AttentionDecoderConfig
from speechkit.models.asr.attention_model import AttentionAsrModel
from speechkit.models.asr.ctc_model import AsrEncoderModel, AsrModelConfig, CtcAsrModel, CtcHeadConfig
from speechkit.models.asr.paraformer import ParaformerConfig, ParaformerModel
from speechkit.models.asr.transducer import HybridTransducerModel, TransducerHeadConfig

HEADS = {
    "ctc": (CtcHeadConfig, CtcAsrModel),
    "paraformer": (ParaformerConfig, ParaformerModel),
    "attention": (AttentionDecoderConfig, AttentionAsrModel),
    "transducer": (TransducerHeadConfig, HybridTransducerModel),
}


def build_asr_model(cfg: AsrModelConfig, vocab_size: int, tokenizer=None) -> AsrEncoderModel:
    model = HEADS[cfg.head][1](cfg, vocab_size)
    if tokenizer is not None and hasattr(model, "set_tokenizer"):
        model.set_tokenizer(tokenizer)
    return model
