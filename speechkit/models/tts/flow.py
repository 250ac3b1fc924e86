"""The rectified-flow head of CLEAR: a small residual MLP that turns one hidden state of the AR
transformer into a sample of the next continuous latent.

Training (flow matching on straight paths): ``x_t = (1 - t) x0 + t x1`` with ``x0 ~ N(0, I)``
and ``x1`` the target latent; the head predicts the velocity ``x1 - x0`` from ``(x_t, t, c)``.
Sampling: Euler steps from ``t = 0`` (noise, scaled by a temperature) to ``t = 1``, with
classifier-free guidance — the condition is replaced by a learned null vector for a fraction of
training rows, and at sampling ``v = v_null + w (v_c - v_null)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechkit.nn.dit import timestep_features as timestep_embedding  # one sinusoidal time embedding for every flow


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
    """velocity = head(x_t [N, D], t [N], c [N, C]); ``c = None`` rows use the learned null
    condition (the unconditional branch of classifier-free guidance)."""

    def __init__(self, dim: int, cond_dim: int, hidden: int = 512, blocks: int = 4):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.inp = nn.Linear(dim, hidden)
        self.cond = nn.Linear(cond_dim, hidden)
        self.time = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.null = nn.Parameter(torch.zeros(cond_dim))
        self.blocks = nn.ModuleList(AdaLNBlock(hidden) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.out_mod = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, dim)
        for layer in (self.out_mod, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        e = nn.functional.silu(self.cond(c) + self.time(timestep_embedding(t, 256).to(c.dtype)))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        shift, scale = self.out_mod(e).chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)

    def drop_condition(self, c: Tensor, p: float) -> Tensor:
        """Rows of ``c`` replaced by the null condition with probability ``p`` (training)."""
        if p <= 0:
            return c
        keep = torch.rand(c.shape[0], 1, device=c.device) >= p
        return torch.where(keep, c, self.null.to(c.dtype).expand_as(c))

    def loss(self, x1: Tensor, c: Tensor, samples: int = 1) -> Tensor:
        """Flow-matching MSE for targets ``x1`` [N, D] under conditions ``c`` [N, C]; each row is
        drawn ``samples`` times (the head is cheap next to the transformer that made ``c``)."""
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
        """Euler integration of the learnt velocity field from noise at t=0 to t=1 → [N, D].
        ``noise`` (standard normal, [N, D]) makes the draw reproducible. Everything that depends
        only on the condition and the step's time — the conditioning vector and every block's
        modulation — is computed once for all steps (one batched matmul each), so that a step is
        only the MLP path over ``x`` (the same values as calling the head step by step)."""
        n = c.shape[0]
        x = (noise if noise is not None else torch.randn(n, self.dim, device=c.device)).float() * temperature
        guided = cfg_scale != 1.0
        cc = torch.cat([c, self.null.to(c.dtype).expand_as(c)]) if guided else c
        ts = torch.arange(steps, device=c.device, dtype=torch.float32) / steps
        e = nn.functional.silu(self.cond(cc)[None] + self.time(timestep_embedding(ts, 256).to(cc.dtype))[:, None])  # [S, M, hidden]
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
            x = x + v / steps
        return x
