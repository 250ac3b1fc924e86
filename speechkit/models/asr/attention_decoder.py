"""Autoregressive transformer decoder over encoder output (the attention branch of joint
CTC/attention ASR, Kim et al. 2017): teacher-forced training with label smoothing, batched greedy
and beam search with an incremental layer cache, and CTC rescoring of the beam's N-best.

Classes are the tokenizer's V ids plus <sos/eos> = V; id 0 (the CTC blank) is never a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from speechkit.decoding.ctc import BLANK_ID
from speechkit.nn.attention import MultiHeadAttention, sinusoidal_positions

IGNORE_ID = -1


@dataclass(frozen=True)
class AttentionDecoderConfig:
    num_blocks: int = 6
    attention_heads: int = 4
    linear_units: int = 1024
    dropout_rate: float = 0.1
    self_attention_dropout_rate: float = 0.0
    src_attention_dropout_rate: float = 0.0
    lsm_weight: float = 0.1
    ctc_weight: float = 0.3  # weight of the auxiliary CTC loss in training, read by the model


def length_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """lens (B,) → (B, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


class DecoderBlock(nn.Module):
    """Pre-LayerNorm: causal self-attention, cross-attention over the encoder, feed-forward."""

    def __init__(self, d_model: int, cfg: AttentionDecoderConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, cfg.attention_heads, cfg.self_attention_dropout_rate)
        self.src_attn = MultiHeadAttention(d_model, cfg.attention_heads, cfg.src_attention_dropout_rate)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, cfg.linear_units), nn.ReLU(), nn.Dropout(cfg.dropout_rate), nn.Linear(cfg.linear_units, d_model)
        )
        self.norm_self, self.norm_src, self.norm_ff = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor | None, enc: torch.Tensor, enc_mask: torch.Tensor,
                cache: torch.Tensor | None = None) -> torch.Tensor:
        """U: token positions, T: encoder frames.

        x (B, U, D) block input, self_mask (B|1, U, U) bool, enc (B, T, D), enc_mask (B, 1, T) bool
        → (B, U, D). With ``cache`` (B, U-1, D), this block's earlier outputs, only the last
        position is computed (attending to all U inputs) and appended to the cache.
        """
        y = self.norm_self(x)
        if cache is not None:
            x, query, self_mask = x[:, -1:], y[:, -1:], None
        else:
            query = y
        x = x + self.dropout(self.self_attn(query, y, self_mask))
        x = x + self.dropout(self.src_attn(self.norm_src(x), enc, enc_mask))
        x = x + self.dropout(self.feed_forward(self.norm_ff(x)))
        return x if cache is None else torch.cat([cache, x], dim=1)


class TransformerDecoder(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, cfg: AttentionDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.d_model = vocab_size, d_model
        self.sos = self.eos = vocab_size
        self.embed = nn.Embedding(vocab_size + 1, d_model)
        self.xscale = d_model**0.5
        self.embed_dropout = nn.Dropout(cfg.dropout_rate)
        self.blocks = nn.ModuleList(DecoderBlock(d_model, cfg) for _ in range(cfg.num_blocks))
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size + 1)

    def _embed(self, ys: torch.Tensor) -> torch.Tensor:
        x = self.embed(ys) * self.xscale
        return self.embed_dropout(x + sinusoidal_positions(ys.shape[1], self.d_model, x.device, x.dtype))

    def forward(self, enc: torch.Tensor, enc_lens: torch.Tensor, ys_in: torch.Tensor, ys_in_lens: torch.Tensor) -> torch.Tensor:
        """B: batch, T: encoder frames, D: d_model, U: decoder positions, V: vocab size.

        enc (B, T, D), enc_lens (B,) valid frames, ys_in (B, U) token ids ([sos, y…], padded with
        anything), ys_in_lens (B,) valid positions (≥ 1) → logits (B, U, V+1); position u sees
        ys_in[:, :u+1] only.
        """
        u = ys_in.shape[1]
        ys_mask = length_mask(ys_in_lens, u)
        causal = torch.ones(u, u, dtype=torch.bool, device=ys_in.device).tril()
        self_mask = ys_mask.unsqueeze(1) & causal  # (B, U, U); key 0 is always allowed
        enc_mask = length_mask(enc_lens, enc.shape[1]).unsqueeze(1)
        x = self._embed(ys_in.masked_fill(~ys_mask, self.eos))  # padding ids may be out of range
        for block in self.blocks:
            x = block(x, self_mask, enc, enc_mask)
        return self.output(self.norm(x))

    def forward_one_step(self, enc: torch.Tensor, enc_mask: torch.Tensor, ys: torch.Tensor,
                         cache: list[torch.Tensor] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """N: hypotheses, i: prefix length (sos included).

        enc (N, T, D), enc_mask (N, 1, T) bool True on valid frames, ys (N, i) prefixes, cache
        None or per block its outputs (N, i-1, D) from the previous step → log-probabilities of the
        next token (N, V+1) float32, the new cache (per block (N, i, D)).
        """
        x = self._embed(ys)
        self_mask = None
        if cache is None:
            self_mask = torch.ones(ys.shape[1], ys.shape[1], dtype=torch.bool, device=ys.device).tril().unsqueeze(0)
        new_cache = []
        for j, block in enumerate(self.blocks):
            x = block(x, self_mask, enc, enc_mask, None if cache is None else cache[j])
            new_cache.append(x)
        logits = self.output(self.norm(x[:, -1]))
        return torch.log_softmax(logits.float(), dim=-1), new_cache


def add_sos_eos(tokens: torch.Tensor, token_lens: torch.Tensor, sos: int, eos: int,
                ignore_id: int = IGNORE_ID) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens (B, U) padded with anything, token_lens (B,) → decoder input [sos, y…] padded with
    eos (B, U+1), targets [y…, eos] padded with ignore_id (B, U+1), input lengths (B,)."""
    b = tokens.shape[0]
    valid = length_mask(token_lens, tokens.shape[1] + 1)  # (B, U+1): where y sits in the targets
    padded = nn.functional.pad(tokens, (0, 1), value=eos)
    ys_in = torch.cat([tokens.new_full((b, 1), sos), padded[:, :-1].masked_fill(~valid[:, :-1], eos)], dim=1)
    ys_out = padded.masked_fill(~valid, ignore_id)
    is_eos = torch.arange(ys_out.shape[1], device=tokens.device)[None, :] == token_lens[:, None]
    ys_out = ys_out.masked_fill(is_eos, eos)
    return ys_in, ys_out, token_lens + 1


def label_smoothing_loss(logits: torch.Tensor, ys_out: torch.Tensor, lsm_weight: float,
                         ignore_id: int = IGNORE_ID) -> torch.Tensor:
    """logits (B, U, C), ys_out (B, U) padded with ignore_id → cross-entropy against the targets
    smoothed by lsm_weight (spread over all C classes), summed over tokens, divided by B."""
    loss = nn.functional.cross_entropy(
        logits.float().flatten(0, 1), ys_out.flatten(), ignore_index=ignore_id, label_smoothing=lsm_weight, reduction="sum"
    )
    return loss / logits.shape[0]


def _token_limits(enc_lens: torch.Tensor, max_len: int | None) -> torch.Tensor:
    """Most tokens (eos excluded) each utterance may emit: one per encoder frame, capped by max_len."""
    return enc_lens if max_len is None else enc_lens.clamp(max=max_len)


def _allowed(logp: torch.Tensor, force_eos: torch.Tensor, eos: int) -> torch.Tensor:
    """Blank is never a token; rows past their length limit may only end."""
    not_eos = torch.arange(logp.shape[-1], device=logp.device) != eos
    logp = logp.masked_fill(force_eos[:, None] & not_eos, -math.inf)
    logp[:, BLANK_ID] = -math.inf
    return logp


@torch.no_grad()
def greedy_search(decoder: TransformerDecoder, enc: torch.Tensor, enc_lens: torch.Tensor, sos: int, eos: int,
                  max_len: int | None = None) -> list[list[int]]:
    """enc (B, T, D), enc_lens (B,) → per utterance the argmax token ids (sos/eos dropped); at most
    max_len tokens (default: one per encoder frame of the utterance)."""
    b = enc.shape[0]
    limits = _token_limits(enc_lens, max_len)
    enc_mask = length_mask(enc_lens, enc.shape[1]).unsqueeze(1)
    ys = torch.full((b, 1), sos, dtype=torch.long, device=enc.device)
    done = torch.zeros(b, dtype=torch.bool, device=enc.device)
    cache = None
    for i in range(int(limits.max()) + 1):
        logp, cache = decoder.forward_one_step(enc, enc_mask, ys, cache)
        nxt = _allowed(logp, limits <= i, eos).argmax(-1).masked_fill(done, eos)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done = done | (nxt == eos)
        if bool(done.all()):
            break
    return [[t for t in row[1:] if t != eos] for row in ys.tolist()]


@torch.no_grad()
def beam_search(decoder: TransformerDecoder, enc: torch.Tensor, enc_lens: torch.Tensor, beam: int, sos: int, eos: int,
                ctc_log_probs: torch.Tensor | None = None, ctc_weight: float = 0.0, length_bonus: float = 0.0,
                max_len: int | None = None) -> list[list[tuple[list[int], float]]]:
    """B: batch, T: encoder frames, D: d_model, V: vocab size.

    enc (B, T, D), enc_lens (B,) → per utterance up to ``beam`` (token ids, score), best first. The
    B × beam hypotheses advance as one batch; score = Σ decoder log-probs (eos included) +
    length_bonus per token. An utterance stops once its beam-th best ended hypothesis outscores
    anything its live hypotheses can still reach, or at max_len tokens (default: its encoder
    frames), where eos is forced. With ctc_log_probs (B, T, V) float32 and ctc_weight > 0 the
    N-best is rescored as (1 - ctc_weight) · score + ctc_weight · CTC log-likelihood.
    """
    b, t, _ = enc.shape
    k, device = beam, enc.device
    limits = _token_limits(enc_lens, max_len)
    limits_list = limits.tolist()
    enc_k = enc.repeat_interleave(k, dim=0)  # hypothesis n = utterance n // k
    enc_mask = length_mask(enc_lens, t).unsqueeze(1).repeat_interleave(k, dim=0)
    limits_k = limits.repeat_interleave(k)
    ys = torch.full((b * k, 1), sos, dtype=torch.long, device=device)
    scores = torch.full((b, k), -math.inf, device=device)
    scores[:, 0] = 0.0  # one start hypothesis, or the first step would yield k copies of each token
    bonus = torch.full((decoder.vocab_size + 1,), length_bonus, device=device)
    bonus[eos] = 0.0
    row0 = torch.arange(b, device=device)[:, None] * k
    ended: list[list[tuple[list[int], float]]] = [[] for _ in range(b)]
    done = [False] * b
    cache = None
    for i in range(int(limits.max()) + 1):
        logp, cache = decoder.forward_one_step(enc_k, enc_mask, ys, cache)
        logp = _allowed(logp, limits_k <= i, eos) + bonus
        num_classes = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(b, k * num_classes)
        top_scores, top_idx = cand.topk(min(2 * k, cand.shape[1]), dim=1)  # at most k of them end: one eos per beam
        top_beam, top_tok = top_idx // num_classes, top_idx % num_classes
        is_eos = top_tok == eos

        # ended candidates among the k best are kept; the k best others go on
        rank = torch.arange(top_idx.shape[1], device=device)
        new_ended = is_eos & (rank < k) & torch.isfinite(top_scores)
        live = torch.sort(is_eos.int(), dim=1, stable=True).indices[:, :k]
        src = (row0 + top_beam.gather(1, live)).flatten()
        scores = top_scores.gather(1, live).masked_fill(is_eos.gather(1, live), -math.inf)
        ended_rows = (row0 + top_beam)[new_ended]
        if ended_rows.numel():
            utts = (ended_rows // k).tolist()
            for u, toks, score in zip(utts, ys[ended_rows, 1:].tolist(), top_scores[new_ended].tolist()):
                if not done[u]:
                    ended[u].append((toks, score))
        ys = torch.cat([ys[src], top_tok.gather(1, live).view(-1, 1)], dim=1)
        cache = [c[src] for c in cache]

        best_live = scores.max(dim=1).values.tolist()
        for u in range(b):
            if done[u]:
                continue
            reach = best_live[u] + max(length_bonus, 0.0) * (limits_list[u] - i - 1)
            kth = sorted((s for _, s in ended[u]), reverse=True)[k - 1] if len(ended[u]) >= k else -math.inf
            done[u] = i >= limits_list[u] or best_live[u] == -math.inf or kth >= reach
        if all(done):
            break

    nbest = [sorted(hyps, key=lambda h: h[1], reverse=True)[:k] for hyps in ended]
    if ctc_log_probs is not None and ctc_weight > 0:
        nbest = _ctc_rescore(nbest, ctc_log_probs, enc_lens, ctc_weight)
    return nbest


def _ctc_rescore(nbest: list[list[tuple[list[int], float]]], ctc_log_probs: torch.Tensor, enc_lens: torch.Tensor,
                 ctc_weight: float) -> list[list[tuple[list[int], float]]]:
    """Rescore every hypothesis with its full-sequence CTC log-likelihood (one batched ctc_loss)."""
    flat = [(u, toks, score) for u, hyps in enumerate(nbest) for toks, score in hyps]
    if not flat:
        return nbest
    device = ctc_log_probs.device
    utt = torch.tensor([u for u, _, _ in flat], device=device)
    target_lens = torch.tensor([len(toks) for _, toks, _ in flat], device=device)
    width = max(1, max(len(toks) for _, toks, _ in flat))
    targets = torch.tensor([toks + [BLANK_ID] * (width - len(toks)) for _, toks, _ in flat], device=device)
    nll = nn.functional.ctc_loss(
        ctc_log_probs[utt].float().transpose(0, 1), targets, enc_lens.to(device)[utt], target_lens,
        blank=BLANK_ID, reduction="none", zero_infinity=False,
    )
    rescored: list[list[tuple[list[int], float]]] = [[] for _ in nbest]
    for (u, toks, score), ctc_score in zip(flat, (-nll).tolist()):
        rescored[u].append((toks, (1.0 - ctc_weight) * score + ctc_weight * ctc_score))
    return [sorted(hyps, key=lambda h: h[1], reverse=True) for hyps in rescored]
