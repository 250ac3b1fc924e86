"""Mean flows (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): the network learns
the *average* velocity over an interval of flow time instead of the instantaneous one, so one step
(or a few) goes from noise to data. Shared by MeanVC-style voice conversion and CLEAR's one-step head.

Time runs as in ``speechkit/models/tts/flow.py``: ``x_t = (1 - t) x0 + t x1``, noise ``x0 ~ N(0, I)``
at ``t = 0``, data ``x1`` at ``t = 1``, velocity ``v = x1 - x0``. A network is any callable
``net(x, r, t, cond) -> u``: ``x`` is the state at time ``t`` (``x [B, ...]``, ``r``/``t`` [B],
``cond`` whatever the net takes, batch first) and ``u`` [B, ...] is the average velocity from ``t``
to ``r``, ``u = (x_r - x_t) / (r - t)``; at ``r = t`` it is the instantaneous velocity, the very
quantity a rectified-flow head predicts (so such a head can start a mean-flow one). A step lands at
``x_r = x_t - (t - r) u(x_t, r, t)``; sampling runs towards the data, so ``r > t``. The paper runs
time the other way (data at 0, noise at 1, ``r < t``); its ``(t, r, u, v)`` are our
``(1 - t, 1 - r, -u, -v)``. Either way ``t`` is where the state is and ``r`` where the step lands,
and differentiating ``(r - t) u = x_r - x_t`` in ``t`` gives the identity that is the training target:
``u = v - (t - r) du/dt`` with ``du/dt = v . d_x u + d_t u`` along the path (one forward-mode JVP).

Networks and the JVP: ``torch.func.jvp`` needs a forward-AD formula for every op. The target runs
under PyTorch's math SDPA backend (the flash / memory-efficient kernels, CPU flash included, have
none), so ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` in training mode work.
A network must avoid other fused kernels without forward AD: the fast paths that
``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take in eval mode without a graph (the
target always runs without one, so a dev loss keeps such a net in train mode), custom CUDA / Triton
ops, ``autograd.Function`` without ``jvp``. Nor may it update its inputs in place or change state per
call (BatchNorm statistics are updated by every extra evaluation). A ``torch.compile`` or DDP
wrapper may train, but give the loss the plain module as ``target_net`` for the target's evaluations.
Dropout draws fresh masks in each of the loss's calls, which makes the target noisier; prefer none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

Net = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


def _rows(a: Tensor, like: Tensor) -> Tensor:
    """[B] → [B, 1, ..., 1] broadcastable against ``like`` [B, ...]."""
    return a.view(-1, *[1] * (like.dim() - 1))


def _select(cond: Tensor | None, idx: Tensor) -> Tensor | None:
    return None if cond is None else cond[idx]


@contextmanager
def _exact_target(device_type: str):
    """The target's evaluations: no graph, no autocast (bf16 tangents are too coarse for ``du/dt``
    and overflow sooner), and the math attention backend (the only one with forward AD)."""
    with torch.no_grad(), torch.autocast(device_type, enabled=False), sdpa_kernel([SDPBackend.MATH]):
        yield


def _draw_times(batch: int, fm_fraction: float, mean: float, std: float, device) -> tuple[Tensor, Tensor, Tensor]:
    """(t, r, mean-flow rows): two logit-normal draws per row, ``t`` the earlier and ``r`` the later;
    ``round(fm_fraction * batch)`` rows, chosen at random, get ``r = t`` (plain flow matching, on the
    first draw alone). The rows are picked by a permutation, not by position, because batches can
    be sorted (by length); their count is fixed so that the JVP runs on a known subset, no host sync."""
    a, b = torch.sigmoid(mean + std * torch.randn(2, batch, device=device))
    t, r = torch.minimum(a, b), torch.maximum(a, b)
    n_mf = batch - round(fm_fraction * batch)
    perm = torch.randperm(batch, device=device)
    mf = perm[:n_mf]
    fm = perm[n_mf:]
    t, r = t.index_copy(0, fm, a[fm]), r.index_copy(0, fm, a[fm])
    return t, r, mf


def sample_times(batch: int, fm_fraction: float = 0.5, mean: float = 0.4, std: float = 1.0,
                 device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Training times (t, r), each [batch], ``t <= r``, as ``meanflow_loss`` draws them. The paper's
    best ImageNet setting, logit-normal (-0.4, 1.0) with data at t = 0, is (0.4, 1.0) here."""
    t, r, _ = _draw_times(batch, fm_fraction, mean, std, device)
    return t, r


def _guided_velocity(net: Net, x_t: Tensor, t: Tensor, v: Tensor, cfg_scale: float,
                     null_cond: "Tensor | Callable[[Tensor], Tensor] | None", guided: Tensor | None, cond: Tensor | None) -> Tensor:
    """``v~ = w v + (1 - w) u(x_t, t, t | null)`` on the ``guided`` rows (all when None), ``v`` elsewhere:
    the guided instantaneous velocity that the conditional net is trained to follow (the paper's CFG section),
    so that sampling needs one evaluation and no guidance."""
    if cfg_scale == 1.0:
        return v
    if null_cond is None or cond is None:
        raise ValueError("cfg_scale != 1 needs a condition and a null condition")
    u_null = net(x_t, t, t, _nulled(null_cond, cond)).to(v.dtype)
    v_tilde = cfg_scale * v + (1.0 - cfg_scale) * u_null
    return v_tilde if guided is None else torch.where(_rows(guided, v), v_tilde, v)


def _jvp_target(net: Net, x_t: Tensor, r: Tensor, t: Tensor, v: Tensor, cond: Tensor | None) -> Tensor:
    """``v - (t - r) du/dt``, ``du/dt`` the JVP of ``net`` in (x, t) along (v, 1); r and cond fixed.
    Rows with ``r = t`` take ``v`` itself, so an overflowing ``du/dt`` there cannot give ``0 * inf``."""
    _, dudt = torch.func.jvp(lambda x, tt: net(x, r, tt, cond), (x_t, t), (v, torch.ones_like(t)))
    return torch.where(_rows(r == t, v), v, v - _rows(t - r, v) * dudt.to(v.dtype))


def _for_target(x, dtype: torch.dtype):
    return x.detach().to(dtype) if isinstance(x, Tensor) and x.is_floating_point() else x


def _nulled(null_cond: Tensor | Callable[[Tensor], Tensor], cond: Tensor) -> Tensor:
    """Every row's unconditional version: ``null_cond(cond)`` for a callable, else the fixed null
    condition broadcast to ``cond``'s shape."""
    return null_cond(cond) if callable(null_cond) else null_cond.to(cond.dtype).expand_as(cond)


def meanflow_target(net: Net, x_t: Tensor, r: Tensor, t: Tensor, v: Tensor, cond: Tensor | None = None, *,
                    cfg_scale: float = 1.0, null_cond: Tensor | None = None, guided: Tensor | None = None) -> Tensor:
    """The regression target ``u_tgt = v~ - (t - r) du/dt`` [B, ...] for states ``x_t`` [B, ...] at
    times ``t`` [B] stepping to ``r`` [B], path velocity ``v`` [B, ...]; no gradient, float32 at
    least, autocast off. ``v~`` is ``v`` guided by ``cfg_scale`` on the ``guided`` rows ([B] bool,
    all when None), and the JVP's tangent is ``(v~, 1)``."""
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    x_t, r, t, v = (a.detach().to(dtype) for a in (x_t, r, t, v))
    cond, null_cond = _for_target(cond, dtype), _for_target(null_cond, dtype)
    with _exact_target(x_t.device.type):
        v_tilde = _guided_velocity(net, x_t, t, v, cfg_scale, null_cond, guided, cond)
        return _jvp_target(net, x_t, r, t, v_tilde, cond)


def meanflow_loss(net: Net, x1: Tensor, cond: Tensor | None = None, *, noise: Tensor | None = None,
                  mask: Tensor | None = None, times: tuple[Tensor, Tensor] | None = None,
                  fm_fraction: float = 0.5, time_mean: float = 0.4, time_std: float = 1.0,
                  cfg_scale: float = 1.0, null_cond: Tensor | Callable[[Tensor], Tensor] | None = None, cond_drop: float = 0.1,
                  adaptive_p: float = 1.0, adaptive_c: float = 1e-3,
                  target_net: Net | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean-flow loss for data ``x1`` [B, ...] under ``cond`` (batch first, or None).

    ``noise``: x0 [B, ...] (default standard normal). ``mask``: True on real elements, broadcastable
    to ``x1`` (padding is left out of every row's error). ``times``: (t, r) [B] instead of drawing
    them (rows with ``r = t`` are flow matching; finding the others syncs with the host); else
    ``sample_times(B, fm_fraction, time_mean, time_std)``. Guidance: with ``null_cond`` (broadcastable
    to ``cond``, e.g. a learned [C] vector) each row's condition becomes the null one with probability
    ``cond_drop`` (those rows learn the unconditional velocity, unguided); the other rows' target is
    guided by ``cfg_scale`` (1 = none). ``null_cond`` may also be a callable mapping ``cond`` to its
    unconditional rows (a condition that only part of ``cond`` carries, e.g. a flag beside a row index). Each row's error ``e`` is its mean squared error over real
    elements, weighted by ``sg(1 / (e + adaptive_c) ** adaptive_p)`` (0 = plain MSE). ``target_net``:
    the same weights without a compile / DDP wrapper, for the target's evaluations (default ``net``).

    Returns (loss, parts): the weighted mean over usable rows, and detached tensors (no host sync):
    ``mse`` (unweighted, usable rows), ``mse_fm`` / ``mse_mf`` (rows with r = t / r != t), ``masked``
    (rows left out: non-finite data, noise, condition, target, prediction or error).

    What keeps it finite: non-finite inputs are zeroed before any evaluation (the net only sees
    finite numbers) and their rows flagged; the target is computed in float32 without autocast and
    takes ``v~`` itself where ``r = t``; every flagged row is removed with ``torch.where`` on the
    difference before it is squared (a product with zero would keep ``0 * nan``, in the loss or in its
    gradient); the weight is computed from cleaned errors; the mean divides by at least one row. A
    net that overflows *inside* (inf activations on finite inputs) still gives a finite loss, but its
    backward may not be: the engine's non-finite-step skip is the guard for that.
    """
    batch = x1.shape[0]
    real = torch.ones_like(x1, dtype=torch.bool) if mask is None else mask.to(x1.device, torch.bool).expand_as(x1)
    x0 = torch.randn_like(x1) if noise is None else noise.to(x1)
    ok = (torch.isfinite(x1) | ~real).reshape(batch, -1).all(1) & (torch.isfinite(x0) | ~real).reshape(batch, -1).all(1)
    x1, x0 = (torch.where(torch.isfinite(a), a, torch.zeros_like(a)) for a in (x1, x0))
    if cond is not None and cond.is_floating_point():
        ok &= torch.isfinite(cond.detach()).reshape(batch, -1).all(1)
        cond = torch.where(torch.isfinite(cond), cond, torch.zeros_like(cond))

    if times is None:
        t, r, mf_rows = _draw_times(batch, fm_fraction, time_mean, time_std, x1.device)
    else:
        t, r = (a.to(x1.device) for a in times)
        mf_rows = (r != t).nonzero().squeeze(1)
    guided = None
    if null_cond is not None and cond is not None:
        dropped = torch.rand(batch, device=x1.device) < cond_drop
        cond = torch.where(_rows(dropped, cond), _nulled(null_cond, cond), cond)
        guided = ~dropped
    elif cfg_scale != 1.0:
        raise ValueError("cfg_scale != 1 needs a condition and a null condition (null_cond)")

    x_t = (1 - _rows(t, x1)) * x0 + _rows(t, x1) * x1
    v = x1 - x0
    dtype = torch.promote_types(x1.dtype, torch.float32)
    with _exact_target(x1.device.type):
        xt_, t_, r_, v_ = (a.detach().to(dtype) for a in (x_t, t, r, v))
        cond_, null_ = _for_target(cond, dtype), _for_target(null_cond, dtype)
        inner = net if target_net is None else target_net
        target = _guided_velocity(inner, xt_, t_, v_, cfg_scale, null_, guided, cond_)
        if mf_rows.numel():
            sub = _jvp_target(inner, xt_[mf_rows], r_[mf_rows], t_[mf_rows], target[mf_rows], _select(cond_, mf_rows))
            target = target.index_copy(0, mf_rows, sub)

    u = net(x_t, r, t, cond).to(dtype)
    ok &= (torch.isfinite(target) | ~real).reshape(batch, -1).all(1)
    ok &= (torch.isfinite(u.detach()) | ~real).reshape(batch, -1).all(1)
    keep = real & _rows(ok, real)
    diff = torch.where(keep, u - target, torch.zeros_like(u))
    err = diff.pow(2).reshape(batch, -1).sum(1) / real.reshape(batch, -1).sum(1).clamp_min(1)
    ok &= torch.isfinite(err.detach())
    err = torch.where(ok, err, torch.zeros_like(err))
    weight = 1.0 / (err.detach() + adaptive_c) ** adaptive_p
    n_ok = ok.sum().clamp_min(1)
    loss = (weight * err).sum() / n_ok

    fm = ok & (r == t)
    mf = ok & (r != t)
    e = err.detach()
    parts = {"loss": loss.detach(), "mse": e.sum() / n_ok,
             "mse_fm": (e * fm).sum() / fm.sum().clamp_min(1), "mse_mf": (e * mf).sum() / mf.sum().clamp_min(1),
             "masked": (~ok).sum().to(torch.float32)}
    return loss, parts


def _grid(steps: int, times: Sequence[float] | Tensor | None) -> list[float]:
    """Time points from noise to data: ``times`` as given (increasing), else ``steps`` equal steps on [0, 1]."""
    if times is None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        return [i / steps for i in range(steps + 1)]
    grid = [float(s) for s in (times.tolist() if isinstance(times, Tensor) else times)]
    if len(grid) < 2 or any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"times must be at least two increasing points, got {grid}")
    return grid


@torch.no_grad()
def sample(net: Net, noise: Tensor, cond: Tensor | None = None, steps: int = 1,
           times: Sequence[float] | Tensor | None = None) -> Tensor:
    """Mean-flow sampling from ``noise`` [B, ...] (at the first time point) → [B, ...]: at each step
    ``x_r = x_t - (t - r) u(x_t, r, t)`` with ``r`` the next point. Guidance, if trained in, is
    already inside ``u``: one evaluation per step."""
    grid = _grid(steps, times)
    x, dtype = noise, torch.promote_types(noise.dtype, torch.float32)
    for t, r in zip(grid, grid[1:]):
        tt, rr = (torch.full((x.shape[0],), s, device=x.device, dtype=dtype) for s in (t, r))
        x = x - (t - r) * net(x, rr, tt, cond).to(x.dtype)
    return x


@torch.no_grad()
def sample_fm(net: Net, noise: Tensor, cond: Tensor | None = None, steps: int = 10,
              times: Sequence[float] | Tensor | None = None, cfg_scale: float = 1.0,
              null_cond: Tensor | None = None) -> Tensor:
    """Plain flow-matching Euler from ``noise`` [B, ...] with ``r = t`` (the net's instantaneous
    velocity) → [B, ...], for comparison; guidance as in ``flow.py``, ``v = v_null + w (v_c - v_null)``."""
    grid = _grid(steps, times)
    x, dtype = noise, torch.promote_types(noise.dtype, torch.float32)
    for t, t_next in zip(grid, grid[1:]):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
        v = net(x, tt, tt, cond).to(x.dtype)
        if cfg_scale != 1.0:
            if null_cond is None or cond is None:
                raise ValueError("cfg_scale != 1 needs a condition and a null condition")
            v_null = net(x, tt, tt, _nulled(null_cond, cond)).to(x.dtype)
            v = v_null + cfg_scale * (v - v_null)
        x = x + (t_next - t) * v
    return x
