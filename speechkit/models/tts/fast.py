"""CLEAR's generation loop (:meth:`ClearTTS.generate`) with a static KV cache, so that one latent —
the stop probability, the guided Euler flow from a noise buffer, the transformer step on the new
latent — is a fixed sequence of kernels on fixed-shape tensors: on CUDA it is captured once into a
``torch.cuda.CUDAGraph`` and replayed per latent (launching a few hundred small kernels one by one
is what made the eager loop slow), on the CPU the same code runs eagerly.

The cache holds ``Tmax`` positions of which the first ``length`` are valid (attention is masked to
them, rotary positions come from the length tensor). One graph per (cache size, steps, guidance,
temperature), captured on first use or by :meth:`FastGenerator.warmup`, serves every later
utterance that fits. The noise is drawn from the caller's ``torch.Generator`` into the graph's
buffer before each replay, in ``ClearTTS.generate``'s order, so the latents are the same (within
float rounding). The host reads each latent and its stop probability back with one sync, one
latent behind the GPU, which is already running the next one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from speechkit.decoding.tts_options import STOP_THRESHOLD
from speechkit.decoding.tts_options import max_frames as frame_limit
from speechkit.errors import SpeechkitError
from speechkit.models.tts.clear import LATENT, Block, Cache, ClearTTS

CUDA_BUCKET = 2048  # smallest CUDA cache (positions): one graph fits prefix + latents of ~250 phoneme symbols
CPU_ROUND = 64  # the CPU cache is sized per utterance, rounded up to this


@dataclass
class StaticCache:
    """Keys and values of every layer [L, 1, H, Tmax, hd]; ``length`` [1] (long) valid positions."""

    k: Tensor
    v: Tensor
    length: Tensor
    positions: Tensor  # arange(Tmax), for the validity mask

    @classmethod
    def empty(cls, model: ClearTTS, tmax: int) -> StaticCache:
        cfg, p = model.cfg, model.latent_mean
        dtype = next(model.parameters()).dtype
        shape = (cfg.layers, 1, cfg.heads, tmax, cfg.d_model // cfg.heads)
        return cls(torch.zeros(shape, dtype=dtype, device=p.device), torch.zeros(shape, dtype=dtype, device=p.device),
                   torch.zeros(1, dtype=torch.long, device=p.device), torch.arange(tmax, device=p.device))

    @property
    def size(self) -> int:
        return self.k.shape[3]

    def load(self, cache: Cache) -> None:
        """Take over a dynamic cache (``ClearTTS.prefill``'s)."""
        n = cache[0][0].shape[2]
        if n > self.size:
            raise SpeechkitError(f"a prefix of {n} positions does not fit a cache of {self.size}")
        for i, (k, v) in enumerate(cache):
            self.k[i, :, :, :n].copy_(k)
            self.v[i, :, :, :n].copy_(v)
        self.length.fill_(n)


def attend_one(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """Attention of one query q [1, H, 1, hd] over a static cache k, v [1, H, Tmax, hd] where
    ``valid`` [1, 1, 1, Tmax] is true: two small matrix products around a float32 softmax.
    ``F.scaled_dot_product_attention`` picks a fused kernel that tiles the query axis, so a single
    query runs one block per head serially over all Tmax keys: on an H200 that was 240 µs per
    layer, over half of a latent's time (tools/tts_loop_profile.py)."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    return torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1).to(v.dtype) @ v


def block_step(block: Block, x: Tensor, pos: Tensor, k_cache: Tensor, v_cache: Tensor, valid: Tensor) -> Tensor:
    """``Block.forward`` for one new position x [1, 1, d] at ``pos`` [1], its key and value written
    into the block's static cache [1, H, Tmax, hd] (in place); ``valid`` [1, 1, 1, Tmax] masks
    the positions not yet written."""
    q, k, v = block.qkv_at(x, pos)
    k_cache.index_copy_(2, pos, k)
    v_cache.index_copy_(2, pos, v)
    return block.finish(x, attend_one(q, k_cache, v_cache, valid))


def static_step(model: ClearTTS, z: Tensor, cache: StaticCache) -> Tensor:
    """``ClearTTS.step`` on a static cache: feed one normalised latent z [1, D] at position
    ``cache.length`` → its hidden state [1, d]; the cache is updated in place (length + 1)."""
    kinds = torch.full((1, 1), LATENT, dtype=torch.long, device=z.device)
    x = model.embed(kinds, torch.zeros_like(kinds), z[:, None], text=False)
    pos = cache.length
    valid = (cache.positions <= pos).view(1, 1, 1, -1)
    for i, block in enumerate(model.blocks):
        x = block_step(block, x, pos, cache.k[i], cache.v[i], valid)
    cache.length.add_(1)
    return model.norm(x)[:, -1]


class _Slot:
    """The static tensors of one cache size: the cache, the hidden state the next latent is
    sampled from, the noise buffer, and the result of one iteration: the denormalised latent
    [D] and the stop probability of the hidden state it was sampled from, as one row [D + 1]."""

    def __init__(self, model: ClearTTS, tmax: int):
        d, dim, dev = model.cfg.d_model, model.cfg.latent_dim, model.latent_mean.device
        dtype = next(model.parameters()).dtype
        self.cache = StaticCache.empty(model, tmax)
        self.h = torch.zeros(1, d, dtype=dtype, device=dev)
        self.noise = torch.zeros(1, dim, device=dev)
        self.result = torch.zeros(dim + 1, device=dev)
        self.graphs: dict[tuple, Callable[[], None]] = {}
        # host copies of the result, one per latent in flight (pinned: the copy is asynchronous)
        self.host = [torch.empty(dim + 1, pin_memory=True) for _ in range(2)] if dev.type == "cuda" else []


def iterate(model: ClearTTS, slot: _Slot, steps: int, cfg_scale: float, temperature: float) -> None:
    """One latent of ``ClearTTS.generate`` on static tensors, in place: the stop probability of
    ``slot.h``, a latent sampled from ``slot.noise``, then the step that makes the next ``slot.h``."""
    dim = model.cfg.latent_dim
    prob = torch.sigmoid(model.stop(slot.h).float())
    z = model.head.sample(slot.h, steps, cfg_scale, temperature, slot.noise)
    slot.result[:dim].copy_(model.denormalize(z[0]))
    slot.result[dim:].copy_(prob[0])
    slot.h.copy_(static_step(model, z, slot.cache))


class FastGenerator:
    """``ClearTTS.generate`` with a static cache, graphed on CUDA. Holds the graphs and their
    buffers, so it runs one utterance at a time."""

    def __init__(self, model: ClearTTS, graphs: bool | None = None):
        self.model = model
        self.device = model.latent_mean.device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.slots: dict[int, _Slot] = {}
        self.busy = False

    def cache_size(self, positions: int) -> int:
        if self.device.type != "cuda":
            return -(-positions // CPU_ROUND) * CPU_ROUND
        n = CUDA_BUCKET
        while n < positions:
            n *= 2
        return n

    def slot(self, positions: int) -> _Slot:
        tmax = self.cache_size(positions)
        if tmax not in self.slots:
            if self.device.type != "cuda":
                self.slots.clear()  # sized per utterance: keep the last only
            self.slots[tmax] = _Slot(self.model, tmax)
        return self.slots[tmax]

    def runner(self, slot: _Slot, steps: int, cfg_scale: float, temperature: float) -> Callable[[], None]:
        """The iteration for these options: a graph replay (captured now if new) or the eager
        function. Capturing runs the iteration on the slot's buffers: load the prefix after."""
        key = (steps, float(cfg_scale), float(temperature))
        if key in slot.graphs:
            return slot.graphs[key]

        def eager() -> None:
            iterate(self.model, slot, *key)

        if not self.graphs:
            slot.graphs[key] = eager
            return eager
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the capture: cuBLAS handles, lazy inits
            for _ in range(2):
                slot.cache.length.zero_()
                eager()
        torch.cuda.current_stream(self.device).wait_stream(side)
        slot.cache.length.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager()
        slot.graphs[key] = graph.replay
        return graph.replay

    @torch.no_grad()
    def warmup(self, n_phones: int, prompt_frames: int, *, steps: int = 10, cfg_scale: float = 1.0,
               temperature: float = 1.0, max_frames: int | None = None) -> None:
        """Capture the graph an utterance of this size and these options will use (and run the
        prefill once), so that the first real utterance does not pay for it."""
        max_frames = max_frames or frame_limit(n_phones, self.model.cfg.frame_rate)
        phones = torch.ones(n_phones, dtype=torch.long)
        prompt = torch.zeros(prompt_frames, self.model.cfg.latent_dim)
        latents = self.generate(phones, prompt, steps=steps, cfg_scale=cfg_scale, temperature=temperature,
                                max_frames=max_frames, stop_threshold=2.0)
        for _ in range(min(2, max_frames)):
            next(latents)
        latents.close()

    @torch.no_grad()
    def generate(self, phones: Tensor, prompt: Tensor, *, steps: int = 10, cfg_scale: float = 1.0,
                 temperature: float = 1.0, max_frames: int | None = None, stop_threshold: float = STOP_THRESHOLD,
                 generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """As ``ClearTTS.generate``: latents [D] (denormalised, float32, on the CPU) one by one until
        the stop head fires or ``max_frames``. On CUDA the next latent is already computing when
        one is returned, so ``generator`` is drawn from once more than the eager loop would."""
        if self.busy:
            raise SpeechkitError("FastGenerator runs one utterance at a time (its cache is shared)")
        self.busy = True
        try:
            yield from self._generate(phones, prompt, steps, cfg_scale, temperature, max_frames, stop_threshold, generator)
        finally:
            self.busy = False

    def _generate(self, phones, prompt, steps, cfg_scale, temperature, max_frames, stop_threshold, generator):
        m, dim, dev = self.model, self.model.cfg.latent_dim, self.device
        max_frames = max_frames or frame_limit(phones.shape[0], m.cfg.frame_rate)
        slot = self.slot(phones.shape[0] + prompt.shape[0] + 2 + max_frames)
        run = self.runner(slot, steps, cfg_scale, temperature)  # before the prefix is loaded: capture overwrites
        h, cache = m.prefill(phones, m.normalize(prompt.to(dev).float()))
        slot.cache.load(cache)
        slot.h.copy_(h)
        cuda = dev.type == "cuda"
        ahead = len(slot.host) - 1 if cuda else 0
        pending: deque[tuple[Tensor, torch.cuda.Event | None]] = deque()

        def launch(j: int) -> None:
            noise = torch.randn(1, dim, generator=generator, device=dev if generator is None else generator.device)
            slot.noise.copy_(noise)
            run()
            if not cuda:
                pending.append((slot.result.clone(), None))
                return
            buf, done = slot.host[j % len(slot.host)], torch.cuda.Event()
            buf.copy_(slot.result, non_blocking=True)
            done.record()
            pending.append((buf, done))

        launched = 0
        for i in range(max_frames):
            while launched < min(i + 1 + ahead, max_frames):
                launch(launched)
                launched += 1
            buf, done = pending.popleft()
            if done is not None:
                done.synchronize()
            if float(buf[dim]) > stop_threshold:
                return
            yield buf[:dim].clone()
