"""The transducer head (RNN-T) trained together with CTC on one encoder, as NeMo's hybrid models:
one model decodes either way. The prediction network is stateless (an embedding and a depthwise
convolution over the last ``context_size`` tokens, as icefall's), and the projections sit where
sherpa-onnx's transducer models expect them: ``joiner.encoder_proj`` goes with the encoder graph,
``joiner.decoder_proj`` with the decoder graph, and ``joiner`` itself adds, tanh and projects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkit.decoding.ctc import BLANK_ID, ctc_greedy, ctc_prefix_beam_search
from speechkit.errors import ConfigError, SpeechkitError
from speechkit.models.asr.ctc_model import AsrEncoderModel, AsrModelConfig
from speechkit.nn.transducer_loss import blank_label_log_probs, pruned_rnnt_loss, rnnt_loss_from_log_probs

LOSSES = ("full", "pruned")


@dataclass(frozen=True)
class TransducerHeadConfig:
    decoder_dim: int = 256
    joiner_dim: int = 256
    context_size: int = 2  # tokens the prediction network sees (2: a trigram-like predictor)
    ctc_weight: float = 0.3  # loss = (1 - w) transducer + w CTC; 0 drops the CTC head
    ctc_dropout_rate: float = 0.0
    loss: str = "full"  # full | pruned (a factored joiner picks prune_range labels per frame)
    prune_range: int = 5
    simple_loss_scale: float = 0.5  # pruned: transducer loss = scale * simple + pruned

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"head_conf.loss: '{self.loss}' is not one of {', '.join(LOSSES)}")
        if not 0.0 <= self.ctc_weight < 1.0:
            raise ConfigError(f"head_conf.ctc_weight: {self.ctc_weight} is outside [0, 1)")
        if self.context_size < 1 or self.decoder_dim < 1 or self.joiner_dim < 1:
            raise ConfigError("head_conf: context_size, decoder_dim and joiner_dim must be positive")
        if self.prune_range < 2:
            raise ConfigError(f"head_conf.prune_range: {self.prune_range} is below 2")


class StatelessDecoder(nn.Module):
    """The prediction network over the last ``context_size`` tokens only ("RNN-transducer with
    stateless prediction network", Ghodsi et al., 2020, with icefall's depthwise convolution).
    Why not an LSTM: the output is a pure function of a few token ids, so streaming and ONNX
    carry no recurrent state, beam search merges hypotheses that share their last tokens (the
    decoder output is the same), and sherpa-onnx's transducer runtime feeds exactly a
    (N, context_size) int64 input. The blank id and -1 (sherpa-onnx's padding of a fresh stream)
    both embed to zeros, so any start of the context reads as "no tokens yet".
    """

    def __init__(self, vocab_size: int, dim: int, context_size: int, blank: int = BLANK_ID):
        super().__init__()
        self.context_size, self.blank = context_size, blank
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=blank)
        self.conv = nn.Conv1d(dim, dim, context_size, groups=dim, bias=False)

    def _embed(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1).to(self.embedding.weight.dtype)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """context (B, C) int64, the last C tokens, oldest first → (B, D_dec)."""
        x = self.conv(self._embed(context).transpose(1, 2))  # (B, D, 1)
        return torch.relu(x[..., -1])

    def forward_targets(self, tokens: torch.Tensor) -> torch.Tensor:
        """Training: tokens (B, U) → (B, U+1, D_dec); position u is ``forward`` of the C tokens
        before label u (blanks before the first)."""
        y = nn.functional.pad(tokens, (self.context_size, 0), value=self.blank)
        x = self.conv(self._embed(y).transpose(1, 2))  # (B, D, U+1)
        return torch.relu(x.transpose(1, 2))


class Joiner(nn.Module):
    """logits = output_linear(tanh(encoder_proj(enc) + decoder_proj(dec))). ``forward`` takes the
    projected inputs (J = joiner_dim), so the encoder projects each frame once and the decoder
    each context once, as in sherpa-onnx's three graphs."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        """enc (..., J), dec (..., J), broadcastable (training: (B, T, 1, J) and (B, 1, U+1, J)) → (..., V)."""
        return self.output_linear(torch.tanh(enc + dec))


class HybridTransducerModel(AsrEncoderModel):
    """The shared encoder with a transducer head and (ctc_weight > 0) a CTC head."""

    def __init__(self, cfg: AsrModelConfig, vocab_size: int):
        hc: TransducerHeadConfig = cfg.head_conf
        super().__init__(cfg, vocab_size, ctc=hc.ctc_weight > 0)
        self.hc = hc
        self.blank = BLANK_ID
        self.ctc_dropout = nn.Dropout(hc.ctc_dropout_rate)
        self.decoder = StatelessDecoder(vocab_size, hc.decoder_dim, hc.context_size, self.blank)
        self.joiner = Joiner(self.encoder.output_size, hc.decoder_dim, hc.joiner_dim, vocab_size)
        if hc.loss == "pruned":  # the factored joiner: training only, never exported
            self.simple_am_proj = nn.Linear(self.encoder.output_size, vocab_size)
            self.simple_lm_proj = nn.Linear(hc.decoder_dim, vocab_size)

    def forward(self, feats, feat_lens, tokens, token_lens) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """B: batch, T: fbank frames, F: mel bins, U: labels. feats (B, T, F), feat_lens (B,),
        tokens (B, U) padded with anything, token_lens (B,) → (loss summed over the batch / B,
        detached stats: each loss per utterance and per token)."""
        enc, enc_lens = self.encode(feats, feat_lens)
        token_lens_dev = token_lens.to(enc.device, non_blocking=True)
        inside = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < token_lens_dev[:, None]
        tokens = torch.where(inside, tokens, self.blank)
        n_tokens = token_lens.sum().clamp(min=1)
        rnnt, stats = self.transducer_loss(enc, enc_lens, tokens, token_lens_dev)
        b = enc.shape[0]
        stats["transducer_per_token"] = stats["transducer"] * b / n_tokens
        loss = rnnt
        if self.ctc is not None:
            lens = self.encoder.embed.output_lengths(feat_lens) if feat_lens.device.type == "cpu" else enc_lens
            ctc = self.ctc_loss(enc, lens, tokens, token_lens)
            loss = (1 - self.hc.ctc_weight) * rnnt + self.hc.ctc_weight * ctc
            stats["ctc"] = ctc.detach()
            stats["ctc_per_token"] = ctc.detach() * b / n_tokens
        return loss, stats

    def transducer_loss(self, enc: torch.Tensor, enc_lens: torch.Tensor, tokens: torch.Tensor,
                        token_lens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """enc (B, T', D), tokens (B, U) with blanks past token_lens → (the loss to train, summed
        over the batch / B; stats with ``transducer``, -log P summed / B)."""
        dec = self.decoder.forward_targets(tokens)  # (B, U+1, D_dec)
        enc_p, dec_p = self.joiner.encoder_proj(enc), self.joiner.decoder_proj(dec)
        if self.hc.loss == "full":
            logits = self.joiner(enc_p[:, :, None], dec_p[:, None])  # (B, T', U+1, V)
            blank_lp, label_lp = blank_label_log_probs(logits, tokens, self.blank)
            loss = rnnt_loss_from_log_probs(blank_lp, label_lp, enc_lens, token_lens, "sum") / enc.shape[0]
            return loss, {"transducer": loss.detach()}
        pruned, simple = pruned_rnnt_loss(self.joiner, enc_p, dec_p, self.simple_am_proj(enc), self.simple_lm_proj(dec),
                                          tokens, enc_lens, token_lens, self.hc.prune_range, self.blank, "sum")
        pruned, simple = pruned / enc.shape[0], simple / enc.shape[0]
        return self.hc.simple_loss_scale * simple + pruned, {"transducer": pruned.detach(), "simple": simple.detach()}

    @torch.no_grad()
    def greedy(self, enc: torch.Tensor, enc_lens: torch.Tensor, context: torch.Tensor | None = None):
        """enc (B, T', D) encoder frames (not projected), enc_lens (B,), context (B, C) the last C
        tokens of each stream (None: a fresh stream) → (new token ids per stream, new context).
        At most one symbol per frame (icefall's modified search), so frames may come chunk by chunk."""
        b, t = enc.shape[:2]
        if context is None:
            context = torch.full((b, self.hc.context_size), self.blank, dtype=torch.int64, device=enc.device)
        enc_p = self.joiner.encoder_proj(enc)
        dec_p = self.joiner.decoder_proj(self.decoder(context))
        lens = enc_lens.to(enc.device)
        hyps: list[list[int]] = [[] for _ in range(b)]
        for i in range(t):
            best = self.joiner(enc_p[:, i], dec_p).argmax(-1)
            emit = (best != self.blank) & (i < lens)
            if not bool(emit.any()):
                continue
            context = torch.where(emit[:, None], torch.cat([context[:, 1:], best[:, None]], dim=1), context)
            dec_p = torch.where(emit[:, None], self.joiner.decoder_proj(self.decoder(context)), dec_p)
            for r in emit.nonzero()[:, 0].tolist():
                hyps[r].append(int(best[r]))
        return hyps, context

    @torch.no_grad()
    def recognize(self, feats: torch.Tensor, feat_lens: torch.Tensor, beam: int = 1, att_context=None,
                  decoder: str = "transducer") -> list[list[int]]:
        """Token ids per utterance: transducer greedy search (beam 1), or the CTC head's greedy or
        prefix beam search (``decoder="ctc"``)."""
        if decoder == "ctc":
            if self.ctc is None:
                raise SpeechkitError("this transducer has no CTC head (head_conf.ctc_weight 0)")
            log_probs, lens = self.ctc_log_probs(feats, feat_lens, att_context)
            log_probs = log_probs.cpu().numpy()
            return [ctc_greedy(lp[:n]) if beam <= 1 else list(ctc_prefix_beam_search(lp[:n], beam, fusion=self.fusion)[0][0])
                    for lp, n in zip(log_probs, lens.tolist())]
        if decoder != "transducer":
            raise SpeechkitError(f"decoder '{decoder}' is not one of transducer, ctc")
        if beam > 1:
            raise SpeechkitError("transducer beam search runs in speechkit.decoding; the torch model decodes greedily (beam 1)")
        enc, lens = self.encode(feats, feat_lens, att_context)
        return self.greedy(enc, lens)[0]
