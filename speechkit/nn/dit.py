"""Chunk-wise autoregressive diffusion transformer (the MeanVC decoder, arXiv 2510.08392): a
noisy chunk attends to itself and to a bounded cache of earlier clean (already generated) chunks;
AdaLN-Zero conditioning on the two mean-flow times (r, t) and a speaker vector, cross-attention
to a reference utterance for timbre, per-frame content features added to the input.

Training runs every chunk at once: the sequence is [noisy frames; clean frames] (clean = the ground
truth, teacher forcing) under a block mask (``chunk_dit_mask``). Inference runs ``step`` on a
noisy chunk (as often as the sampler needs) and then ``commit`` on the chunk it produced, which
appends that clean chunk's keys and values to the cache. Both give the training forward's values.

Who sees what (chunk indices; W = ``cache_chunks``, Wc = ``clean_context``):
  noisy chunk k  → noisy chunk k and clean chunks k-W .. k-1
  clean chunk j  → clean chunks j-Wc .. j (never a noisy token)
A clean chunk's keys and values at layer l depend on clean chunks back to j - (l-1) Wc, so a noisy
chunk depends on clean chunks back to k - W - (layers-1) Wc. With Wc = 0 (the default) a clean
chunk is encoded on its own, ``commit`` needs no history, and an output depends on exactly the W
chunks the cache holds; Wc > 0 (at most W) gives the cached chunks some history at the price of a
receptive field that grows with depth. Clean tokens are conditioned on a learned "clean time"
instead of (r, t), so the cache does not depend on the sampler's times and serves every step.

Flow times come per batch row ([B]) or per chunk ([B, chunks]). Per chunk is allowed because noisy
chunks never see each other: each chunk of a training row is an independent example given its
clean context, and a JVP with tangent 1 on every chunk's t is every chunk's own d/dt.

Positions are rotary (RoPE) on queries and keys, so attention depends only on frame distance: the
training forward rotates by absolute frame, ``step``/``commit`` by position relative to the chunk
start (the cache holds keys before rotation). Every chunk before the last must be full, as in
training. Attention goes through ``scaled_dot_product_attention``; forward-mode AD (the mean-flow
JVP) needs its math kernel, forced with ``with math_attention(): ...``.

KV cache (explicit tensors, fixed shapes; N layers, B streams, H heads, C = W * chunk, d = dim / H):
  keys      (N, B, H, C, d)  each layer's clean-token keys (before rotation), newest last
  values    (N, B, H, C, d)
  cache_len (B,) int64       valid frames, the last ``cache_len`` slots (grows to C from 0)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

TIME_FEATURES = 256


def math_attention():
    """Context manager forcing the math kernel of ``scaled_dot_product_attention`` (flash and
    memory-efficient kernels have no forward-mode AD, which ``torch.func.jvp`` needs)."""
    return sdpa_kernel(SDPBackend.MATH)


def timestep_features(t: Tensor, dim: int = TIME_FEATURES) -> Tensor:
    """Sinusoidal features of flow times ``t`` in [0, 1] → [..., dim], in float32 at least (times
    are scaled by 1000, too much for half precision)."""
    dtype = torch.promote_types(t.dtype, torch.float32)
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / half)
    args = (1000.0 * t.to(dtype))[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rotary_tables(positions: Tensor, head_dim: int, dtype) -> tuple[Tensor, Tensor]:
    """cos, sin (P, head_dim / 2) in ``dtype`` or float32, whichever is wider, for integer
    positions (P,). Angles are formed in float64 so that absolute (training) and relative
    (streaming) positions give the same rotations."""
    dtype = torch.promote_types(dtype, torch.float32)
    inv_freq = torch.exp(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) * (-math.log(10000.0) / head_dim))
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on x (B, H, P, d) with tables (P, d / 2): halves rotated as (x1, x2) pairs, in the
    tables' precision (float32 at least, also under bf16 autocast), returned in x's dtype."""
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def chunk_dit_mask(frames: int, chunk: int, cache_chunks: int, clean_context: int, lengths: Tensor | None = None,
                   device=None) -> Tensor:
    """(B|1, 1, 2T, 2T) bool, True where a query may attend a key, for the sequence
    [noisy frames 0..T-1; clean frames 0..T-1]. Keys past ``lengths`` (B,) are masked, except a
    token's own key, so that no row is empty (padding rows stay finite)."""
    device = device if lengths is None else lengths.device
    idx = torch.arange(2 * frames, device=device)
    frame = idx % frames
    chunk_of = torch.div(frame, chunk, rounding_mode="floor")
    clean = idx >= frames
    cq, ck = chunk_of[:, None], chunk_of[None, :]
    clean_q, clean_k = clean[:, None], clean[None, :]
    noisy_noisy = ~clean_q & ~clean_k & (ck == cq)
    noisy_clean = ~clean_q & clean_k & (ck < cq) & (ck >= cq - cache_chunks)
    clean_clean = clean_q & clean_k & (ck <= cq) & (ck >= cq - clean_context)
    allowed = noisy_noisy | noisy_clean | clean_clean
    if lengths is None:
        return allowed[None, None]
    valid_key = frame[None, :] < lengths[:, None]  # (B, 2T)
    own = torch.eye(2 * frames, dtype=torch.bool, device=device)
    return (allowed[None] & (valid_key[:, None, :] | own[None]))[:, None]


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last axis, written out (``aten::rms_norm`` has no ONNX export
    before opset 23)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 autocast: the mean in float32
        return (y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class TimeEmbedding(nn.Module):
    """Sinusoidal features → MLP → dim."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FEATURES, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


class ChunkDiTBlock(nn.Module):
    """AdaLN-Zero self-attention (rotary, q/k RMS-normed) and MLP, with a plain residual
    cross-attention to the reference between them."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        assert dim % heads == 0 and (dim // heads) % 2 == 0, "dim / heads must be even"
        self.heads, self.head_dim = heads, dim // heads
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.attn_out = nn.Linear(dim, dim)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(dim, 2 * dim)
        self.cross_out = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.mod = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def reference_kv(self, ref: Tensor) -> tuple[Tensor, Tensor]:
        """ref (B, R, D) → keys, values (B, H, R, d)."""
        k, v = self.cross_kv(ref).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, h, mod, rope_q, rope_k, mask, ref_k, ref_v, ref_mask, cache_k=None, cache_v=None, keys_only=False):
        """N: tokens of this call, M: cached tokens before them, D: dim.

        h (B, N, D), mod (B, N|1, 6D) from ``self.mod``, rope_q tables for the N queries,
        rope_k for the M + N keys, mask (B|1, 1, N, M+N) bool, ref_k/ref_v (B, H, R, d),
        ref_mask (B, R) True on valid reference frames, cache_k/cache_v (B, H, M, d) or None
        → h (B, N, D) (None when ``keys_only``), this call's keys and values (B, H, N, d), unrotated.
        """
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
        a = self.norm_attn(h) * (1 + scale_a) + shift_a
        q, k, v = (self._heads(x) for x in self.qkv(a).chunk(3, dim=-1))
        q, k = self.q_norm(q), self.k_norm(k)
        if keys_only:
            return None, k, v
        keys = k if cache_k is None else torch.cat([cache_k, k], dim=2)
        values = v if cache_v is None else torch.cat([cache_v, v], dim=2)
        out = scaled_dot_product_attention(rotate(q, *rope_q), rotate(keys, *rope_k), values, attn_mask=mask)
        h = h + gate_a * self.attn_out(out.transpose(1, 2).flatten(2))
        cq = self._heads(self.cross_q(self.norm_cross(h)))
        out = scaled_dot_product_attention(cq, ref_k, ref_v, attn_mask=ref_mask[:, None, None, :])
        h = h + self.cross_out(out.transpose(1, 2).flatten(2))
        h = h + gate_m * self.mlp(self.norm_mlp(h) * (1 + scale_m) + shift_m)
        return h, k, v


class ChunkDiT(nn.Module):
    """Mean-flow velocity u(x, r, t | content, reference, speaker) computed chunk by chunk.

    in_dim: the output representation (80 mel bins, 64 VAE latents, ...); cond_dim: content
    features per frame; ref_dim: reference features per frame; spk_dim: speaker embedding;
    chunk: frames per chunk; cache_chunks (W): earlier clean chunks a noisy chunk attends;
    clean_context (Wc, 0..W): earlier clean chunks a clean chunk attends (see the module doc).
    """

    def __init__(self, dim: int, layers: int, heads: int, in_dim: int, cond_dim: int, ref_dim: int, spk_dim: int,
                 chunk: int, cache_chunks: int, clean_context: int = 0, mlp_ratio: float = 4.0):
        super().__init__()
        if not 0 <= clean_context <= cache_chunks:
            raise ValueError(f"clean_context must be in 0..cache_chunks ({cache_chunks}), got {clean_context}")
        if chunk < 1:
            raise ValueError(f"chunk must be at least one frame, got {chunk}")
        self.dim, self.layers, self.heads, self.head_dim = dim, layers, heads, dim // heads
        self.in_dim, self.chunk, self.cache_chunks, self.clean_context = in_dim, chunk, cache_chunks, clean_context
        self.inp = nn.Linear(in_dim, dim)
        self.content = nn.Linear(cond_dim, dim)
        self.clean_flag = nn.Parameter(torch.randn(dim) * 0.02)
        self.ref_in = nn.Sequential(nn.Linear(ref_dim, dim), nn.LayerNorm(dim))
        self.time_t = TimeEmbedding(dim)
        self.time_gap = TimeEmbedding(dim)  # of t - r, the interval the average velocity spans
        self.clean_time = nn.Parameter(torch.randn(dim) * 0.02)  # clean tokens' stand-in for (r, t)
        self.spk = nn.Linear(spk_dim, dim)
        self.blocks = nn.ModuleList(ChunkDiTBlock(dim, heads, mlp_ratio) for _ in range(layers))
        self.out_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.out_mod = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, in_dim)
        for layer in (self.out_mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def cache_frames(self) -> int:
        """C: frames the KV cache holds."""
        return self.cache_chunks * self.chunk

    # conditioning

    def _noisy_condition(self, r: Tensor, t: Tensor, spk: Tensor) -> Tensor:
        """r, t (B,) or (B, G) → (B, 1|G, D)."""
        if r.dim() == 1:
            r, t = r[:, None], t[:, None]
        return nn.functional.silu(self.time_t(t) + self.time_gap(t - r) + self.spk(spk)[:, None])

    def _clean_condition(self, spk: Tensor) -> Tensor:
        """→ (B, 1, D)."""
        return nn.functional.silu(self.clean_time + self.spk(spk))[:, None]

    def _output(self, h: Tensor, e: Tensor) -> Tensor:
        shift, scale = self.out_mod(e).chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)

    def encode_reference(self, ref: Tensor) -> tuple[Tensor, Tensor]:
        """ref (B, R, ref_dim) → every layer's cross-attention keys and values (N, B, H, R, d);
        computed once per reference and passed to ``step`` and ``commit``."""
        x = self.ref_in(ref)
        kv = [block.reference_kv(x) for block in self.blocks]
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])

    # training

    def forward(self, x_noisy: Tensor, x_clean: Tensor, content: Tensor, ref: Tensor, ref_mask: Tensor, spk: Tensor,
                r: Tensor, t: Tensor, lengths: Tensor | None = None) -> Tensor:
        """B: batch, T: frames, K: ceil(T / chunk) chunks, R: reference frames.

        x_noisy (B, T, in_dim) the noisy frames, x_clean (B, T, in_dim) the clean ones (teacher
        forcing), content (B, T, cond_dim), ref (B, R, ref_dim), ref_mask (B, R) True on valid
        reference frames, spk (B, spk_dim), r and t (B,) per row or (B, K) per chunk, lengths (B,)
        valid frames or None (all T) → u (B, T, in_dim); frames past ``lengths`` are don't-care.
        """
        b, frames, _ = x_noisy.shape
        chunks = -(-frames // self.chunk)
        if r.shape != t.shape or r.dim() not in (1, 2) or r.shape[0] != b or (r.dim() == 2 and r.shape[1] != chunks):
            raise ValueError(f"r and t must both be ({b},) or ({b}, {chunks}), got {tuple(r.shape)} and {tuple(t.shape)}")
        e_noisy = self._noisy_condition(r, t, spk)  # (B, G, D), G = 1 or K
        e = torch.cat([e_noisy, self._clean_condition(spk)], dim=1)
        chunk_of = torch.div(torch.arange(frames, device=x_noisy.device), self.chunk, rounding_mode="floor")
        noisy_group = chunk_of if r.dim() == 2 else torch.zeros_like(chunk_of)
        group = torch.cat([noisy_group, torch.full_like(chunk_of, e_noisy.shape[1])])  # token → row of e

        c = self.content(content)
        h = torch.cat([self.inp(x_noisy) + c, self.inp(x_clean) + c + self.clean_flag], dim=1)
        positions = torch.arange(frames, device=h.device).repeat(2)
        rope = rotary_tables(positions, self.head_dim, h.dtype)
        mask = chunk_dit_mask(frames, self.chunk, self.cache_chunks, self.clean_context, lengths, h.device)
        ref_k, ref_v = self.encode_reference(ref)
        for i, block in enumerate(self.blocks):
            mod = block.mod(e)[:, group]
            h, _, _ = block(h, mod, rope, rope, mask, ref_k[i], ref_v[i], ref_mask)
        return self._output(h[:, :frames], e[:, group[:frames]])

    # streaming

    def init_cache(self, batch: int, device=None, dtype=torch.float32) -> list[Tensor]:
        """An empty KV cache: [keys, values, cache_len] (see the module doc)."""
        shape = (self.layers, batch, self.heads, self.cache_frames, self.head_dim)
        return [torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                torch.zeros(batch, dtype=torch.int64, device=device)]

    def _cache_mask(self, n: int, cache_len: Tensor, oldest: int) -> Tensor:
        """(B, 1, 1, C + n): valid cache slots no older than ``oldest`` frames before the chunk."""
        p = torch.arange(-self.cache_frames, n, device=cache_len.device)[None, :]
        ok = (p >= 0) | ((p >= -cache_len[:, None]) & (p >= -oldest))
        return ok[:, None, None, :]

    def _rope_pair(self, n: int, device, dtype):
        rope_q = rotary_tables(torch.arange(n, device=device), self.head_dim, dtype)
        rope_k = rotary_tables(torch.arange(-self.cache_frames, n, device=device), self.head_dim, dtype)
        return rope_q, rope_k

    def step(self, x_noisy: Tensor, content: Tensor, ref_keys: Tensor, ref_values: Tensor, ref_mask: Tensor, spk: Tensor,
             r: Tensor, t: Tensor, cache: list[Tensor], chunk_lens: Tensor | None = None) -> Tensor:
        """B: streams, n: frames of this chunk (``chunk``, or fewer on the last one).

        x_noisy (B, n, in_dim), content (B, n, cond_dim), ref_keys/ref_values from
        ``encode_reference``, ref_mask (B, R), spk (B, spk_dim), r and t (B,), cache from
        ``init_cache`` or ``commit`` (not modified), chunk_lens (B,) valid frames of this chunk or
        None (all n) → u (B, n, in_dim).
        """
        keys, values, cache_len = cache
        n = x_noisy.shape[1]
        e = self._noisy_condition(r, t, spk)
        h = self.inp(x_noisy) + self.content(content)
        mask = self._cache_mask(n, cache_len, self.cache_frames)
        if chunk_lens is not None:
            j = torch.arange(n, device=h.device)
            chunk_ok = (j[None, None, :] < chunk_lens[:, None, None]) | (j[:, None] == j[None, :])[None]  # (B, n, n)
            mask = torch.cat([mask[:, :, :, : self.cache_frames].expand(-1, -1, n, -1), chunk_ok[:, None]], dim=-1)
        rope_q, rope_k = self._rope_pair(n, h.device, h.dtype)
        for i, block in enumerate(self.blocks):
            h, _, _ = block(h, block.mod(e), rope_q, rope_k, mask, ref_keys[i], ref_values[i], ref_mask, keys[i], values[i])
        return self._output(h, e)

    def commit(self, x_clean: Tensor, content: Tensor, ref_keys: Tensor, ref_values: Tensor, ref_mask: Tensor,
               spk: Tensor, cache: list[Tensor]) -> list[Tensor]:
        """x_clean (B, n, in_dim) the chunk just generated (all n frames valid), content (B, n,
        cond_dim), the reference and speaker as in ``step`` → the new cache: this chunk's keys and
        values appended at every layer and the oldest dropped beyond ``cache_frames``."""
        keys, values, cache_len = cache
        n = x_clean.shape[1]
        e = self._clean_condition(spk)
        h = self.inp(x_clean) + self.content(content) + self.clean_flag
        mask = self._cache_mask(n, cache_len, self.clean_context * self.chunk)
        rope_q, rope_k = self._rope_pair(n, h.device, h.dtype)
        new_keys, new_values = [], []
        c = self.cache_frames
        for i, block in enumerate(self.blocks):
            last = i == self.layers - 1  # the last layer's output is never used, only its keys
            h, k, v = block(h, block.mod(e), rope_q, rope_k, mask, ref_keys[i], ref_values[i], ref_mask,
                            keys[i], values[i], keys_only=last)
            k, v = torch.cat([keys[i], k], dim=2), torch.cat([values[i], v], dim=2)
            new_keys.append(k[:, :, k.shape[2] - c :])
            new_values.append(v[:, :, v.shape[2] - c :])
        return [torch.stack(new_keys), torch.stack(new_values), torch.clamp(cache_len + n, max=c)]
