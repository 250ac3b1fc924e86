"""MeanVC-style voice conversion (arXiv 2510.08392) on our parts: content features of the source
(the streaming ASR encoder's block output, 25 frames/s), a reference utterance's VAE latents and
its speaker embedding in, the target's VAE latents out (25 frames/s, 64 dims), which the codec's
causal decoder turns into audio. The decoder is ``nn.dit.ChunkDiT`` trained with the mean-flow
objective (``nn.meanflow``), so one step per chunk is enough.

Latents are modelled normalised (per-dimension mean and standard deviation of the training dump,
kept as buffers so the saved model carries them). Timbre can be dropped for classifier-free
guidance: a dropped row's speaker embedding becomes ``null_spk`` and its reference a single learned
frame ``null_ref``.

Streaming (torch): ``reference`` once per target voice, ``init_cache`` once per stream, then per
chunk of content frames ``convert_chunk``, which samples the chunk from noise in ``steps`` mean-flow
steps and commits it to the KV cache. ``convert`` runs a whole utterance the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechkit.nn.dit import ChunkDiT

SAMPLERS = ("meanflow", "euler")


@dataclass(frozen=True)
class VcConfig:
    latent_dim: int = 64  # the codec's latent dims (models/codec-vae-synth: 64)
    content_dim: int = 192  # the content encoder's width (models/asr-stream-synth: d_model 192)
    spk_dim: int = 192  # the speaker encoder's embedding
    dim: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    chunk: int = 5  # frames per chunk: 200 ms at 25 frames/s, the content encoder's (64, 4) chunk
    cache_chunks: int = 4  # earlier generated chunks a chunk attends to (800 ms)
    clean_context: int = 0  # earlier chunks a cached chunk attends to (see nn/dit.py)
    ref_frames: int = 150  # reference latents kept (6 s); longer references are cut
    frame_rate: float = 25.0


class MeanVC(nn.Module):
    def __init__(self, cfg: VcConfig):
        super().__init__()
        self.cfg = cfg
        self.dit = ChunkDiT(cfg.dim, cfg.layers, cfg.heads, cfg.latent_dim, cfg.content_dim, cfg.latent_dim, cfg.spk_dim,
                            cfg.chunk, cfg.cache_chunks, cfg.clean_context, cfg.mlp_ratio)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))
        self.null_spk = nn.Parameter(torch.zeros(cfg.spk_dim))
        self.null_ref = nn.Parameter(torch.randn(cfg.latent_dim) * 0.02)

    def set_stats(self, mean, std) -> None:
        self.latent_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.latent_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def normalise(self, z: Tensor) -> Tensor:
        """Raw latents (..., D) → the modelled scale."""
        return (z - self.latent_mean) / self.latent_std

    def denormalise(self, x: Tensor) -> Tensor:
        return x * self.latent_std + self.latent_mean

    def timbre(self, ref: Tensor, ref_mask: Tensor, spk: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised reference latents (B, R, D), its mask (B, R), embeddings (B, S) and the rows
        that keep their timbre (B,) bool or None (all) → the same with dropped rows nulled."""
        if keep is None:
            return ref, ref_mask, spk
        k = keep[:, None]
        spk = torch.where(k, spk, self.null_spk.to(spk.dtype).expand_as(spk))
        first = torch.zeros_like(ref_mask)
        first[:, 0] = True
        ref_mask = torch.where(k, ref_mask, first)
        ref = torch.where(k[:, :, None], ref, self.null_ref.to(ref.dtype).expand_as(ref))
        return ref, ref_mask, spk

    def forward(self, x_noisy: Tensor, x_clean: Tensor, content: Tensor, ref: Tensor, ref_mask: Tensor, spk: Tensor,
                keep: Tensor | None, r: Tensor, t: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Training: the average velocity u (B, T, D) for noisy latents x_noisy (B, T, D) at time t
        stepping to r (B,), teacher-forced clean latents x_clean (B, T, D), content (B, T, C), the
        reference (normalised latents, B, R, D, mask B, R), speaker embeddings (B, S), ``keep``
        (B,) bool or None, valid frames ``lengths`` (B,)."""
        ref, ref_mask, spk = self.timbre(ref, ref_mask, spk, keep)
        return self.dit(x_noisy, x_clean, content, ref, ref_mask, spk, r, t, lengths)

    # inference

    def reference(self, ref_latents: Tensor, ref_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Raw reference latents (B, R, D) → (keys, values, mask) for ``convert_chunk``; cut to
        ``ref_frames`` (the middle of a longer reference)."""
        r = ref_latents.shape[1]
        if r == 0:
            raise ValueError("the reference has no frames")
        if r > self.cfg.ref_frames:
            at = (r - self.cfg.ref_frames) // 2
            ref_latents = ref_latents[:, at : at + self.cfg.ref_frames]
            ref_mask = None if ref_mask is None else ref_mask[:, at : at + self.cfg.ref_frames]
        if ref_mask is None:
            ref_mask = torch.ones(ref_latents.shape[:2], dtype=torch.bool, device=ref_latents.device)
        keys, values = self.dit.encode_reference(self.normalise(ref_latents))
        return keys, values, ref_mask

    def init_cache(self, batch: int, device=None, dtype=torch.float32) -> list[Tensor]:
        return self.dit.init_cache(batch, device, dtype)

    def init_state(self, batch: int, device=None) -> list[Tensor]:
        """The streaming contract's name for the empty KV cache."""
        return self.init_cache(batch, device)

    def forward_chunk(self, content: Tensor, content_lens: Tensor, state: list[Tensor], *, reference, spk: Tensor,
                      noise: Tensor | None = None, steps: int = 1) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The streaming contract: content (B, n, C) with its valid frames (B,) → (raw latents
        (B, n, D), their valid frames, the new KV cache); the reference and the speaker are
        conditions, fixed for the stream. A chunk with fewer valid frames than ``chunk`` ends the
        stream (its cache is not committed)."""
        y, new = self.convert_chunk(content, reference, spk, state, noise, steps, chunk_lens=content_lens)
        if content.shape[1] == self.cfg.chunk and bool((content_lens < self.cfg.chunk).any()):
            new = state
        return y, content_lens, new

    @torch.no_grad()
    def convert_chunk(self, content: Tensor, reference: tuple[Tensor, Tensor, Tensor], spk: Tensor, cache: list[Tensor],
                      noise: Tensor | None = None, steps: int = 1, sampler: str = "meanflow",
                      chunk_lens: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """One chunk: content (B, n, C) (n = ``chunk``, fewer on the last), the ``reference``
        triple, spk (B, S), the KV cache → (raw latents (B, n, D), new cache). ``noise`` (B, n, D)
        defaults to a standard normal draw. ``sampler``: "meanflow" steps with the average velocity
        u(x, r, t) over each interval; "euler" with the instantaneous one u(x, t, t) (a model trained
        by plain flow matching). ``chunk_lens`` (B,): valid frames per stream when some end inside
        this chunk (their missing frames are masked out)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        keys, values, ref_mask = reference
        b, n, _ = content.shape
        x = torch.randn(b, n, self.cfg.latent_dim, device=content.device) if noise is None else noise
        for i in range(steps):
            t0, t1 = i / steps, (i + 1) / steps
            t, r = (torch.full((b,), s, device=x.device) for s in (t0, t0 if sampler == "euler" else t1))
            x = x + (t1 - t0) * self.dit.step(x, content, keys, values, ref_mask, spk, r, t, cache, chunk_lens).to(x.dtype)
        cache = self.dit.commit(x, content, keys, values, ref_mask, spk, cache) if n == self.cfg.chunk else cache
        return self.denormalise(x), cache

    @torch.no_grad()
    def convert(self, content: Tensor, ref_latents: Tensor, spk: Tensor, steps: int = 1,
                noise: Tensor | None = None, sampler: str = "meanflow") -> Tensor:
        """A whole utterance, chunk by chunk as a stream would: content (B, T, C), raw reference
        latents (B, R, D), spk (B, S) → raw latents (B, T, D)."""
        reference = self.reference(ref_latents)
        cache = self.init_cache(content.shape[0], content.device)
        out = []
        for at in range(0, content.shape[1], self.cfg.chunk):
            c = content[:, at : at + self.cfg.chunk]
            z = None if noise is None else noise[:, at : at + self.cfg.chunk]
            y, cache = self.convert_chunk(c, reference, spk, cache, z, steps, sampler)
            out.append(y)
        return torch.cat(out, dim=1)
