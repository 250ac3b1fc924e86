"""Residual vector quantization for neural audio codecs (SoundStream, Zeghidour et al. 2021; EnCodec,
Défossez et al. 2022): each stage quantizes what the stages before it left over. Codebooks are
k-means initialised, follow the data by EMA and restart dead entries; quantizer dropout trains one
model for several bitrates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class RVQOutput:
    """quantized [B, D, T] (straight-through to z), codes [B, n_q, T] int64, commit_loss scalar, n_q stages used."""

    quantized: Tensor
    codes: Tensor
    commit_loss: Tensor
    n_q: int


def _squared_distances(x: Tensor, codebook: Tensor) -> Tensor:
    """x [N, D], codebook [K, D] → [N, K]: ||x||² − 2 x·e + ||e||², one matmul instead of N×K×D differences."""
    return x.pow(2).sum(1, keepdim=True) - 2 * x @ codebook.t() + codebook.pow(2).sum(1)


def _nearest(x: Tensor, codebook: Tensor) -> Tensor:
    """Index of the closest codebook entry for each row of x: [N, D] → [N] int64."""
    return _squared_distances(x, codebook).argmin(1)


def _kmeans(x: Tensor, k: int, iters: int) -> tuple[Tensor, Tensor]:
    """k-means++ seeding, then `iters` Lloyd iterations: x [N, D] → centres [k, D], cluster sizes [k].

    Seeding draws each next centre with probability ∝ squared distance to the nearest centre so far,
    so well-separated clusters each get one. Once every vector is a centre (fewer vectors than k) all
    weights are equal, so the remaining draws sample the vectors uniformly with replacement.
    """
    first = torch.randint(len(x), (1,), device=x.device)
    picks = [first]
    nearest = (x - x[first]).pow(2).sum(1)
    for _ in range(k - 1):
        pick = torch.multinomial(nearest.clamp_min(1e-12), 1)
        nearest = torch.minimum(nearest, (x - x[pick]).pow(2).sum(1))
        picks.append(pick)
    centres = x[torch.cat(picks)]
    for _ in range(iters):
        codes = _nearest(x, centres)
        sizes = torch.bincount(codes, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, codes, x)
        # An empty cluster keeps its centre rather than collapsing to the origin.
        centres = torch.where(sizes[:, None] > 0, sums / sizes.clamp_min(1)[:, None], centres)
    sizes = torch.bincount(_nearest(x, centres), minlength=k).to(x.dtype)
    return centres, sizes


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(*tensors: Tensor) -> None:
    if _distributed():
        for t in tensors:
            dist.all_reduce(t)


def _broadcast_from_rank0(*tensors: Tensor) -> None:
    if _distributed():
        for t in tensors:
            dist.broadcast(t, 0)


class VectorQuantizer(nn.Module):
    """One codebook, held in buffers: the optimiser never sees it, EMA updates move it.

    Under torch.distributed the EMA statistics are summed over ranks and the k-means init and
    restarts come from rank 0, so every rank keeps the same codebook.
    """

    def __init__(self, dim: int, codebook_size: int, decay: float, kmeans_iters: int, dead_threshold: float,
                 epsilon: float):
        super().__init__()
        self.codebook_size = codebook_size
        self.decay = decay
        self.kmeans_iters = kmeans_iters
        self.dead_threshold = dead_threshold
        self.epsilon = epsilon
        self.register_buffer("codebook", torch.zeros(codebook_size, dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))  # EMA of vectors per entry
        self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))  # EMA of their sum
        self.register_buffer("initialized", torch.tensor(False))
        self._seen_initialized = False  # the buffer read once on the host, not at every training step

    def encode(self, x: Tensor) -> Tensor:
        """x [N, D] float32 → codes [N] int64."""
        return _nearest(x, self.codebook)

    def decode(self, codes: Tensor) -> Tensor:
        """codes [...] int64 → [..., D]."""
        return F.embedding(codes, self.codebook)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """N: vectors, D: dim.  x [N, D] float32 → codes [N], quantized [N, D] (no gradient).

        In training, k-means initialises the codebook on the first batch; the batch is quantized
        with the codebook as it was, then the EMA update and dead-entry restarts follow.
        """
        if self.training and not self._seen_initialized:
            if not bool(self.initialized):
                self._init(x.detach())
            self._seen_initialized = True
        codes = self.encode(x)
        quantized = self.decode(codes)
        if self.training:
            self._update(x.detach(), codes)
        return codes, quantized

    def _load_from_state_dict(self, *args, **kwargs):
        self._seen_initialized = False  # the loaded buffer decides again
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def _init(self, x: Tensor) -> None:
        centres, sizes = _kmeans(x, self.codebook_size, self.kmeans_iters)
        self.codebook.copy_(centres)
        self.cluster_size.copy_(sizes)
        self.embed_sum.copy_(centres * sizes[:, None])
        self.initialized.fill_(True)
        _broadcast_from_rank0(self.codebook, self.cluster_size, self.embed_sum)

    @torch.no_grad()
    def _update(self, x: Tensor, codes: Tensor) -> None:
        sizes = torch.zeros_like(self.cluster_size).index_add_(0, codes, torch.ones_like(codes, dtype=x.dtype))  # bincount would sync
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, x)
        _all_reduce(sizes, sums)
        self.cluster_size.lerp_(sizes, 1 - self.decay)
        self.embed_sum.lerp_(sums, 1 - self.decay)
        # Laplace smoothing keeps a rarely chosen entry from dividing by a size near zero.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        self._restart_dead(x)

    def _restart_dead(self, x: Tensor) -> None:
        """Move entries whose EMA size fell below dead_threshold onto random vectors of this batch.

        A restarted entry starts at the threshold (its embed_sum to match), so it counts as alive
        until the EMA shows that it still wins nothing. A mask instead of a branch: no host sync.
        """
        dead = (self.cluster_size < self.dead_threshold)[:, None]
        picks = x[torch.randint(len(x), (self.codebook_size,), device=x.device)]
        self.codebook.copy_(torch.where(dead, picks, self.codebook))
        self.embed_sum.copy_(torch.where(dead, picks * self.dead_threshold, self.embed_sum))
        self.cluster_size.masked_fill_(dead[:, 0], self.dead_threshold)
        _broadcast_from_rank0(self.codebook, self.embed_sum)  # each rank picked from its own batch


class ResidualVectorQuantizer(nn.Module):
    """`n_q` codebooks of `codebook_size` entries over `dim`-dimensional latents.

    decay: EMA decay of the codebook statistics.  kmeans_iters: Lloyd iterations of the
    initialisation.  dead_threshold: EMA cluster size below which an entry is restarted (about
    "vectors per batch", so it depends on B*T).  commitment: weight of commit_loss.  epsilon:
    Laplace smoothing of the cluster sizes.

    commit_loss = commitment × the mean over the used stages of mean((residual − its code)²): an
    average, not a sum, so its scale does not change with the n_q that quantizer dropout draws.
    Distances and EMA run in float32 even under autocast. Keep the buffers in float32.
    """

    def __init__(self, dim: int, n_q: int = 12, codebook_size: int = 1024, decay: float = 0.99,
                 kmeans_iters: int = 10, dead_threshold: float = 2.0, commitment: float = 1.0, epsilon: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.n_q = n_q
        self.codebook_size = codebook_size
        self.dead_threshold = dead_threshold
        self.commitment = commitment
        self.stages = nn.ModuleList(
            VectorQuantizer(dim, codebook_size, decay, kmeans_iters, dead_threshold, epsilon) for _ in range(n_q))

    def forward(self, z: Tensor, n_q: int | None = None) -> RVQOutput:
        """B: batch, D: dim, T: frames (all real: no padding mask).  z [B, D, T] → RVQOutput.

        n_q stages are used: as given, else in training a number drawn uniformly from [1, self.n_q]
        for the whole batch (quantizer dropout), else self.n_q. Stages past n_q are not run, so in
        training they are not updated either.
        """
        if n_q is None and self.training:
            n_q = self._draw_n_q(z.device)
        n_q = self._check_n_q(n_q)
        b, _, t = z.shape
        with torch.autocast(z.device.type, enabled=False):
            x = z.float()
            residual = x.transpose(1, 2).reshape(-1, self.dim)  # [B*T, D]
            quantized = torch.zeros_like(residual)
            codes, losses = [], []
            for vq in self.stages[:n_q]:
                c, q = vq(residual)
                losses.append((residual - q).pow(2).mean())  # q carries no gradient: only z is pulled
                residual = residual - q
                quantized = quantized + q
                codes.append(c)
            quantized = quantized.view(b, t, self.dim).transpose(1, 2)
            quantized = x + (quantized - x).detach()  # straight-through: d quantized / d z = identity
            commit_loss = self.commitment * torch.stack(losses).mean()
        return RVQOutput(quantized.to(z.dtype), torch.stack(codes, 1).view(b, t, n_q).transpose(1, 2),
                         commit_loss, n_q)

    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:
        """z [B, D, T] → codes [B, n_q, T] int64 (n_q defaults to self.n_q). Never updates the codebooks."""
        n_q = self._check_n_q(n_q)
        b, _, t = z.shape
        with torch.autocast(z.device.type, enabled=False):
            residual = z.float().transpose(1, 2).reshape(-1, self.dim)
            codes = []
            for vq in self.stages[:n_q]:
                c = vq.encode(residual)
                residual = residual - vq.decode(c)
                codes.append(c)
        return torch.stack(codes, 1).view(b, t, n_q).transpose(1, 2)

    def decode(self, codes: Tensor) -> Tensor:
        """codes [B, k, T] int64 of the first k ≤ n_q stages → [B, D, T] float32."""
        stage_codes = codes.unbind(1)  # a list, so its length stays a Python int when traced for export
        if not 1 <= len(stage_codes) <= self.n_q:
            raise ValueError(f"codes have {len(stage_codes)} stages, expected 1..{self.n_q}")
        quantized = torch.zeros(codes.shape[0], codes.shape[2], self.dim, device=codes.device)
        for vq, c in zip(self.stages, stage_codes):
            quantized = quantized + vq.decode(c)
        return quantized.transpose(1, 2)

    @torch.no_grad()
    def usage(self) -> dict:
        """Codebook health from the EMA cluster sizes.

        → {"perplexity": [per stage], "alive": [per stage: fraction of entries with EMA size ≥
        dead_threshold], "mean_perplexity": float, "alive_fraction": over all entries, "dead": count}.
        Perplexity is exp(entropy) of the size distribution: codebook_size when all entries are used
        equally, 1 when one entry takes everything (or the stage has not been trained yet).
        """
        sizes = torch.stack([vq.cluster_size.float() for vq in self.stages])  # [n_q, K]
        p = sizes / sizes.sum(1, keepdim=True).clamp_min(1e-12)
        perplexity = torch.special.entr(p).sum(1).exp()
        alive = sizes >= self.dead_threshold
        return {
            "perplexity": perplexity.tolist(),
            "alive": alive.float().mean(1).tolist(),
            "mean_perplexity": perplexity.mean().item(),
            "alive_fraction": alive.float().mean().item(),
            "dead": int((~alive).sum()),
        }

    @staticmethod
    def bitrate(frame_rate: float, n_q: int, codebook_size: int) -> float:
        """Bits per second: each frame sends n_q codes of log2(codebook_size) bits."""
        return frame_rate * n_q * math.log2(codebook_size)

    def _draw_n_q(self, device: torch.device) -> int:
        n_q = torch.randint(1, self.n_q + 1, (1,))
        if _distributed():  # every rank must run the same stages, or the EMA all-reduces would not pair up
            n_q = n_q.to(device)
            dist.broadcast(n_q, 0)
        return int(n_q)

    def _check_n_q(self, n_q: int | None) -> int:
        n_q = self.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q={n_q}, expected 1..{self.n_q}")
        return n_q
