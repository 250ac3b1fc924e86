"""Multi-head self-attention with relative positional encoding (Transformer-XL, as in the
Conformer paper): content and position terms with learned biases u and v.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class RelPositionalEncoding(nn.Module):
    """Sinusoids for relative distances (Tk-1) … -(Tq-1), most positive first."""

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)

    def forward(self, num_queries: int, num_keys: int, device, dtype) -> torch.Tensor:
        """→ (1, Tq + Tk - 1, D)."""
        dist = torch.arange(num_keys - 1, -num_queries, -1, device=device, dtype=torch.float32)
        freq = torch.exp(torch.arange(0, self.d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / self.d_model))
        angles = dist[:, None] * freq[None, :]
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # interleaved sin, cos
        return self.dropout(pe.to(dtype).unsqueeze(0))


def relative_index(num_queries: int, num_keys: int, device) -> torch.Tensor:
    """Column of the positional matrix for each (query, key) pair; queries are the last Tq keys.

    Query i sits at key position Tk - Tq + i; its distance to key j is (Tk - Tq + i) - j, stored in
    column (Tk - 1) - distance = Tq - 1 - i + j.
    """
    q = torch.arange(num_queries, device=device)[:, None]
    k = torch.arange(num_keys, device=device)[None, :]
    return num_queries - 1 - q + k


class RelPositionMultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        assert d_model % num_heads == 0, "d_model must be divisible by num_heads"
        self.h, self.d_k = num_heads, d_model // num_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """B: batch, Tq/Tk: query/key frames, D: d_model.

        query (B, Tq, D), key (B, Tk, D) (values = keys), pos_emb (1, Tq+Tk-1, D),
        mask (B, Tq, Tk) or (B, 1, Tk) bool, True where attention is allowed → (B, Tq, D).
        """
        b, tq, _ = query.shape
        tk = key.shape[1]
        q = self.linear_q(query).view(b, tq, self.h, self.d_k)
        k = self.linear_k(key).view(b, tk, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(key).view(b, tk, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(1, -1, self.h, self.d_k).transpose(1, 2)  # (1, h, P, d_k)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        ac = torch.matmul(q_u, k.transpose(-2, -1))  # (B, h, Tq, Tk)
        bd_full = torch.matmul(q_v, p.transpose(-2, -1))  # (B, h, Tq, P)
        idx = relative_index(tq, tk, query.device).expand(b, self.h, tq, tk)
        bd = torch.gather(bd_full, -1, idx)
        scores = (ac + bd) / math.sqrt(self.d_k)
        mask = mask.unsqueeze(1)  # (B, 1, Tq|1, Tk)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        # a row with no allowed key (padding queries) would be NaN after softmax; zero it instead
        attn = torch.softmax(scores, dim=-1).masked_fill(~mask, 0.0)
        out = torch.matmul(self.dropout(attn), v).transpose(1, 2).reshape(b, tq, self.h * self.d_k)
        return self.linear_out(out)


class MultiHeadAttention(nn.Module):
    """Plain scaled dot-product multi-head attention (absolute positions live in the inputs)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        assert d_model % num_heads == 0, "d_model must be divisible by num_heads"
        self.h, self.d_k = num_heads, d_model // num_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """B: batch, Tq/Tk: query/key positions, D: d_model.

        query (B, Tq, D), key (B, Tk, D) (values = keys), mask (B|1, Tq|1, Tk) bool, True where
        attention is allowed, or None (attend everywhere) → (B, Tq, D). Every query must be
        allowed at least one key.
        """
        b, tq, _ = query.shape
        q = self.linear_q(query).view(b, tq, self.h, self.d_k).transpose(1, 2)
        k = self.linear_k(key).view(b, -1, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(key).view(b, -1, self.h, self.d_k).transpose(1, 2)
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask.unsqueeze(1), dropout_p=self.dropout if self.training else 0.0
        )
        return self.linear_out(out.transpose(1, 2).reshape(b, tq, self.h * self.d_k))


def sinusoidal_positions(length: int | torch.Tensor, d_model: int, device, dtype=torch.float32) -> torch.Tensor:
    """Absolute sinusoidal position encodings (length, D), sin and cos interleaved."""
    pos = torch.arange(length, device=device, dtype=torch.float32)
    freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    angles = pos[:, None] * freq[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).to(dtype)
