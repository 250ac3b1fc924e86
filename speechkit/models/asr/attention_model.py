"""The autoregressive baseline: a transformer attention decoder on the shared encoder, trained
jointly with CTC (hybrid CTC/attention), decoded greedily or by batched beam search with optional
CTC rescoring of the N-best.
"""

from __future__ import annotations

import torch

from speechkit.models.asr.attention_decoder import (
    AttentionDecoderConfig, TransformerDecoder, add_sos_eos, beam_search, greedy_search, label_smoothing_loss,
)
from speechkit.models.asr.ctc_model import AsrEncoderModel, AsrModelConfig


class AttentionAsrModel(AsrEncoderModel):
    def __init__(self, cfg: AsrModelConfig, vocab_size: int):
        hc: AttentionDecoderConfig = cfg.head_conf
        super().__init__(cfg, vocab_size, ctc=hc.ctc_weight > 0)
        self.hc = hc
        self.sos = self.eos = vocab_size
        self.decoder = TransformerDecoder(vocab_size, self.encoder.output_size, hc)
        self.ctc_rescore_weight = 0.0  # decoding: weight of the CTC score when rescoring the N-best
        self.length_bonus = 0.0  # decoding: added per token; > 0 counters beam search's bias to short outputs

    def forward(self, feats, feat_lens, tokens, token_lens) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        enc, enc_lens = self.encode(feats, feat_lens)
        token_lens = token_lens.to(tokens.device, non_blocking=True)  # the trainer's batches keep lengths on the host
        ys_in, ys_out, ys_in_lens = add_sos_eos(tokens, token_lens, self.sos, self.eos)
        logits = self.decoder(enc, enc_lens, ys_in, ys_in_lens)
        loss_att = label_smoothing_loss(logits, ys_out, self.hc.lsm_weight)
        stats = {"att": loss_att.detach()}  # detached tensors: no device sync per step
        loss = loss_att
        if self.ctc is not None:
            loss_ctc = self.ctc_loss(enc, enc_lens, tokens, token_lens)
            loss = (1 - self.hc.ctc_weight) * loss_att + self.hc.ctc_weight * loss_ctc
            stats["ctc"] = loss_ctc.detach()
        return loss, stats

    @torch.no_grad()
    def recognize(self, feats: torch.Tensor, feat_lens: torch.Tensor, beam: int = 1, att_context=None) -> list[list[int]]:
        """Greedy (beam 1) or batched beam search; CTC rescoring when ``ctc_rescore_weight`` > 0."""
        enc, enc_lens = self.encode(feats, feat_lens, att_context)
        if beam <= 1:
            return greedy_search(self.decoder, enc, enc_lens, self.sos, self.eos)
        ctc_lp = None
        if self.ctc is not None and self.ctc_rescore_weight > 0:
            ctc_lp = torch.log_softmax(self.ctc(enc).float(), dim=-1)
        nbest = beam_search(self.decoder, enc, enc_lens, beam, self.sos, self.eos, ctc_log_probs=ctc_lp,
                            ctc_weight=self.ctc_rescore_weight, length_bonus=self.length_bonus)
        return [hyps[0][0] if hyps else [] for hyps in nbest]
