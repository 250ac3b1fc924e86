"""The RNN-T loss ("Sequence Transduction with Recurrent Neural Networks", Graves, 2012) in plain
torch, and its pruned form ("Pruned RNN-T for fast, memory-efficient ASR training", Kuang et al.,
2022): a cheap factored joiner finds, per frame, the ``prune_range`` labels that hold the
alignment's mass, and the full joiner runs only there.

Two pieces keep it fast and small. The (B, T, U+1, V) logits are reduced at once to the two
log-probabilities a lattice node needs (blank, next label), in chunks, with the gradient written
straight from the softmax in backward; nothing of size V is kept in float32. The lattice (B, T, U+1)
runs in log space along anti-diagonals (t + u = n: every node of a diagonal depends only on the
previous one), forward (alpha) and backward (beta) without autograd; the gradient is each
transition's posterior, exp(alpha + log-prob + beta - log P).

Shapes: B batch, T frames, U labels (the longest; U+1 lattice columns), V vocabulary.
"""

from __future__ import annotations

import torch

from speechkit.errors import SpeechkitError

NEG_INF = float("-inf")
# logits elements converted to float32 at once: cache-sized on a CPU, few kernel launches on a GPU
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _BlankLabelLogProbs(torch.autograd.Function):
    """logits (B, T, W, V) any float dtype, labels (B, T, L) int64 in [0, V), L ≤ W →
    blank (B, T, W) and label (B, T, L) log-softmax values in float32 (float64 for float64 logits).
    Saves the logits as they are (no float32 copy) and the (B, T, W) normalisers."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, blank: int):
        b, t, w, v = logits.shape
        n_lab = labels.shape[2]
        acc = _accum_dtype(logits.dtype)
        flat, lab = logits.reshape(b * t, w, v), labels.reshape(b * t, n_lab)
        log_z = torch.empty(b * t, w, dtype=acc, device=logits.device)
        blank_lp = torch.empty(b * t, w, dtype=acc, device=logits.device)
        label_lp = torch.empty(b * t, n_lab, dtype=acc, device=logits.device)
        for s, e in _row_chunks(b * t, w * v, logits.device):
            x = flat[s:e].to(acc)
            z = torch.logsumexp(x, dim=-1)
            log_z[s:e] = z
            blank_lp[s:e] = x[..., blank] - z
            label_lp[s:e] = x[:, :n_lab].gather(-1, lab[s:e, :, None]).squeeze(-1) - z[:, :n_lab]
        ctx.save_for_backward(logits, lab, log_z)
        ctx.blank = blank
        return blank_lp.view(b, t, w), label_lp.view(b, t, n_lab)

    @staticmethod
    def backward(ctx, g_blank, g_label):
        logits, lab, log_z = ctx.saved_tensors
        b, t, w, v = logits.shape
        n_lab = lab.shape[1]
        acc = log_z.dtype
        g_blank = torch.zeros(b * t, w, dtype=acc, device=logits.device) if g_blank is None else g_blank.reshape(b * t, w).to(acc)
        g_label = torch.zeros(b * t, n_lab, dtype=acc, device=logits.device) if g_label is None else g_label.reshape(b * t, n_lab).to(acc)
        flat = logits.reshape(b * t, w, v)
        grad = torch.empty_like(flat)
        same = grad.dtype == acc
        for s, e in _row_chunks(b * t, w * v, logits.device):
            gb, gl = g_blank[s:e], g_label[s:e]
            total = gb.clone()
            total[:, :n_lab] += gl
            # d(x_k - logZ)/dx_j = [j == k] - softmax_j; in place, in the output where it is float32
            g = torch.sub(flat[s:e].to(acc), log_z[s:e, :, None], out=grad[s:e] if same else None)
            g.exp_().mul_(total.neg_()[..., None])
            g[..., ctx.blank] += gb
            g[:, :n_lab].scatter_add_(-1, lab[s:e, :, None], gl[..., None])
            if not same:
                grad[s:e] = g
        return grad.view(b, t, w, v), None, None


def _row_chunks(rows: int, row_elements: int, device: torch.device):
    step = max(1, CHUNK_ELEMENTS.get(device.type, 1 << 24) // max(1, row_elements))
    return ((s, min(s + step, rows)) for s in range(0, rows, step))


def blank_label_log_probs(logits: torch.Tensor, targets: torch.Tensor, blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T, W, V), targets (B, L) or per frame (B, T, L), L ≤ W, ids in [0, V) →
    log P(blank) at every node (B, T, W) and log P(targets[u]) at node u < L (B, T, L), float32
    (float64 for float64 logits) however the logits are stored (bf16 under autocast)."""
    if logits.dim() != 4:
        raise SpeechkitError(f"transducer logits must be (B, T, U+1, V), got shape {tuple(logits.shape)}")
    b, t = logits.shape[:2]
    labels = targets[:, None, :].expand(b, t, -1) if targets.dim() == 2 else targets
    return _BlankLabelLogProbs.apply(logits, labels.contiguous(), blank)


def _skew(x: torch.Tensor) -> torch.Tensor:
    """(B, T, W) → diagonal-major (T + W - 1, B, W): out[n, :, u] = x[:, n - u, u], -inf off the lattice."""
    b, t, w = x.shape
    rows = torch.arange(t + w - 1, device=x.device)[:, None] - torch.arange(w, device=x.device)[None, :]
    out = x.gather(1, rows.clamp(0, t - 1).expand(b, -1, -1)).masked_fill(~((rows >= 0) & (rows < t)), NEG_INF)
    return out.transpose(0, 1).contiguous()


def _unskew(s: torch.Tensor, t: int) -> torch.Tensor:
    """The inverse of ``_skew``: (T + W - 1, B, W) → (B, T, W)."""
    _, b, w = s.shape
    diag = torch.arange(t, device=s.device)[:, None] + torch.arange(w, device=s.device)[None, :]
    return s.transpose(0, 1).gather(1, diag.expand(b, -1, -1))


@torch.no_grad()
def _lattice(blank_lp: torch.Tensor, label_lp: torch.Tensor, t_lens: torch.Tensor, u_lens: torch.Tensor):
    """blank (B, T, U+1), label (B, T, U) log-probs, valid frames and labels (B,) →
    log P (B,), blank and label transition posteriors (B, T, U+1), (B, T, U)."""
    b, t, w = blank_lp.shape
    dev, dtype = blank_lp.device, blank_lp.dtype
    t_lens, u_lens = t_lens.to(dev), u_lens.to(dev)
    ti = torch.arange(t, device=dev)[None, :, None]
    ui = torch.arange(w, device=dev)[None, None, :]
    tl, ul = t_lens[:, None, None], u_lens[:, None, None]
    # transitions inside each utterance's lattice; the final blank out of (T_b - 1, U_b) is apart
    blank_in = blank_lp.masked_fill(~((ti + 1 < tl) & (ui <= ul)), NEG_INF)
    label_in = torch.nn.functional.pad(label_lp, (0, 1), value=NEG_INF).masked_fill(~((ti < tl) & (ui < ul)), NEG_INF)
    rows, last_t = torch.arange(b, device=dev), (t_lens - 1).clamp(min=0)
    final = blank_lp[rows, last_t, u_lens]
    bs, ls = _skew(blank_in), _skew(label_in)  # (N, B, W), N = T + W - 1 diagonals
    n_diag = t + w - 1
    tmp = torch.empty(b, w - 1, dtype=dtype, device=dev)

    alpha = torch.full((n_diag, b, w), NEG_INF, dtype=dtype, device=dev)
    alpha[0, :, 0] = 0.0
    for n in range(1, n_diag):  # (t, u) from (t-1, u) by a blank and from (t, u-1) by a label
        prev, cur = alpha[n - 1], alpha[n]
        torch.add(prev, bs[n - 1], out=cur)
        torch.add(prev[:, :-1], ls[n - 1, :, :-1], out=tmp)
        torch.logaddexp(cur[:, 1:], tmp, out=cur[:, 1:])
    end_diag = last_t + u_lens
    log_p = alpha[end_diag, rows, u_lens] + final

    start = torch.full((n_diag, b, w), NEG_INF, dtype=dtype, device=dev)
    start[end_diag, rows, u_lens] = final
    beta = torch.full((n_diag + 1, b, w), NEG_INF, dtype=dtype, device=dev)
    for n in range(n_diag - 1, -1, -1):
        nxt, cur = beta[n + 1], beta[n]
        torch.add(bs[n], nxt, out=cur)
        torch.logaddexp(cur, start[n], out=cur)
        torch.add(ls[n, :, :-1], nxt[:, 1:], out=tmp)
        torch.logaddexp(cur[:, :-1], tmp, out=cur[:, :-1])

    ok = torch.isfinite(log_p)
    norm = torch.where(ok, log_p, 0.0)[None, :, None]
    g_blank = _unskew(torch.exp(alpha + bs + beta[1:] - norm), t)
    g_blank[rows, last_t, u_lens] += 1.0  # every path ends with that blank
    g_label = torch.exp(alpha[..., :-1] + ls[..., :-1] + beta[1:, :, 1:] - norm)
    g_label = _unskew(torch.nn.functional.pad(g_label, (0, 1)), t)[..., :-1]
    ok = ok[:, None, None]
    return log_p, torch.where(ok, g_blank, 0.0), torch.where(ok, g_label, 0.0)


class _RnntLattice(torch.autograd.Function):
    """(blank, label log-probs, lengths) → -log P per utterance (B,) and, not differentiable,
    each node's occupancy (B, T, U+1) (the posterior of passing through it)."""

    @staticmethod
    def forward(ctx, blank_lp, label_lp, t_lens, u_lens):
        log_p, g_blank, g_label = _lattice(blank_lp, label_lp, t_lens, u_lens)
        ctx.save_for_backward(g_blank, g_label)
        occupancy = g_blank.clone()
        occupancy[:, :, :-1] += g_label
        ctx.mark_non_differentiable(occupancy)
        return -log_p, occupancy

    @staticmethod
    def backward(ctx, grad_nll, _):
        g_blank, g_label = ctx.saved_tensors
        scale = -grad_nll[:, None, None].to(g_blank.dtype)
        return g_blank * scale, g_label * scale, None, None


def _reduce(nll: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        return nll.mean()
    raise SpeechkitError(f"reduction '{reduction}' is not one of none, sum, mean")


def _check_lattice(blank_lp: torch.Tensor, label_lp: torch.Tensor) -> None:
    if blank_lp.dim() != 3 or label_lp.shape != (*blank_lp.shape[:2], blank_lp.shape[2] - 1):
        raise SpeechkitError(f"blank log-probs (B, T, U+1) and label log-probs (B, T, U) expected, got "
                             f"{tuple(blank_lp.shape)} and {tuple(label_lp.shape)}")


def rnnt_loss_from_log_probs(blank_lp: torch.Tensor, label_lp: torch.Tensor, logit_lens: torch.Tensor,
                             target_lens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """blank_lp (B, T, U+1), label_lp (B, T, U): log P(blank), log P(next label) at each node;
    logit_lens (B,) valid frames (≥ 1), target_lens (B,) valid labels → -log P(labels), reduced
    over the batch (``none``: (B,)). -inf entries are allowed (pruned lattices)."""
    _check_lattice(blank_lp, label_lp)
    nll, _ = _RnntLattice.apply(blank_lp, label_lp, logit_lens, target_lens)
    return _reduce(nll, reduction)


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lens: torch.Tensor, target_lens: torch.Tensor,
              blank: int = 0, reduction: str = "mean") -> torch.Tensor:
    """logits (B, T, U+1, V) of the joiner (any float dtype; the loss runs in float32), targets
    (B, U) label ids (padding must be valid ids, e.g. the blank), logit_lens (B,) valid frames (≥ 1),
    target_lens (B,) valid labels → -log P(targets), reduced over the batch (``none``: (B,))."""
    if targets.shape[1] + 1 != logits.shape[2]:
        raise SpeechkitError(f"logits have {logits.shape[2]} label positions, targets {targets.shape[1]} labels (U+1 expected)")
    blank_lp, label_lp = blank_label_log_probs(logits, targets, blank)
    return rnnt_loss_from_log_probs(blank_lp, label_lp, logit_lens, target_lens, reduction)


# -- the pruned loss ------------------------------------------------------------------------------


def simple_log_probs(am: torch.Tensor, lm: torch.Tensor, targets: torch.Tensor, blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The factored ("simple") joiner logits[t, u] = am[t] + lm[u], normalised without building
    (B, T, U+1, V): am (B, T, V), lm (B, U+1, V), targets (B, U) → blank (B, T, U+1) and label
    (B, T, U) log-probs in float32."""
    with torch.autocast(am.device.type, enabled=False):
        am, lm = am.float(), lm.float()
        am_max = am.max(dim=-1, keepdim=True).values.detach()
        lm_max = lm.max(dim=-1, keepdim=True).values.detach()
        # log sum_v exp(am[t, v] + lm[u, v]) as one matrix product of the shifted exponentials
        prod = torch.bmm(torch.exp(am - am_max), torch.exp(lm - lm_max).transpose(1, 2))
        log_z = torch.log(prod.clamp(min=torch.finfo(prod.dtype).tiny)) + am_max + lm_max.transpose(1, 2)
        blank_lp = am[..., blank, None] + lm[..., blank][:, None, :] - log_z
        u = targets.shape[1]
        am_y = am.gather(2, targets[:, None, :].expand(-1, am.shape[1], -1))  # (B, T, U)
        lm_y = lm[:, :u].gather(2, targets[..., None]).squeeze(-1)  # (B, U)
        return blank_lp, am_y + lm_y[:, None, :] - log_z[..., :u]


@torch.no_grad()
def prune_ranges(occupancy: torch.Tensor, logit_lens: torch.Tensor, target_lens: torch.Tensor, prune_range: int) -> torch.Tensor:
    """occupancy (B, T, U+1) of the simple lattice → the first of the ``R = min(prune_range, U+1)``
    label positions kept at each frame (B, T) int64. Each frame takes the window with the most
    occupancy, then the windows are made a connected lattice: they start at 0, never move back,
    move by at most R - 1 per frame and cover U_b on the last frame."""
    if prune_range < 2:
        raise SpeechkitError(f"prune_range must be at least 2, got {prune_range}")
    b, t, w = occupancy.shape
    r = min(prune_range, w)
    dev = occupancy.device
    csum = torch.nn.functional.pad(occupancy.float().cumsum(-1), (1, 0))
    starts = (csum[..., r:] - csum[..., : w - r + 1]).argmax(-1)  # (B, T)
    last = (target_lens.to(dev) + 1 - r).clamp(min=0)[:, None]  # the latest start that still holds U_b
    frames = torch.arange(t, device=dev)[None, :]
    at_end = frames >= logit_lens.to(dev)[:, None] - 1
    starts = torch.where(at_end, last, torch.minimum(starts, last))
    starts[:, 0] = 0
    starts = starts.cummax(dim=1).values
    # moving by at most R - 1 a frame ⇔ s[t] - (R-1) t never increases: lower what the start
    # cannot reach, then put the end back and raise what the end cannot be reached from
    step = (r - 1) * frames
    starts = (starts - step).cummin(dim=1).values + step
    starts = torch.where(at_end, last, starts)
    return (starts - step).flip(1).cummax(dim=1).values.flip(1) + step


def pruned_rnnt_loss(joiner, enc: torch.Tensor, dec: torch.Tensor, am: torch.Tensor, lm: torch.Tensor,
                     targets: torch.Tensor, logit_lens: torch.Tensor, target_lens: torch.Tensor, prune_range: int,
                     blank: int = 0, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned loss and the simple loss that placed the ranges, each reduced over the batch.

    joiner(enc (B, T, 1, J), dec (B, T, R, J)) → logits (B, T, R, V); enc (B, T, J) and dec
    (B, U+1, J) its (projected) inputs; am (B, T, V), lm (B, U+1, V) the factored joiner's two
    halves; targets (B, U) (padding must be valid ids), lengths (B,). With ``prune_range`` ≥ U+1
    the pruned loss is the full loss; below, it is the loss over fewer paths, so never smaller.
    """
    b, _, u = *enc.shape[:2], targets.shape[1]
    blank_s, label_s = simple_log_probs(am, lm, targets, blank)
    _check_lattice(blank_s, label_s)
    simple, occupancy = _RnntLattice.apply(blank_s, label_s, logit_lens, target_lens)
    starts = prune_ranges(occupancy, logit_lens, target_lens, prune_range)
    pos = starts[..., None] + torch.arange(min(prune_range, u + 1), device=starts.device)  # (B, T, R)
    dec_pr = dec.gather(1, pos.reshape(b, -1, 1).expand(-1, -1, dec.shape[-1])).view(*pos.shape, -1)
    labels = torch.nn.functional.pad(targets, (0, 1), value=blank).gather(1, pos.reshape(b, -1)).view(pos.shape)
    blank_pr, label_pr = blank_label_log_probs(joiner(enc[:, :, None], dec_pr), labels, blank)
    full = blank_pr.new_full((*pos.shape[:2], u + 1), NEG_INF)  # -inf off the kept positions
    blank_lp, label_lp = full.scatter(2, pos, blank_pr), full.scatter(2, pos, label_pr)[..., :u]
    pruned = rnnt_loss_from_log_probs(blank_lp, label_lp, logit_lens, target_lens, "none")
    return _reduce(pruned, reduction), _reduce(simple, reduction)
