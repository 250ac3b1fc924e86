"""Paraformer (Gao et al., 2022): a non-autoregressive ASR head on a shared encoder.

The CIF predictor counts the tokens and extracts one acoustic embedding per token; the decoder
(self-attention over those embeddings + cross-attention over the encoder) predicts every token in
one pass. Training adds the glancing language-model sampler — a first pass without gradients,
then a ratio of the embeddings replaced by target-token embeddings in proportion to how many
tokens the first pass got wrong — so the parallel decoder learns token interdependence. MWER
fine-tuning draws negative hypotheses from the decoder's own distributions and minimises the
expected word errors among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkit.decoding.cif_times import token_spans
from speechkit.models.asr.cif import CifPredictor, cif, quantity_loss, scale_alphas, token_counts
from speechkit.models.asr.ctc_model import AsrEncoderModel, AsrModelConfig
from speechkit.nn.attention import MultiHeadAttention, sinusoidal_positions
from speechkit.text.tokenizer import SPACE

@dataclass(frozen=True)
class ParaformerConfig:
    decoder_blocks: int = 6
    attention_heads: int = 4
    linear_units: int = 1024
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    lsm_weight: float = 0.1  # label smoothing of the decoder's cross-entropy
    ctc_weight: float = 0.3  # auxiliary CTC on the shared encoder (0: no CTC layer)
    predictor_weight: float = 1.0  # quantity loss
    cif_threshold: float = 1.0
    tail_threshold: float = 0.45
    predictor_kernel: int = 3
    sampling_ratio: float = 0.75  # glancing sampler: replaced = floor(ratio × wrong tokens); 0 turns it off
    mwer_weight: float = 0.0  # > 0: MWER fine-tuning stage
    mwer_nbest: int = 4  # hypotheses per utterance: the argmax and samples from the decoder


class NarDecoderBlock(nn.Module):
    def __init__(self, d: int, cfg: ParaformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(d, cfg.attention_heads, cfg.attention_dropout_rate)
        self.src_attn = MultiHeadAttention(d, cfg.attention_heads, cfg.attention_dropout_rate)
        self.ff = nn.Sequential(nn.Linear(d, cfg.linear_units), nn.ReLU(), nn.Dropout(cfg.dropout_rate), nn.Linear(cfg.linear_units, d))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x, tok_mask, enc, enc_mask):
        y = self.norm1(x)
        x = x + self.dropout(self.self_attn(y, y, tok_mask))
        x = x + self.dropout(self.src_attn(self.norm2(x), enc, enc_mask))
        return x + self.dropout(self.ff(self.norm3(x)))


class NarDecoder(nn.Module):
    """All tokens in one pass: inputs (B, N, D) embeddings → logits (B, N, V)."""

    def __init__(self, vocab_size: int, d: int, cfg: ParaformerConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d)  # target embeddings for the glancing sampler
        self.blocks = nn.ModuleList(NarDecoderBlock(d, cfg) for _ in range(cfg.decoder_blocks))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab_size)

    def forward(self, x: torch.Tensor, tok_lens: torch.Tensor, enc: torch.Tensor, enc_lens: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) token embeddings, tok_lens (B,), enc (B, T, D), enc_lens (B,) → logits (B, N, V)."""
        n = x.shape[1]
        x = x + sinusoidal_positions(n, x.shape[-1], x.device, x.dtype)[None]
        tok_mask = (torch.arange(n, device=x.device)[None, :] < tok_lens.clamp(min=1)[:, None]).unsqueeze(1)
        enc_mask = (torch.arange(enc.shape[1], device=x.device)[None, :] < enc_lens[:, None]).unsqueeze(1)
        for block in self.blocks:
            x = block(x, tok_mask, enc, enc_mask)
        return self.out(self.norm(x))


def glancing_sample(
    acoustic: torch.Tensor, target_emb: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, lens: torch.Tensor,
    ratio: float, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix target embeddings into the CIF embeddings where the first pass should glance.

    acoustic, target_emb (B, N, D); pred, target (B, N) ids; lens (B,). Per utterance,
    floor(ratio × Hamming(pred, target)) positions, drawn uniformly among its valid ones, take the
    target embedding. → (mixed (B, N, D), replaced (B, N) bool).
    """
    b, n = target.shape
    valid = torch.arange(n, device=target.device)[None, :] < lens[:, None]
    wrong = ((pred != target) & valid).sum(dim=1)
    count = torch.floor(wrong.float() * ratio).long()
    scores = torch.rand(b, n, device=target.device, generator=generator).masked_fill(~valid, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # each valid position's place in a random order
    replaced = (rank < count[:, None]) & valid
    mixed = torch.where(replaced[..., None], target_emb.to(acoustic.dtype), acoustic)
    return mixed, replaced


def mwer_loss(hyp_log_probs: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """Minimum word error rate over an N-best (Prabhavalkar et al., 2018).

    hyp_log_probs (B, N) sequence log-probabilities, errors (B, N) word errors → Σ_b Σ_i P̂_i (E_i − Ē)
    / B, where P̂ renormalises the probabilities over the N-best and Ē is the N-best's mean error.
    """
    p = torch.softmax(hyp_log_probs.float(), dim=1)
    errors = errors.to(p.dtype)
    return (p * (errors - errors.mean(dim=1, keepdim=True))).sum() / hyp_log_probs.shape[0]


def split_words(ids: list[int], word_start: list[bool], separator: list[bool]) -> list[tuple[int, ...]]:
    """Token ids → words (tuples of ids): a word starts at a piece marked ▁; a bare ▁ only separates."""
    words, cur = [], []
    for i in ids:
        if word_start[i] and cur:
            words.append(tuple(cur))
            cur = []
        if not separator[i]:
            cur.append(i)
    if cur:
        words.append(tuple(cur))
    return words


def edit_distance(a: list, b: list) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


class ParaformerModel(AsrEncoderModel):
    def __init__(self, cfg: AsrModelConfig, vocab_size: int):
        hc: ParaformerConfig = cfg.head_conf
        super().__init__(cfg, vocab_size, ctc=hc.ctc_weight > 0)
        d = self.encoder.output_size
        self.hc = hc
        self.predictor = CifPredictor(d, hc.predictor_kernel, hc.dropout_rate)
        self.decoder = NarDecoder(vocab_size, d, hc)
        self.word_start: list[bool] | None = None  # per token id, for MWER's word errors
        self.separator: list[bool] | None = None

    def set_tokenizer(self, tokenizer) -> None:
        """MWER counts word errors, so it needs to know which pieces start a word."""
        pieces = [tokenizer.id_to_piece(i) for i in range(self.vocab_size)]
        self.word_start = [p.startswith(SPACE) for p in pieces]
        self.separator = [p == SPACE or i == 0 for i, p in enumerate(pieces)]

    def _decode(self, enc, enc_lens, alphas, num_tokens) -> torch.Tensor:
        k = int(num_tokens.max().clamp(min=1))
        emb = cif(enc, alphas, k, self.hc.cif_threshold).to(enc.dtype)
        return self.decoder(emb, num_tokens, enc, enc_lens)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(target.shape[1], device=target.device)[None, :] < lens[:, None]
        ce = nn.functional.cross_entropy(logits.float().transpose(1, 2), target, reduction="none", label_smoothing=self.hc.lsm_weight)
        return (ce * valid).sum() / target.shape[0]

    def forward(self, feats, feat_lens, tokens, token_lens) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """tokens (B, U) padded to the longest target → (loss / B, detached loss terms)."""
        enc, enc_lens = self.encode(feats, feat_lens)
        token_lens = token_lens.to(tokens.device, non_blocking=True)  # the trainer's batches keep lengths on the host
        hc = self.hc
        n = tokens.shape[1]  # the collate pads to the longest target: no device sync for its length
        target = tokens
        alphas = self.predictor(enc, enc_lens)
        loss_qua = quantity_loss(alphas, token_lens, hc.cif_threshold)
        acoustic = cif(enc, scale_alphas(alphas, token_lens, hc.cif_threshold), n, hc.cif_threshold).to(enc.dtype)
        stats = {"qua": loss_qua.detach()}  # detached tensors: reading them would sync the device every step
        dec_in = acoustic
        if hc.sampling_ratio > 0 and self.training:
            with torch.no_grad():
                pred = self.decoder(acoustic, token_lens, enc, enc_lens).argmax(-1)
            dec_in, replaced = glancing_sample(acoustic, self.decoder.embed(target), pred, target, token_lens, hc.sampling_ratio)
            stats["glance"] = replaced.sum() / token_lens.sum().clamp(min=1)
        logits = self.decoder(dec_in, token_lens, enc, enc_lens)
        loss_att = self._ce(logits, target, token_lens)
        loss = loss_att + hc.predictor_weight * loss_qua
        stats["att"] = loss_att.detach()
        if self.ctc is not None:
            loss_ctc = self.ctc_loss(enc, enc_lens, tokens, token_lens)
            loss = (1 - hc.ctc_weight) * loss_att + hc.ctc_weight * loss_ctc + hc.predictor_weight * loss_qua
            stats["ctc"] = loss_ctc.detach()
        if hc.mwer_weight > 0 and self.training:
            # negatives from the decoder on the plain acoustic embeddings, as at inference
            log_probs = torch.log_softmax(self.decoder(acoustic, token_lens, enc, enc_lens).float(), dim=-1)
            loss_mwer = self._mwer(log_probs, target, token_lens)
            loss = loss + hc.mwer_weight * loss_mwer
            stats["mwer"] = loss_mwer.detach()
        return loss, stats

    def _mwer(self, log_probs: torch.Tensor, target: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """log_probs (B, N, V): N-best = the argmax and mwer_nbest − 1 samples per utterance."""
        if self.word_start is None:
            raise RuntimeError("ParaformerModel.set_tokenizer() must be called before MWER training")
        b, n, v = log_probs.shape
        with torch.no_grad():
            samples = torch.multinomial(log_probs.exp().reshape(b * n, v), self.hc.mwer_nbest - 1, replacement=True)
            hyps = torch.cat([log_probs.argmax(-1, keepdim=True), samples.reshape(b, n, -1)], dim=2)  # (B, N, K)
        valid = (torch.arange(n, device=lens.device)[None, :] < lens[:, None]).to(log_probs.dtype)
        hyp_lp = (log_probs.gather(2, hyps) * valid[..., None]).sum(dim=1)  # (B, K)
        errors = torch.zeros_like(hyp_lp)
        hyps_l, target_l = hyps.cpu().tolist(), target.cpu().tolist()
        for i, m in enumerate(lens.tolist()):
            ref = split_words(target_l[i][:m], self.word_start, self.separator)
            for k in range(hyps.shape[2]):
                hyp = split_words([h[k] for h in hyps_l[i][:m]], self.word_start, self.separator)
                errors[i, k] = edit_distance(ref, hyp)
        return mwer_loss(hyp_lp, errors)

    @torch.no_grad()
    def recognize(self, feats: torch.Tensor, feat_lens: torch.Tensor, beam: int = 1, att_context=None) -> list[list[int]]:
        return [ids for ids, _ in self.recognize_with_spans(feats, feat_lens, att_context)]

    @torch.no_grad()
    def recognize_with_spans(self, feats, feat_lens, att_context=None) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """→ per utterance (token ids, (start, fire) encoder frame of each token)."""
        enc, enc_lens = self.encode(feats, feat_lens, att_context)
        alphas = self.predictor(enc, enc_lens)
        counts = token_counts(alphas, self.hc.cif_threshold, self.hc.tail_threshold)
        logits = self._decode(enc, enc_lens, alphas, counts)
        ids = logits.argmax(-1).cpu().tolist()
        alphas = alphas.cpu().numpy()
        return [(row[:c], token_spans(a[:n], c, self.hc.cif_threshold))
                for row, c, a, n in zip(ids, counts.tolist(), alphas, enc_lens.tolist())]
