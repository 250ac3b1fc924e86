"""The flow head of CLEAR: a small residual MLP that turns one hidden state of the AR transformer
into a sample of the next continuous latent, trained as a rectified flow (many Euler steps) or as a
mean flow (``nn.meanflow``: one or two steps).

Time runs from noise to data: ``x_t = (1 - t) x0 + t x1`` with ``x0 ~ N(0, I)`` and ``x1`` the
target latent.

- **rectified** (the default): the head predicts the velocity ``x1 - x0`` from ``(x_t, t, c)``;
  sampling takes Euler steps from ``t = 0`` (noise, scaled by a temperature) to ``t = 1``, with
  classifier-free guidance — the condition is replaced by a learned null vector for a fraction of
  training rows, and at sampling ``v = v_null + w (v_c - v_null)``.
- **meanflow**: the head also embeds the interval ``r - t`` and predicts the average velocity
  ``u(x_t, r, t, c)`` over it (``nn/meanflow.py``); a step lands at ``x_r = x_t + (r - t) u``.
  Guidance is folded into the training target, so a step is one evaluation. At ``r = t`` the
  head is a rectified-flow head: ``u(x, t, t, c)`` is the instantaneous velocity, trained on the
  loss's flow-matching rows. Its times enter the sinusoidal features slowly (``MEANFLOW_TIME_SCALE``):
  the target's ``du/dt`` is a derivative in ``t``, and features of ``1000 t`` (the rectified head's)
  made it blow up: on the 2-D mixture of ``tests/test_tts_meanflow.py`` one of four training seeds
  diverged (mean-flow error in the thousands) and the others landed about 1.5x farther from the
  modes in one step than with ``5 t``, where none diverged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechkit.nn.dit import timestep_features as timestep_embedding  # one sinusoidal time embedding for every flow

OBJECTIVES = ("rectified", "meanflow")
TIME_FEATURES = 256
MEANFLOW_TIME_SCALE = 5.0  # a mean-flow head's fastest time feature turns 5 rad per unit of flow time (rectified: 1000)


def time_mlp(hidden: int) -> nn.Sequential:
    """Sinusoidal time features [..., 256] → [..., hidden]."""
    return nn.Sequential(nn.Linear(TIME_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden))


class AdaLNBlock(nn.Module):
    """LayerNorm modulated (shift, scale, gate) by the condition, MLP, gated residual."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
        self.mod = nn.Linear(hidden, 3 * hidden)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        shift, scale, gate = self.mod(e).chunk(3, dim=-1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class FlowHead(nn.Module):
    """N: rows, D: latent dim, C: condition dim. velocity [N, D] = head(x_t [N, D], t [N], c [N, C],
    r [N]); ``r`` only for a mean-flow head (None: ``r = t``, the instantaneous velocity). The
    learned ``null`` condition is the unconditional branch of classifier-free guidance."""

    def __init__(self, dim: int, cond_dim: int, hidden: int = 512, blocks: int = 4, objective: str = "rectified"):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"flow objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
        self.dim, self.hidden, self.objective = dim, hidden, objective
        self.inp = nn.Linear(dim, hidden)
        self.cond = nn.Linear(cond_dim, hidden)
        self.time = time_mlp(hidden)
        self.gap = time_mlp(hidden) if objective == "meanflow" else None  # of r - t, the interval u averages over
        self.null = nn.Parameter(torch.zeros(cond_dim))
        self.blocks = nn.ModuleList(AdaLNBlock(hidden) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.out_mod = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, dim)
        for layer in (self.out_mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def times(self, t: Tensor, r: Tensor | None, dtype: torch.dtype) -> Tensor:
        """The flow times' share of the conditioning, [..., hidden] for t (and r) [...]."""
        if self.gap is None:
            if r is not None:
                raise ValueError("a rectified-flow head takes no r (it predicts the instantaneous velocity)")
            return self.time(timestep_embedding(t, TIME_FEATURES).to(dtype))
        slow = MEANFLOW_TIME_SCALE / 1000.0  # timestep_embedding multiplies by 1000
        gap = torch.zeros_like(t) if r is None else r - t
        return (self.time(timestep_embedding(slow * t, TIME_FEATURES).to(dtype))
                + self.gap(timestep_embedding(slow * gap, TIME_FEATURES).to(dtype)))

    def forward(self, x: Tensor, t: Tensor, c: Tensor, r: Tensor | None = None) -> Tensor:
        e = nn.functional.silu(self.cond(c) + self.times(t, r, c.dtype))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        shift, scale = self.out_mod(e).chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)

    def average_velocity(self, x: Tensor, r: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """A mean-flow head as ``nn.meanflow``'s ``net(x, r, t, cond)``: the average velocity [N, D]
        from ``t`` to ``r``, float32 out (the samplers keep the state in float32)."""
        return self(x.to(c.dtype), t, c, r).float()

    def drop_condition(self, c: Tensor, p: float) -> Tensor:
        """Rows of ``c`` replaced by the null condition with probability ``p`` (training)."""
        if p <= 0:
            return c
        keep = torch.rand(c.shape[0], 1, device=c.device) >= p
        return torch.where(keep, c, self.null.to(c.dtype).expand_as(c))

    def loss(self, x1: Tensor, c: Tensor, samples: int = 1) -> Tensor:
        """Rectified flow: the flow-matching MSE for targets ``x1`` [N, D] under conditions ``c``
        [N, C]; each row is drawn ``samples`` times (the head is cheap next to the transformer that
        made ``c``). A mean-flow head trains with ``nn.meanflow.meanflow_loss`` on
        :meth:`average_velocity` instead (``ClearTTS.flow_loss``)."""
        if samples > 1:
            x1, c = x1.repeat(samples, 1), c.repeat(samples, 1)
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        v = self(xt.to(c.dtype), t, c).float()
        return ((v - (x1 - x0)) ** 2).mean()

    @torch.no_grad()
    def sample(self, c: Tensor, steps: int = 10, cfg_scale: float = 1.0, temperature: float = 1.0,
               noise: Tensor | None = None) -> Tensor:
        """``steps`` equal steps from noise at t=0 to t=1 → [N, D]: guided Euler steps of the
        velocity (rectified), or mean-flow steps ``x_r = x_t + (r - t) u(x_t, r, t)``, the same
        as ``nn.meanflow.sample`` (meanflow; ``cfg_scale`` is ignored: the guidance is trained in).
        ``noise`` (standard normal, [N, D]) makes the draw reproducible. Everything that depends
        only on the condition and the step's times — the conditioning vector and every block's
        modulation — is computed once for all steps (one batched matmul each), so that a step is
        only the MLP path over ``x`` (the same values as calling the head step by step)."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        n = c.shape[0]
        x = (noise if noise is not None else torch.randn(n, self.dim, device=c.device)).float() * temperature
        guided = cfg_scale != 1.0 and self.gap is None
        cc = torch.cat([c, self.null.to(c.dtype).expand_as(c)]) if guided else c
        ts = torch.arange(steps, device=c.device, dtype=torch.float32) / steps
        rs = None if self.gap is None else torch.arange(1, steps + 1, device=c.device, dtype=torch.float32) / steps
        e = nn.functional.silu(self.cond(cc)[None] + self.times(ts, rs, cc.dtype)[:, None])  # [S, M, hidden]
        mods = [block.mod(e).chunk(3, dim=-1) for block in self.blocks]
        out_shift, out_scale = self.out_mod(e).chunk(2, dim=-1)
        for i in range(steps):
            h = self.inp((torch.cat([x, x]) if guided else x).to(cc.dtype))
            for block, (shift, scale, gate) in zip(self.blocks, mods):
                h = h + gate[i] * block.mlp(block.norm(h) * (1 + scale[i]) + shift[i])
            v = self.out(self.out_norm(h) * (1 + out_scale[i]) + out_shift[i]).float()
            if guided:
                v_c, v_u = v.chunk(2)
                v = v_u + cfg_scale * (v_c - v_u)
            x = x + v / steps  # r - t = 1 / steps
        return x
