"""The shared front of every ASR model (global CMVN, SpecAugment, a registered encoder) and the
CTC head. CMVN and SpecAugment live in the model so a checkpoint (and its ONNX export) takes raw
fbank. Other heads (``paraformer``, ``attention``) subclass :class:`AsrEncoderModel`; see
``speechkit.models.asr.heads``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from speechkit.audio.augment import SpecAugConfig, SpecAugment
from speechkit.audio.fbank import FbankConfig
from speechkit.decoding.ctc import ctc_greedy, ctc_prefix_beam_search
from speechkit.errors import ConfigError
from speechkit.nn.conformer import ConformerConfig, ConformerEncoder
from speechkit.nn.streaming_conformer import StreamingConformerConfig, StreamingConformerEncoder

ENCODERS = {
    "conformer": (ConformerConfig, ConformerEncoder),
    "streaming_conformer": (StreamingConformerConfig, StreamingConformerEncoder),
}


HEAD_NAMES = ("ctc", "paraformer", "attention", "transducer")


@dataclass(frozen=True)
class CtcHeadConfig:
    dropout_rate: float = 0.0


@dataclass(frozen=True)
class AsrModelConfig:
    frontend_conf: FbankConfig = field(default_factory=FbankConfig)
    specaug_conf: SpecAugConfig | None = field(default_factory=SpecAugConfig)
    encoder: str = "conformer"
    encoder_conf: ConformerConfig = field(default_factory=ConformerConfig)
    head: str = "ctc"
    head_conf: Any = field(default_factory=CtcHeadConfig)  # the head's own config dataclass

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder '{self.encoder}' (known: {', '.join(ENCODERS)})")
        if self.head not in HEAD_NAMES:
            raise ConfigError(f"unknown head '{self.head}' (known: {', '.join(HEAD_NAMES)})")


class GlobalCMVN(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("istd", torch.ones(dim))

    def set_stats(self, mean: np.ndarray, istd: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(mean))
        self.istd.copy_(torch.from_numpy(istd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.istd


class AsrEncoderModel(nn.Module):
    """CMVN → SpecAugment (training) → encoder, plus a CTC projection when ``ctc`` is asked for."""

    def __init__(self, cfg: AsrModelConfig, vocab_size: int, ctc: bool = True):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        dim = cfg.frontend_conf.num_mel_bins
        self.cmvn = GlobalCMVN(dim)
        self.specaug = SpecAugment(cfg.specaug_conf) if cfg.specaug_conf else None
        _, encoder_cls = ENCODERS[cfg.encoder]
        self.encoder = encoder_cls(cfg.encoder_conf, dim)
        self.ctc = nn.Linear(self.encoder.output_size, vocab_size) if ctc else None
        self.ctc_dropout: nn.Module = nn.Identity()  # the CTC head's own dropout (CtcHeadConfig.dropout_rate)
        self.fusion = None  # decoding: a word LM fused into the CTC prefix beam search (speechkit decode --lm)

    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor, att_context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """B: batch, T: fbank frames, F: mel bins, T': encoder frames, D: encoder dim.

        feats (B, T, F) raw fbank, feat_lens (B,) → (B, T', D), (B,). ``att_context`` (left, right)
        picks a streaming encoder's attention context (None: its default / one drawn in training).
        ``feat_lens`` may be on the host (pinned): it is copied without waiting for the device.
        """
        feat_lens = feat_lens.to(feats.device, non_blocking=True)
        x = self.cmvn(feats)
        if self.specaug is not None:
            x = self.specaug(x, feat_lens)
        return self.encoder(x, feat_lens, att_context)

    def ctc_loss(self, enc: torch.Tensor, enc_lens: torch.Tensor, tokens: torch.Tensor, token_lens: torch.Tensor) -> torch.Tensor:
        """CTC loss of the encoder output, summed over the batch and divided by B."""
        log_probs = torch.log_softmax(self.ctc(self.ctc_dropout(enc)).float(), dim=-1)
        loss = nn.functional.ctc_loss(log_probs.transpose(0, 1), tokens, enc_lens, token_lens, blank=0,
                                      reduction="sum", zero_infinity=True)
        return loss / enc.shape[0]

    def ctc_log_probs(self, feats: torch.Tensor, feat_lens: torch.Tensor, att_context=None) -> tuple[torch.Tensor, torch.Tensor]:
        """→ CTC log-probabilities (B, T', V) in float32, valid lengths (B,)."""
        enc, lens = self.encode(feats, feat_lens, att_context)
        return torch.log_softmax(self.ctc(self.ctc_dropout(enc)).float(), dim=-1), lens


class CtcAsrModel(AsrEncoderModel):
    def __init__(self, cfg: AsrModelConfig, vocab_size: int):
        super().__init__(cfg, vocab_size, ctc=True)
        self.ctc_dropout = nn.Dropout(cfg.head_conf.dropout_rate)

    def forward(self, feats, feat_lens, tokens, token_lens) -> tuple[torch.Tensor, dict[str, float]]:
        """tokens (B, U) padded with anything, token_lens (B,) → (loss summed over the batch / B, detached stats).

        CTC's CUDA kernel reads the lengths on the host: given host lengths (as the trainer passes
        them) it gets host lengths and the step needs no device sync.
        """
        enc, lens = self.encode(feats, feat_lens)
        if feat_lens.device.type == "cpu":
            lens = self.encoder.embed.output_lengths(feat_lens)
        loss = self.ctc_loss(enc, lens, tokens, token_lens)
        return loss, {"ctc": loss.detach()}

    @torch.no_grad()
    def recognize(self, feats: torch.Tensor, feat_lens: torch.Tensor, beam: int = 1, att_context=None) -> list[list[int]]:
        """Greedy (beam 1) or prefix beam search (with ``self.fusion``'s word LM, if set) → token ids per utterance."""
        log_probs, lens = self.ctc_log_probs(feats, feat_lens, att_context)
        log_probs = log_probs.cpu().numpy()
        return [ctc_greedy(lp[:n]) if beam <= 1 else list(ctc_prefix_beam_search(lp[:n], beam, fusion=self.fusion)[0][0])
                for lp, n in zip(log_probs, lens.tolist())]
