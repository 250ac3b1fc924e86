"""Cache-aware streaming conformer ("Stateful Conformer with Cache-based Inference for Streaming
ASR", Noroozi et al., 2023): causal subsampling, causal depthwise convolutions and chunked
self-attention with a limited left context, so that running chunk by chunk with cached
activations gives exactly the frames of the full-utterance forward under the same mask.

Attention context is a (left, right) pair in encoder frames (40 ms each):
- ``(-1, -1)``: full context (offline use only);
- ``(L, R)``: chunks of ``R + 1`` frames; a frame sees its whole chunk and the ``L`` frames before
  the chunk start. ``R`` is the look-ahead of the chunk's first frame, ``(R + 1) * 40 ms`` the
  chunk. One model is trained for several pairs (one drawn per batch) and serves all of them.

Streaming state (fixed shapes; ``N`` blocks, ``B`` streams, ``L`` = the largest left context):
  cached_sub1 (B, 1, 2, F)      last two normalised fbank frames (left pad of the first conv)
  cached_sub2 (B, C, 2, F1)     last two outputs of the first conv
  cached_att  (N, B, L, D)      each block's last ``L`` attention inputs
  cached_conv (N, B, D, K - 1)  each block's depthwise-conv left context
  cached_len  (B,) int64        valid frames in ``cached_att`` (grows to ``L`` from 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkit.errors import ConfigError
from speechkit.nn.attention import RelPositionalEncoding, RelPositionMultiHeadAttention
from speechkit.nn.conformer import FeedForward

FULL_CONTEXT = (-1, -1)


@dataclass(frozen=True)
class StreamingConformerConfig:
    output_size: int = 256
    attention_heads: int = 4
    linear_units: int = 1024
    num_blocks: int = 12
    cnn_module_kernel: int = 15
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    subsampling_channels: int | None = None
    # (left, right) pairs; the first is used for dev loss and by default when decoding
    att_context_size: tuple[tuple[int, int], ...] = ((64, 0), (64, 4), (64, 12), (-1, -1))

    def __post_init__(self):
        if not self.att_context_size:
            raise ConfigError("encoder_conf.att_context_size: give at least one (left, right) pair")
        for left, right in self.att_context_size:
            if left < -1 or right < -1:
                raise ConfigError(f"encoder_conf.att_context_size: bad pair ({left}, {right}); use -1 for unlimited")

    @property
    def cache_frames(self) -> int:
        """L: the attention cache size, the largest finite left context (0 if none is finite)."""
        return max([left for left, _ in self.att_context_size if left >= 0], default=0)

    def streamable(self) -> list[tuple[int, int]]:
        return [(l, r) for l, r in self.att_context_size if l >= 0 and r >= 0]


def chunk_attention_mask(num_frames: int, lengths: torch.Tensor, att_context: tuple[int, int]) -> torch.Tensor:
    """(B, T, T) bool, True where query i may attend key j, for the whole-utterance forward."""
    left, right = att_context
    device = lengths.device
    i = torch.arange(num_frames, device=device)[:, None]
    j = torch.arange(num_frames, device=device)[None, :]
    allowed = torch.ones(num_frames, num_frames, dtype=torch.bool, device=device)
    if right >= 0:
        chunk_start = torch.div(i, right + 1, rounding_mode="floor") * (right + 1)
        allowed = j < chunk_start + right + 1
        if left >= 0:
            allowed = allowed & (j >= chunk_start - left)
    elif left >= 0:
        allowed = j >= i - left
    valid = j < lengths[:, None, None]
    return allowed[None] & valid


class CausalConv2dSubsampling4(nn.Module):
    """Two 3x3 stride-2 convolutions padded on the left in time only: output frame t sees fbank
    frames up to 4t, so subsampling adds no look-ahead; T fbank frames → ceil(T / 4)."""

    factor = 4
    left_pad = 2

    def __init__(self, input_size: int, d_model: int, channels: int | None = None):
        super().__init__()
        self.channels = channels or d_model
        self.input_size = input_size
        self.conv1 = nn.Conv2d(1, self.channels, 3, 2)
        self.conv2 = nn.Conv2d(self.channels, self.channels, 3, 2)
        self.freq1 = (input_size - 3) // 2 + 1
        freq2 = (self.freq1 - 3) // 2 + 1
        self.out = nn.Linear(self.channels * freq2, d_model)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + 3, 4, rounding_mode="floor")

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F) → (B, ceil(T/4), D), lengths ceil(lengths/4)."""
        pad = (0, 0, self.left_pad, 0)
        x = torch.relu(self.conv1(nn.functional.pad(x.unsqueeze(1), pad)))
        x = torch.relu(self.conv2(nn.functional.pad(x, pad)))
        return self._project(x), self.output_lengths(lengths)

    def forward_chunk(self, x: torch.Tensor, cache1: torch.Tensor, cache2: torch.Tensor):
        """x (B, 4n, F) → (B, n, D), new cache1 (B, 1, 2, F), new cache2 (B, C, 2, F1)."""
        x = torch.cat([cache1, x.unsqueeze(1)], dim=2)
        new1 = x[:, :, -self.left_pad :]
        x = torch.relu(self.conv1(x))
        x = torch.cat([cache2, x], dim=2)
        new2 = x[:, :, -self.left_pad :]
        x = torch.relu(self.conv2(x))
        return self._project(x), new1, new2


class CausalConvolutionModule(nn.Module):
    """The conformer convolution module with a causal depthwise conv (left pad K - 1)."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        self.cache_size = kernel_size - 1
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)

    def _glu(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = nn.functional.glu(self.pointwise_in(x.transpose(1, 2)), dim=1)
        return x.masked_fill(~pad_mask.unsqueeze(1), 0.0)  # (B, D, T)

    def _rest(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(x)
        x = nn.functional.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        return self.pointwise_out(x).transpose(1, 2)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pad_mask (B, T) True on valid frames → (B, T, D)."""
        return self._rest(nn.functional.pad(self._glu(x, pad_mask), (self.cache_size, 0)))

    def forward_chunk(self, x: torch.Tensor, pad_mask: torch.Tensor, cache: torch.Tensor):
        """x (B, n, D), cache (B, D, K-1) → (B, n, D), new cache."""
        x = torch.cat([cache, self._glu(x, pad_mask)], dim=2)
        return self._rest(x), x[:, :, -self.cache_size :]


class StreamingConformerBlock(nn.Module):
    def __init__(self, cfg: StreamingConformerConfig):
        super().__init__()
        d = cfg.output_size
        self.ff1 = FeedForward(d, cfg.linear_units, cfg.dropout_rate)
        self.ff2 = FeedForward(d, cfg.linear_units, cfg.dropout_rate)
        self.attn = RelPositionMultiHeadAttention(d, cfg.attention_heads, cfg.attention_dropout_rate)
        self.conv = CausalConvolutionModule(d, cfg.cnn_module_kernel)
        self.norm_ff1, self.norm_attn, self.norm_conv, self.norm_ff2, self.norm_out = (nn.LayerNorm(d) for _ in range(5))
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def forward(self, x, pos_emb, att_mask, pad_mask, att_cache=None, conv_cache=None):
        """x (B, n, D); with caches (streaming) keys are [att_cache (B, L, D); this chunk]."""
        x = x + 0.5 * self.dropout(self.ff1(self.norm_ff1(x)))
        y = self.norm_attn(x)
        keys = y if att_cache is None else torch.cat([att_cache, y], dim=1)
        x = x + self.dropout(self.attn(y, keys, pos_emb, att_mask))
        if conv_cache is None:
            x = x + self.dropout(self.conv(self.norm_conv(x), pad_mask))
            new_conv = None
        else:
            c, new_conv = self.conv.forward_chunk(self.norm_conv(x), pad_mask, conv_cache)
            x = x + self.dropout(c)
        x = x + 0.5 * self.dropout(self.ff2(self.norm_ff2(x)))
        return self.norm_out(x), keys, new_conv


class StreamingConformerEncoder(nn.Module):
    """Conformer whose every frame's receptive field is set by ``att_context`` alone, so the
    whole-utterance forward (training) and the cached chunk-by-chunk forward agree exactly."""

    def __init__(self, cfg: StreamingConformerConfig, input_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = CausalConv2dSubsampling4(input_size, cfg.output_size, cfg.subsampling_channels)
        self.pos_enc = RelPositionalEncoding(cfg.output_size, cfg.dropout_rate)
        self.blocks = nn.ModuleList(StreamingConformerBlock(cfg) for _ in range(cfg.num_blocks))
        self.xscale = cfg.output_size**0.5

    @property
    def output_size(self) -> int:
        return self.cfg.output_size

    def pick_context(self, att_context: tuple[int, int] | None) -> tuple[int, int]:
        """The given pair, else one drawn per batch in training, else the config's first."""
        if att_context is not None:
            return tuple(att_context)
        choices = self.cfg.att_context_size
        if self.training and len(choices) > 1:
            return tuple(choices[int(torch.randint(len(choices), (1,)))])
        return tuple(choices[0])

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor, att_context: tuple[int, int] | None = None):
        """B: batch, T: fbank frames, F: mel bins, T': ceil(T/4) encoder frames, D: output_size.

        feats (B, T, F) normalised fbank, feat_lens (B,) valid frames → (B, T', D), valid lengths (B,).
        """
        context = self.pick_context(att_context)
        x, lens = self.embed(feats, feat_lens)
        x = x * self.xscale
        t = x.shape[1]
        pad_mask = torch.arange(t, device=x.device)[None, :] < lens[:, None]
        att_mask = chunk_attention_mask(t, lens, context)
        pos_emb = self.pos_enc(t, t, x.device, x.dtype)
        for block in self.blocks:
            x, _, _ = block(x, pos_emb, att_mask, pad_mask)
        return x, lens

    def init_state(self, batch: int, device=None, dtype=torch.float32) -> list[torch.Tensor]:
        cfg, e = self.cfg, self.embed
        n, d, k = cfg.num_blocks, cfg.output_size, cfg.cnn_module_kernel - 1
        return [
            torch.zeros(batch, 1, e.left_pad, e.input_size, device=device, dtype=dtype),
            torch.zeros(batch, e.channels, e.left_pad, e.freq1, device=device, dtype=dtype),
            torch.zeros(n, batch, cfg.cache_frames, d, device=device, dtype=dtype),
            torch.zeros(n, batch, d, k, device=device, dtype=dtype),
            torch.zeros(batch, dtype=torch.int64, device=device),
        ]

    def forward_chunk(self, x: torch.Tensor, x_lens: torch.Tensor, state: list[torch.Tensor], att_context):
        """B: streams, 4n: fbank frames of this call (n encoder frames), D: output_size.

        x (B, 4n, F) normalised fbank, x_lens (B,) valid frames (4n except on a final chunk),
        state from ``init_state`` or the previous call, att_context (left, right) as ints or a
        (2,) int64 tensor with left ≤ cache size → y (B, n, D), y_lens (B,), new state.
        A call may hold several chunks of right + 1 frames; they are masked as in ``forward``.
        """
        sub1, sub2, att_cache, conv_cache, cache_len = state
        if not torch.is_tensor(att_context):
            att_context = torch.tensor(att_context, dtype=torch.int64, device=x.device)
        left, right = att_context[0], att_context[1]
        cache = att_cache.shape[2]
        x, sub1, sub2 = self.embed.forward_chunk(x, sub1, sub2)
        x = x * self.xscale
        n = x.shape[1]
        y_lens = torch.div(x_lens + 3, 4, rounding_mode="floor")
        # key positions relative to the call's first frame: cache -L..-1, chunk 0..n-1
        q = torch.arange(n, device=x.device)[:, None]
        p = torch.arange(-cache, n, device=x.device)[None, :]
        chunk_start = torch.div(q, right + 1, rounding_mode="floor") * (right + 1)
        allowed = (p < chunk_start + right + 1) & (p >= chunk_start - left)  # (n, L + n)
        valid = (p >= -cache_len[:, None, None]) & (p < y_lens[:, None, None])  # (B, 1, L + n)
        att_mask = allowed[None] & valid
        pad_mask = torch.arange(n, device=x.device)[None, :] < y_lens[:, None]
        pos_emb = self.pos_enc(n, cache + n, x.device, x.dtype)
        new_att, new_conv = [], []
        for i, block in enumerate(self.blocks):
            x, keys, c = block(x, pos_emb, att_mask, pad_mask, att_cache[i], conv_cache[i])
            new_att.append(keys[:, keys.shape[1] - cache :])
            new_conv.append(c)
        new_len = torch.clamp(cache_len + y_lens, max=cache)
        return x, y_lens, [sub1, sub2, torch.stack(new_att), torch.stack(new_conv), new_len]
