"""CLEAR: autoregressive modelling of continuous codec latents with a flow head.

One decoder-only causal transformer runs over

    [phonemes] [sep] [prompt latents] [bos] [latents]

where the prompt is the VAE latents of another utterance of the target speaker. Every input
position carries a *kind* embedding (phoneme, sep, prompt latent, bos, latent), phonemes add
their own embedding and latents a linear projection; attention uses rotary positions. The hidden
state at ``bos`` and at every latent conditions:

- the **flow head** (:mod:`speechkit.models.tts.flow`), which samples the next latent: a
  rectified flow (``flow.objective: rectified``, guided Euler steps) or a mean flow
  (``meanflow``, :mod:`speechkit.nn.meanflow`: one or two steps, guidance trained in), and
- the **stop head**, a logistic unit that says the utterance is complete (trained with BCE; the
  label is 1 at the last latent only).

An optional **regression aid** (``reg_weight``, after MELLE): a linear map of the same hidden
state is trained to the next latent with MSE. It gives the transformer a direct, low-variance
signal about what comes next (the flow loss alone carries the noise of its random draws), and
models trained with it fit their training utterances in fewer steps. Training only: the flow head
still samples every latent.

Two aids make the model read the text within a short training run (without them it learns to
continue the latent stream and ignores the transcript):

- a small bidirectional **text encoder** (``text_layers`` non-causal blocks over the phonemes
  alone) whose output replaces the phoneme embeddings at the phoneme positions, and
- an **alignment prior** (``align_layers``, ``align_weight``): head 0 of those layers is pushed
  to put its attention of target position t (of N latents) on phonemes near t/N of the way
  through the text — the diagonal prior of guided attention (Tachibana et al., 2017), as
  ``-log sum_j A[t, j] P[t, j]`` with a Gaussian band P of width ``align_sigma``. Training only:
  inference is unchanged.

Latents are modelled normalised per dimension (the training set's mean and standard deviation are
stored in the model). Inference keeps a KV cache: the prefix is run once, then one position per
generated latent (:meth:`ClearTTS.prefill`, :meth:`ClearTTS.step`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechkit.decoding.tts_options import STOP_THRESHOLD
from speechkit.decoding.tts_options import max_frames as frame_limit
from speechkit.errors import ConfigError
from speechkit.models.tts.flow import OBJECTIVES, FlowHead
from speechkit.nn.meanflow import meanflow_loss

# input kinds (the kind embedding's rows)
PAD, PHONE, SEP, PROMPT, BOS, LATENT = range(6)

Cache = list[tuple[Tensor, Tensor]]  # per layer: keys, values [B, H, T, head_dim]


@dataclass(frozen=True)
class FlowConfig:
    hidden: int = 512
    blocks: int = 4
    cfg_dropout: float = 0.1  # training rows whose condition is replaced by the null vector
    noise_samples: int = 4  # flow-loss draws per position
    objective: str = "rectified"  # or "meanflow": the average velocity over an interval, 1-2 sampling steps
    # mean flow only (nn.meanflow.meanflow_loss):
    fm_fraction: float = 0.75  # rows trained with r = t (plain flow matching); the rest take the JVP target
    time_mean: float = 0.4  # logit-normal flow times (data at t = 1)
    time_std: float = 1.0
    cfg_scale: float = 1.0  # guidance folded into the target (1: none); sampling then needs one evaluation a step
    adaptive_p: float = 1.0  # adaptive loss weight 1 / (err + c) ** p (0: plain MSE)
    adaptive_c: float = 1e-3

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown flow objective '{self.objective}' (known: {', '.join(OBJECTIVES)})")
        if not 0.0 <= self.fm_fraction <= 1.0 or not 0.0 <= self.cfg_dropout < 1.0:
            raise ConfigError(f"flow: fm_fraction ({self.fm_fraction}) must be in [0, 1] and cfg_dropout ({self.cfg_dropout}) in [0, 1)")
        if self.objective == "meanflow" and self.cfg_scale != 1.0 and self.cfg_dropout <= 0.0:
            raise ConfigError(f"flow: cfg_scale {self.cfg_scale} needs cfg_dropout > 0 "
                              f"(the null condition it guides away from must be trained)")


@dataclass(frozen=True)
class ClearConfig:
    vocab_size: int = 0  # phoneme vocabulary, set from the data (0 = not yet known)
    latent_dim: int = 64
    frame_rate: float = 25.0  # latents per second (the codec's)
    d_model: int = 384
    layers: int = 8
    heads: int = 6
    ff: int = 1536
    dropout: float = 0.1
    latent_dropout: float = 0.0  # Tacotron-style prenet dropout on the fed-back latents (training only): makes the model read the text
    rope_base: float = 10000.0
    stop_weight: float = 1.0
    reg_weight: float = 0.0  # MELLE-style auxiliary regression: a linear map of the hidden state to the next latent, MSE (training only)
    text_layers: int = 0  # bidirectional blocks over the phonemes before the causal stack
    align_layers: tuple[int, ...] = ()  # causal blocks whose head 0 gets the diagonal alignment prior
    align_weight: float = 0.0
    align_sigma: float = 0.2  # the prior's band, as a fraction of the text
    flow: FlowConfig = field(default_factory=FlowConfig)


def alignment_prior(logp: Tensor, kinds: Tensor, flow_mask: Tensor, sigma: float, span: int | None = None) -> tuple[Tensor, Tensor]:
    """The diagonal alignment prior on one head's attention log-probs ``logp`` [B, T, T]: at the
    k-th of a row's N target positions (``flow_mask``), the mass on phoneme j (of the row's Tp)
    weighted by exp(-((j + ½)/Tp - (k + ½)/N)² / 2σ²) → (-mean log of that mass, the mean plain
    attention mass on the phonemes: a diagnostic). ``span``: the longest row's phoneme count when
    the caller knows it (saves a device sync)."""
    is_phone = kinds == PHONE
    tp = is_phone.sum(1).clamp(min=1).float()
    n = flow_mask.sum(1).clamp(min=1).float()
    tk = span or int(is_phone.sum(1).max())
    k = (flow_mask.cumsum(1) - 1).float()
    j = torch.arange(tk, device=logp.device, dtype=torch.float32)
    d = (j[None, None, :] + 0.5) / tp[:, None, None] - (k[:, :, None] + 0.5) / n[:, None, None]
    prior = torch.exp(-d.square() / (2 * sigma**2)) * is_phone[:, None, :tk]
    a = logp[:, :, :tk].exp()
    w = flow_mask.float() / flow_mask.sum().clamp(min=1)  # a mean over the target positions without a device sync
    loss = -((a * prior).sum(-1) + 1e-4).log().mul(w).sum()
    return loss, ((a * is_phone[:, None, :tk]).sum(-1) * w).sum().detach()


def rope(x: Tensor, pos: Tensor, base: float) -> Tensor:
    """Rotary position embedding of ``x`` [B, H, T, hd] at positions ``pos`` [T]."""
    hd = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd))
    ang = pos.float()[:, None] * inv[None]  # [T, hd/2]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, cfg: ClearConfig):
        super().__init__()
        self.heads, self.base = cfg.heads, cfg.rope_base
        self.d, self.hd = cfg.d_model, cfg.d_model // cfg.heads  # python ints: static shapes in exported graphs
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.ff), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

        self.keep_attn = False  # training: keep head 0's attention log-probs (self.attn_logp) for the alignment prior
        self.attn_logp: Tensor | None = None

    def forward(self, x: Tensor, pos: Tensor, past: tuple[Tensor, Tensor] | None,
                mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``mask`` (bool, broadcast to [B, H, T, T]): attend where True instead of causally
        (the text encoder's bidirectional attention over the phonemes)."""
        b, t = x.shape[:2]
        q, k, v = self.qkv_at(x, pos)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if self.keep_attn and past is None:
            logits = (q[:, 0].float() @ k[:, 0].float().transpose(1, 2)) / q.shape[-1] ** 0.5
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            self.attn_logp = logits.masked_fill(~causal, float("-inf")).log_softmax(-1)
        if mask is not None:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif past is None or past[0].shape[2] == 0:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.0)
        elif t == 1:
            a = F.scaled_dot_product_attention(q, k, v)
        else:  # several new positions after a cache: causal within them, all of the past visible
            n = k.shape[2]
            mask = torch.ones(t, n, dtype=torch.bool, device=x.device).tril(n - t)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.finish(x, a), (k, v)

    def qkv_at(self, x: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys (both rotated to ``pos``) and values [B, H, T, hd] of positions x [B, T, d]."""
        b, t = x.shape[:2]
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        return rope(q, pos, self.base), rope(k, pos, self.base), v

    def finish(self, x: Tensor, a: Tensor) -> Tensor:
        """The residual update of x [B, T, d] by the attention output a [B, H, T, hd], then the MLP."""
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.d)))
        return x + self.drop(self.ff(self.norm2(x)))


def _at(x: Tensor, mask: Tensor, index: Tensor | None) -> Tensor:
    """``x[mask]`` for x [B, T, ...]: by the flat ``index`` where the batch has one (no device sync)."""
    return x[mask] if index is None else x.flatten(0, 1).index_select(0, index.to(x.device, non_blocking=True))


class ClearTTS(nn.Module):
    def __init__(self, cfg: ClearConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ClearConfig.vocab_size must be set (the phoneme vocabulary's size)")
        self.cfg = cfg
        d = cfg.d_model
        self.phone = nn.Embedding(cfg.vocab_size, d)
        self.kind = nn.Embedding(6, d)
        self.latent_in = nn.Sequential(nn.Linear(cfg.latent_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.text_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.text_layers))
        self.text_norm = nn.LayerNorm(d) if cfg.text_layers else None
        if any(not 0 <= i < cfg.layers for i in cfg.align_layers):
            raise ValueError(f"align_layers {list(cfg.align_layers)}: layers are 0..{cfg.layers - 1}")
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.head = FlowHead(cfg.latent_dim, d, cfg.flow.hidden, cfg.flow.blocks, cfg.flow.objective)
        self.stop = nn.Linear(d, 1)
        self.reg = nn.Linear(d, cfg.latent_dim) if cfg.reg_weight > 0 else None
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))

    # -- latents in the model's (normalised) space and back
    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, z: Tensor) -> Tensor:
        return z * self.latent_std + self.latent_mean

    def encode_text(self, phones: Tensor, is_phone: Tensor, span: int | None = None) -> Tensor:
        """Phoneme embeddings through the bidirectional text encoder; [B, T, d], meaningful at the
        phoneme positions (the first ones of every row). ``span``: the longest row's phoneme count
        (training batches carry it, so that no device sync is needed to find it)."""
        x = self.phone(phones)
        if not self.text_blocks:
            return x
        span_only = self.training and not torch.jit.is_tracing()  # training batches: only the phoneme span
        t = (span or int(is_phone.sum(1).max())) if span_only else x.shape[1]
        keys = is_phone[:, None, None, :t]
        pos = torch.arange(t, device=x.device)
        h = x[:, :t] if span_only else x
        for block in self.text_blocks:
            h, _ = block(h, pos, None, mask=keys)
        return torch.cat([self.text_norm(h), x[:, t:]], dim=1) if span_only else self.text_norm(h)

    def embed(self, kinds: Tensor, phones: Tensor, latents: Tensor, text: bool = True, span: int | None = None) -> Tensor:
        """kinds, phones [B, T] (long), latents [B, T, D] (normalised; zeros where not a latent).
        ``text=False``: no phonemes among these positions (a generation step)."""
        is_phone = kinds == PHONE
        is_latent = ((kinds == PROMPT) | (kinds == LATENT)).unsqueeze(-1)
        x = self.kind(kinds)
        if text:
            x = x + self.encode_text(phones, is_phone, span) * is_phone.unsqueeze(-1)
        p = self.cfg.latent_dropout if self.training else 0.0  # prenet dropout: before and inside the input MLP
        z = F.dropout(latents.to(x.dtype), p, self.training)
        z = self.latent_in[2](F.dropout(self.latent_in[1](self.latent_in[0](z)), p, self.training))
        return x + z * is_latent

    def run(self, x: Tensor, cache: Cache | None = None) -> tuple[Tensor, Cache]:
        """Transformer over embedded positions after those in ``cache`` → (hidden, new cache)."""
        offset = cache[0][0].shape[2] if cache else 0
        pos = torch.arange(offset, offset + x.shape[1], device=x.device)
        new: Cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, pos, cache[i] if cache else None)
            new.append(kv)
        return self.norm(x), new

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher-forced losses for a batch from :func:`speechkit.models.tts.data.collate`:
        ``kinds``/``phones`` [B, T], ``latents`` [B, T, D] (the inputs), ``targets`` [B, T, D]
        (the next latent, where ``flow_mask``), ``stop`` [B, T] (labels, where ``stop_mask``)."""
        aligned = [self.blocks[i] for i in self.cfg.align_layers] if self.cfg.align_weight > 0 else []
        for block in aligned:
            block.keep_attn = True
        try:
            h, _ = self.run(self.embed(batch["kinds"], batch["phones"], batch["latents"], span=batch.get("phone_span")))
        finally:
            for block in aligned:
                block.keep_attn = False
        fm, sm = batch["flow_mask"], batch["stop_mask"]
        h_flow, targets = _at(h, fm, batch.get("flow_index")), _at(batch["targets"], fm, batch.get("flow_index"))
        flow, flow_parts = self.flow_loss(h_flow, targets.float())
        logits = self.stop(_at(h, sm, batch.get("stop_index"))).squeeze(-1).float()
        labels = _at(batch["stop"], sm, batch.get("stop_index")).float()
        # one positive per utterance: weight it like all the negatives of its utterance together
        pos_weight = (labels.numel() - labels.sum()).clamp(min=1) / labels.sum().clamp(min=1)
        stop = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
        loss = flow + self.cfg.stop_weight * stop
        with torch.no_grad():
            acc = ((logits > 0) == (labels > 0.5)).float().mean()
        parts = {**flow_parts, "stop": stop.detach(), "stop_acc": acc}
        if self.reg is not None:
            reg = F.mse_loss(self.reg(h_flow).float(), targets.float())
            loss = loss + self.cfg.reg_weight * reg
            parts["reg"] = reg.detach()
        if aligned:
            align, on_text = zip(*(alignment_prior(b.attn_logp, batch["kinds"], fm, self.cfg.align_sigma, batch.get("phone_span")) for b in aligned))
            for block in aligned:
                block.attn_logp = None
            align = torch.stack(align).mean()
            loss = loss + self.cfg.align_weight * align
            parts |= {"align": align.detach(), "text_mass": torch.stack(on_text).mean()}
        return loss, parts

    def flow_loss(self, c: Tensor, x1: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The flow head's loss for conditions ``c`` [N, d] (hidden states) and next latents ``x1``
        [N, D] (normalised), every row drawn ``noise_samples`` times in training → (loss, parts to
        log). Rectified: the flow-matching MSE, the condition nulled on ``cfg_dropout`` rows. Mean
        flow: ``meanflow_loss`` (the same nulling, guidance folded into the target, adaptive
        weights; rows with a non-finite condition, target or prediction are left out and counted
        in ``flow_masked``)."""
        fc = self.cfg.flow
        samples, drop = (fc.noise_samples, fc.cfg_dropout) if self.training else (1, 0.0)
        if fc.objective == "rectified":
            loss = self.head.loss(x1, self.head.drop_condition(c, drop), samples)
            return loss, {"flow": loss.detach()}
        loss, parts = meanflow_loss(self.head.average_velocity, x1.repeat(samples, 1), c.repeat(samples, 1),
                                    fm_fraction=fc.fm_fraction, time_mean=fc.time_mean, time_std=fc.time_std,
                                    cfg_scale=fc.cfg_scale, null_cond=self.head.null, cond_drop=drop,
                                    adaptive_p=fc.adaptive_p, adaptive_c=fc.adaptive_c)
        return loss, {"flow": parts["loss"], "flow_mse": parts["mse"], "flow_mse_mf": parts["mse_mf"], "flow_masked": parts["masked"]}

    # -- inference
    def prefix(self, phones: Tensor, prompt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(kinds, phone ids, latents) [1, T...] of ``[phones] [sep] [prompt] [bos]`` for one
        utterance: ``phones`` [Tp] ids, ``prompt`` [P, D] normalised latents."""
        dev = self.latent_mean.device
        tp, p = phones.shape[0], prompt.shape[0]
        kinds = torch.tensor([PHONE] * tp + [SEP] + [PROMPT] * p + [BOS], device=dev)
        ids = torch.cat([phones.to(dev), torch.zeros(p + 2, dtype=torch.long, device=dev)])
        lat = torch.cat([torch.zeros(tp + 1, self.cfg.latent_dim, device=dev), prompt.to(dev).float(),
                         torch.zeros(1, self.cfg.latent_dim, device=dev)])
        return kinds[None], ids[None], lat[None]

    def prefill(self, phones: Tensor, prompt: Tensor) -> tuple[Tensor, Cache]:
        """Run the prefix once → (hidden at bos [1, d], cache)."""
        h, cache = self.run(self.embed(*self.prefix(phones, prompt)))
        return h[:, -1], cache

    def step(self, z: Tensor, cache: Cache) -> tuple[Tensor, Cache]:
        """Feed one generated (normalised) latent [1, D] → (its hidden [1, d], cache)."""
        kinds = torch.full((1, 1), LATENT, dtype=torch.long, device=z.device)
        h, cache = self.run(self.embed(kinds, torch.zeros_like(kinds), z[:, None], text=False), cache)
        return h[:, -1], cache

    @torch.no_grad()
    def generate(self, phones: Tensor, prompt: Tensor, *, steps: int = 10, cfg_scale: float = 1.0,
                 temperature: float = 1.0, max_frames: int | None = None, stop_threshold: float = STOP_THRESHOLD,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[Tensor]:
        """Yield generated latents one by one ([D], denormalised, ready for the codec decoder)
        until the stop head fires or ``max_frames``. ``prompt`` is in the codec's latent space
        [P, D]. ``steps``: flow-head steps per latent, either objective; ``cfg_scale`` guides a
        rectified head only (a mean-flow head's guidance is trained in). ``use_cache=False``
        recomputes the whole sequence each step (the reference the KV cache is tested against)."""
        prompt_n = self.normalize(prompt.to(self.latent_mean.device).float())
        max_frames = max_frames or frame_limit(phones.shape[0], self.cfg.frame_rate)
        h, cache = self.prefill(phones, prompt_n)
        made: list[Tensor] = []
        for _ in range(max_frames):
            if torch.sigmoid(self.stop(h).float()).item() > stop_threshold:
                return
            noise = torch.randn(1, self.cfg.latent_dim, generator=generator, device=h.device if generator is None else generator.device).to(h.device)
            z = self.head.sample(h, steps, cfg_scale, temperature, noise)
            made.append(z)
            yield self.denormalize(z[0])
            if use_cache:
                h, cache = self.step(z, cache)
            else:
                kinds, ids, lat = self.prefix(phones, prompt_n)
                n = len(made)
                kinds = torch.cat([kinds, torch.full((1, n), LATENT, device=kinds.device)], dim=1)
                ids = torch.cat([ids, torch.zeros(1, n, dtype=torch.long, device=ids.device)], dim=1)
                lat = torch.cat([lat, torch.cat(made)[None]], dim=1)
                hs, _ = self.run(self.embed(kinds, ids, lat))
                h = hs[:, -1]

