"""Mean flows (speechkit/nn/meanflow.py): the JVP target against finite differences, one-step
sampling of a 2-D mixture (mean flow fits it, flow matching in one step does not), no NaN from bad
rows, guidance folded into the target, and flow matching as the r = t special case."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speechkit.models.tts.flow import FlowHead
from speechkit.nn.meanflow import meanflow_loss, meanflow_target, sample, sample_fm

pytestmark = pytest.mark.usefixtures("one_thread")


class MLP(nn.Module):
    """u(x [B, D] or [B, T, D], r [B], t [B], cond [B, C] or None): the times (and the condition) are
    concatenated to every frame."""

    def __init__(self, dim: int = 2, cond_dim: int = 0, hidden: int = 32, layers: int = 2, act=nn.Tanh):
        super().__init__()
        sizes = [dim + 2 + cond_dim] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            mods += [nn.Linear(a, b), act()]
        self.f = nn.Sequential(*mods, nn.Linear(hidden, dim))

    def forward(self, x, r, t, cond):
        feats = [t.to(x.dtype), (r - t).to(x.dtype)] + ([] if cond is None else list(cond.to(x.dtype).unbind(-1)))
        extra = torch.stack(feats, -1)  # [B, 2 + C]
        extra = extra.view(extra.shape[0], *[1] * (x.dim() - 2), extra.shape[-1]).expand(*x.shape[:-1], -1)
        return self.f(torch.cat([x, extra], -1))


def path(x0, x1, t):
    return (1 - t[:, None]) * x0 + t[:, None] * x1, x1 - x0


def test_jvp_target_matches_finite_differences():
    torch.manual_seed(0)
    net = MLP(dim=3, cond_dim=2, hidden=32).double()
    b = 6
    x0, x1, cond = (torch.randn(b, d, dtype=torch.float64) for d in (3, 3, 2))
    t = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.2, 0.6], dtype=torch.float64)
    r = torch.tensor([1.0, 0.4, 0.9, 0.7, 0.2, 0.65], dtype=torch.float64)  # row 4: r = t
    x_t, v = path(x0, x1, t)
    target = meanflow_target(net, x_t, r, t, v, cond)
    assert target.dtype == torch.float64

    h = 1e-5  # d/dt u(x_t, r, t) along the path, central differences
    with torch.no_grad():
        dudt = (net(x_t + h * v, r, t + h, cond) - net(x_t - h * v, r, t - h, cond)) / (2 * h)
    expected = v - (t - r)[:, None] * dudt
    assert (target - expected).abs().max().item() < 1e-8
    assert torch.equal(target[4], v[4])  # r = t: the path velocity itself
    mf_rows = [0, 1, 2, 3, 5]
    assert ((t - r)[:, None] * dudt)[mf_rows].abs().max().item() > 1e-2  # the correction is not negligible

    # the loss regresses on that same target (plain MSE: the loss is the mean squared difference)
    loss, parts = meanflow_loss(net, x1, cond, noise=x0, times=(t, r), adaptive_p=0.0)
    with torch.no_grad():
        ref = ((net(x_t, r, t, cond) - target) ** 2).mean()
    assert abs(loss.item() - ref.item()) < 1e-6
    assert parts["masked"].item() == 0
    calls = []  # a wrapper (compile, DDP) trains; the plain module gives the target

    def wrapper(*args):
        calls.append(1)
        return net(*args)

    again, _ = meanflow_loss(wrapper, x1, cond, noise=x0, times=(t, r), adaptive_p=0.0, target_net=net)
    assert len(calls) == 1 and again.item() == loss.item()

    # under bf16 autocast (the engine's) the target is still computed in float32, autocast off
    net, args = net.float(), [a.float() for a in (x_t, r, t, v, cond)]
    exact = meanflow_target(net, *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(*args[:3], args[4]).dtype == torch.bfloat16  # autocast is on for the net itself
        in_autocast = meanflow_target(net, *args)
    assert in_autocast.dtype == torch.float32 and torch.equal(in_autocast, exact)
    assert (exact.double() - target).abs().max().item() < 1e-4  # float32 accuracy, not bf16's ~1e-2


def test_target_through_attention_uses_a_jvp_capable_backend():
    """SDPA's fused kernels (CPU flash included, torch 2.13) have no forward-mode AD; the target runs
    under the math backend and matches finite differences through attention."""

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4 + 2, 12)
            self.out = nn.Linear(4, 4)

        def forward(self, x, r, t, cond):  # x [B, T, 4]
            tr = torch.stack([t, r], -1)[:, None].expand(-1, x.shape[1], -1)
            q, k, v = self.qkv(torch.cat([x, tr], -1)).chunk(3, -1)
            return self.out(F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0])

    torch.manual_seed(0)
    net = Attn().double()
    x_t, v = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 5, 4, dtype=torch.float64)
    t, r = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), torch.tensor([0.5, 0.9, 0.3], dtype=torch.float64)
    target = meanflow_target(net, x_t, r, t, v)
    h = 1e-5
    with torch.no_grad():
        dudt = (net(x_t + h * v, r, t + h, None) - net(x_t - h * v, r, t - h, None)) / (2 * h)
    assert (target - (v - (t - r)[:, None, None] * dudt)).abs().max().item() < 1e-8
    net = net.float()
    loss, _ = meanflow_loss(net, torch.randn(3, 5, 4))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


# --- one-step sampling of a 2-D mixture -------------------------------------------------------

MODES = 8
RADIUS, SPREAD = 2.0, 0.1


def mode_centres() -> torch.Tensor:
    a = 2 * math.pi * torch.arange(MODES) / MODES
    return RADIUS * torch.stack([torch.cos(a), torch.sin(a)], 1)


class ToyNet(nn.Module):
    def __init__(self, hidden: int = 256):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(4, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                               nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x, r, t, cond):
        return self.f(torch.cat([x, t[:, None], (r - t)[:, None]], 1))


def train_toy(fm_fraction: float, steps: int = 500, batch: int = 512) -> ToyNet:
    """The same net, times and loss weighting; only the share of r = t rows differs."""
    centres = mode_centres()
    torch.manual_seed(0)
    net = ToyNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x1 = centres[torch.randint(MODES, (batch,))] + SPREAD * torch.randn(batch, 2)
        loss, _ = meanflow_loss(net, x1, None, fm_fraction=fm_fraction, time_mean=0.0, time_std=1.0, adaptive_p=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net


def mode_stats(x: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(mean distance to the nearest mode, share within 3 spreads of one, share per mode)."""
    d, nearest = torch.cdist(x, mode_centres()).min(1)
    return d.mean().item(), (d < 3 * SPREAD).float().mean().item(), torch.bincount(nearest, minlength=MODES) / len(x)


def test_one_step_mean_flow_fits_a_mixture_that_one_step_flow_matching_cannot():
    mean_flow, flow_matching = train_toy(fm_fraction=0.5), train_toy(fm_fraction=1.0)
    torch.manual_seed(1)
    z = torch.randn(2000, 2)
    mf_dist, mf_hit, mf_share = mode_stats(sample(mean_flow, z, steps=1))
    fm_dist, fm_hit, _ = mode_stats(sample_fm(flow_matching, z, steps=1))
    fm50_dist, fm50_hit, _ = mode_stats(sample_fm(flow_matching, z, steps=50))
    print(f"\nmean flow 1 step: {mf_dist:.3f} to nearest mode, {mf_hit:.3f} within 3 sd; "
          f"flow matching 1 step: {fm_dist:.3f}, {fm_hit:.3f}; 50 steps: {fm50_dist:.3f}, {fm50_hit:.3f}; "
          f"mean-flow share per mode {[round(s, 3) for s in mf_share.tolist()]}")
    assert mf_dist < 0.45 and mf_hit > 0.45
    assert mf_share.min().item() > 0.05  # every mode, not a few
    assert fm_dist > 0.8 and fm_hit < 0.1  # its one-step samples fall between the modes
    assert fm50_dist < 0.4  # ... though its velocity field is fine: many steps reach the modes


def test_samplers_follow_the_time_convention():
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=16)
    z = torch.randn(5, 2)
    ones, zeros, half = torch.ones(5), torch.zeros(5), torch.full((5,), 0.5)
    with torch.no_grad():
        one = z + net(z, ones, zeros, None)  # noise at t = 0 jumps to the data at r = 1
        mid = z + 0.5 * net(z, half, zeros, None)
        two = mid + 0.5 * net(mid, ones, half, None)
        fm = z + 0.5 * net(z, zeros, zeros, None)
        fm = fm + 0.5 * net(fm, half, half, None)
    assert torch.allclose(sample(net, z, steps=1), one)
    assert torch.allclose(sample(net, z, steps=2), two)
    assert torch.allclose(sample(net, z, times=[0.0, 0.5, 1.0]), two)
    assert torch.allclose(sample_fm(net, z, steps=2), fm)
    with pytest.raises(ValueError):
        sample(net, z, times=[0.0, 0.7, 0.5])


# --- robustness ---------------------------------------------------------------------------------


def blow_up(scale: float):
    """A net whose rows with cond[:, 0] = 1 are multiplied by ``scale``."""
    torch.manual_seed(0)
    base = MLP(dim=3, cond_dim=1, hidden=16)

    def net(x, r, t, cond):
        return base(x, r, t, cond) * (1 + scale * cond[:, :1])

    return base, net


def loss_and_grads(net, params, *args, **kw):
    for p in params:
        p.grad = None
    loss, parts = meanflow_loss(net, *args, **kw)
    loss.backward()
    return loss, parts, [p.grad.clone() for p in params]


@pytest.mark.parametrize("p", [1.0, 0.0])
def test_non_finite_rows_are_masked_and_counted(p):
    torch.manual_seed(0)
    base, net = blow_up(0.0)
    params = list(base.parameters())
    b = 8
    x1, x0, cond = torch.randn(b, 3), torch.randn(b, 3), torch.zeros(b, 1)
    t, r = torch.rand(b) * 0.5, 0.5 + torch.rand(b) * 0.5
    t[::2] = r[::2]  # half flow matching, half mean flow
    bad = x1.clone()
    bad[0, 1], bad[3, 0] = float("inf"), float("nan")
    loss, parts, grads = loss_and_grads(net, params, bad, cond, noise=x0, times=(t, r), adaptive_p=p)
    assert torch.isfinite(loss) and parts["masked"].item() == 2
    assert all(torch.isfinite(g).all() for g in grads)
    good = torch.tensor([i not in (0, 3) for i in range(b)])
    ref, _, ref_grads = loss_and_grads(net, params, x1[good], cond[good], noise=x0[good], times=(t[good], r[good]), adaptive_p=p)
    assert abs(loss.item() - ref.item()) < 1e-6  # the other rows count exactly as without the bad ones
    assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(grads, ref_grads))
    nan_cond = cond.clone()
    nan_cond[5, 0] = float("nan")
    loss, parts, grads = loss_and_grads(net, params, x1, nan_cond, noise=x0, times=(t, r), adaptive_p=p)
    assert torch.isfinite(loss) and parts["masked"].item() == 1 and all(torch.isfinite(g).all() for g in grads)

    # a net with huge outputs on some rows: their error overflows, those rows go, the rest stays
    base, net = blow_up(1e30)
    params = list(base.parameters())
    cond[[1, 2, 6], 0] = 1.0
    loss, parts, grads = loss_and_grads(net, params, x1, cond, noise=x0, times=(t, r), adaptive_p=p)
    assert torch.isfinite(loss) and parts["masked"].item() == 3
    assert all(torch.isfinite(g).all() for g in grads)
    keep = torch.tensor([i not in (1, 2, 6) for i in range(b)])
    ref, _, _ = loss_and_grads(net, params, x1[keep], cond[keep], noise=x0[keep], times=(t[keep], r[keep]), adaptive_p=p)
    assert abs(loss.item() - ref.item()) < 1e-6

    # every row bad: a zero loss that still backpropagates, nothing NaN
    loss, parts = meanflow_loss(net, torch.full((b, 3), float("nan")), cond, noise=x0, times=(t, r), adaptive_p=p)
    loss.backward()
    assert loss.item() == 0.0 and parts["masked"].item() == b
    assert all(torch.isfinite(v).all() for v in parts.values())


def test_nan_prediction_nan_target_and_padding():
    torch.manual_seed(0)
    base = MLP(dim=3, hidden=16)

    def grads_finite() -> bool:
        return all(torch.isfinite(p.grad).all() for p in base.parameters())

    # a prediction that is NaN (sqrt of a negative) where the first input feature is above 3
    def nan_net(x, r, t, cond):
        return base(x, r, t, cond) + 0 * torch.sqrt(3 - x[..., :1])

    x1 = torch.randn(6, 3)
    x1[2, 0] = 50.0  # x_t of row 2 is above 3 at the times below, the others are not
    loss, parts = meanflow_loss(nan_net, x1, noise=torch.zeros(6, 3), times=(torch.full((6,), 0.5), torch.full((6,), 0.9)))
    assert torch.isfinite(loss) and parts["masked"].item() == 1
    loss.backward()  # the NaN row gets a zero gradient, not 0 * nan
    assert grads_finite()

    # a target that is NaN: u is finite but has no slope in t at t = 0.5
    def kinked(x, r, t, cond):
        return base(x, r, t, cond) + torch.sqrt(torch.abs(t - 0.5))[:, None]

    base.zero_grad()
    t, r = torch.tensor([0.5, 0.2, 0.5, 0.3]), torch.tensor([0.9, 0.9, 0.5, 0.7])  # row 2: r = t, no JVP
    loss, parts = meanflow_loss(kinked, torch.randn(4, 3), times=(t, r))
    assert torch.isfinite(loss) and parts["masked"].item() == 1
    loss.backward()
    assert grads_finite()

    # r = t rows take v itself even where du/dt overflows (no 0 * inf in the target)
    def steep(x, r, t, cond):
        return base(x, r, t, cond) * torch.exp(200 * t)[:, None]

    t, r = torch.tensor([0.6, 0.6, 0.1]), torch.tensor([0.6, 0.9, 0.5])
    v = torch.randn(3, 3)
    target = meanflow_target(steep, torch.randn(3, 3), r, t, v)
    assert torch.equal(target[0], v[0]) and not torch.isfinite(target[1]).all() and torch.isfinite(target[2]).all()

    # sequences [B, T, D] with padding: padded elements (NaN here) are left out, the row is kept
    x1, x0 = torch.randn(3, 5, 3), torch.randn(3, 5, 3)
    mask = torch.ones(3, 5, 1, dtype=torch.bool)
    mask[1, 3:] = False
    padded = x1.clone()
    padded[1, 3:] = float("nan")
    times = (torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.6, 0.2, 0.8]))
    loss, parts = meanflow_loss(base, padded, noise=x0, mask=mask, times=times, adaptive_p=0.0)
    assert parts["masked"].item() == 0 and torch.isfinite(loss)
    # the padded row alone equals the same row cut to its length (the MLP works frame by frame)
    one = tuple(a[1:2] for a in times)
    cut, _ = meanflow_loss(base, x1[1:2, :3], noise=x0[1:2, :3], times=one, adaptive_p=0.0)
    row, _ = meanflow_loss(base, padded[1:2], noise=x0[1:2], mask=mask[1:2], times=one, adaptive_p=0.0)
    assert abs(row.item() - cut.item()) < 1e-6


# --- guidance and the flow-matching special case ------------------------------------------------


def test_guidance_is_folded_into_the_target():
    torch.manual_seed(0)
    net = MLP(dim=3, cond_dim=2, hidden=32).double()
    null = torch.zeros(2, dtype=torch.float64)
    b = 8
    x0, x1 = torch.randn(b, 3, dtype=torch.float64), torch.randn(b, 3, dtype=torch.float64)
    cond = torch.randn(b, 2, dtype=torch.float64)
    t = torch.rand(b, dtype=torch.float64) * 0.5
    r = t + torch.rand(b, dtype=torch.float64) * 0.5
    r[:3] = t[:3]
    x_t, v = path(x0, x1, t)
    plain = meanflow_target(net, x_t, r, t, v, cond)
    assert torch.equal(meanflow_target(net, x_t, r, t, v, cond, cfg_scale=1.0, null_cond=null), plain)

    with torch.no_grad():
        u_null = net(x_t, t, t, null.expand_as(cond))
    away = v - u_null  # guidance pushes the velocity away from the unconditional one
    for w in (2.0, 0.5):
        shift = meanflow_target(net, x_t, r, t, v, cond, cfg_scale=w, null_cond=null) - plain
        assert torch.allclose(shift[:3], (w - 1) * away[:3], atol=1e-12)  # r = t: v~ - v exactly
        cos = F.cosine_similarity(shift[3:], (w - 1) * away[3:], dim=1)
        assert cos.min().item() > 0.9, cos  # r > t: the same direction, bent by the JVP term
    # the JVP runs along the guided velocity: finite differences on the path x + s v~
    w = 2.0
    v_tilde = w * v + (1 - w) * u_null
    h = 1e-5
    with torch.no_grad():
        dudt = (net(x_t + h * v_tilde, r, t + h, cond) - net(x_t - h * v_tilde, r, t - h, cond)) / (2 * h)
    guided_target = meanflow_target(net, x_t, r, t, v, cond, cfg_scale=w, null_cond=null)
    assert (guided_target - (v_tilde - (t - r)[:, None] * dudt)).abs().max().item() < 1e-8
    # rows not guided (their condition was the null one) keep the plain target
    guided = torch.tensor([True, False] * 4)
    mixed = meanflow_target(net, x_t, r, t, v, cond, cfg_scale=3.0, null_cond=null, guided=guided)
    assert torch.equal(mixed[~guided], plain[~guided]) and not torch.allclose(mixed[guided], plain[guided])

    # in the loss: rows dropped to the null condition are never guided
    def loss_at(w, drop):
        torch.manual_seed(5)
        return meanflow_loss(net, x1, cond, noise=x0, cfg_scale=w, null_cond=null, cond_drop=drop, adaptive_p=0.0)[0].item()

    assert loss_at(3.0, 1.0) == loss_at(1.0, 1.0)
    assert abs(loss_at(3.0, 0.0) - loss_at(1.0, 0.0)) > 1e-3
    with pytest.raises(ValueError):
        meanflow_loss(net, x1, cond, cfg_scale=2.0)


def test_fm_fraction_one_is_flow_matching():
    torch.manual_seed(0)
    base = MLP(dim=3, cond_dim=2, hidden=16)
    calls = []

    def net(x, r, t, cond):
        calls.append((r.detach().clone(), t.detach().clone()))
        return base(x, r, t, cond)

    x1, x0, cond = torch.randn(16, 3), torch.randn(16, 3), torch.randn(16, 2)
    for p in (0.0, 1.0):
        calls.clear()
        loss, parts = meanflow_loss(net, x1, cond, noise=x0, fm_fraction=1.0, adaptive_p=p)
        assert len(calls) == 1  # the training forward alone: no JVP, no null evaluation
        r, t = calls[0]
        assert torch.equal(r, t) and t.std() > 0.05
        with torch.no_grad():
            err = ((base(path(x0, x1, t)[0], t, t, cond) - (x1 - x0)) ** 2).mean(1)
        ref = err.mean() if p == 0 else (err / (err + 1e-3)).mean()
        assert abs(loss.item() - ref.item()) < 1e-6
        # the weight is a constant (stop-gradient): d loss = mean(d err / (err + c)^p)
        base.zero_grad()
        loss.backward()
        got = base.f[0].weight.grad.clone()
        base.zero_grad()
        err = ((base(path(x0, x1, t)[0], t, t, cond) - (x1 - x0)) ** 2).mean(1)
        (err / (err.detach() + 1e-3) ** p).mean().backward()
        assert torch.allclose(got, base.f[0].weight.grad, atol=1e-6)
        assert abs(parts["mse_fm"].item() - err.mean().item()) < 1e-6 and parts["mse_mf"].item() == 0

    # the same numbers as CLEAR's rectified-flow head (noise at t = 0, data at t = 1)
    head = FlowHead(dim=3, cond_dim=2, hidden=16, blocks=2)
    for prm in head.parameters():
        nn.init.normal_(prm, std=0.3)
    torch.manual_seed(7)
    ref = head.loss(x1, cond)
    torch.manual_seed(7)
    noise = torch.randn_like(x1)
    t = torch.rand(16)
    ours, _ = meanflow_loss(lambda x, r, t, c: head(x, t, c), x1, cond, noise=noise, times=(t, t), adaptive_p=0.0)
    assert abs(ours.item() - ref.item()) < 1e-6 * ref.item()
    assert ref.item() > 0.1
