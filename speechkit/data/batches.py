"""Padded ASR batches from a feature dump, made without stalling a GPU: the frames either stay
memory-mapped on the host (collated there, pinned, copied asynchronously) or live whole in
device memory (``resident``: 50 h of 80-dim fp16 fbank is ~2.6 GB), where a batch is one
gather. Lengths stay on the host too, so nothing in a step has to read the device.
"""

from __future__ import annotations

import numpy as np
import torch

from speechkit.data.features import FeatureDump

RESIDENT_SHARE = 0.3  # "auto" keeps a dump on the GPU when it takes at most this share of free memory


def _pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.pin_memory() if device.type == "cuda" else t


def to_device(x, device: torch.device | str):
    """A host tensor, or a batch dict's tensors (its other values stay), on ``device``; to a GPU
    through pinned memory, so the copy does not wait for the device."""
    device = torch.device(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) if torch.is_tensor(v) else v for k, v in x.items()}
    return _pinned(x, device).to(device, non_blocking=True)


class DumpBatcher:
    """Batches of a dump's utterances (by index) with their token ids."""

    def __init__(self, dump: FeatureDump, tokens: list[np.ndarray], device: torch.device, resident: str = "auto",
                 frames_per_second: float = 100.0):
        if resident not in ("auto", "on", "off"):
            raise ValueError(f"resident must be auto, on or off, not {resident!r}")
        self.dump, self.tokens, self.device, self.fps = dump, tokens, device, frames_per_second
        self.dim = dump.frames.shape[1]
        self.frames: torch.Tensor | None = None
        if resident == "on" or (resident == "auto" and device.type == "cuda"
                                and dump.frames.size * 2 <= RESIDENT_SHARE * torch.cuda.mem_get_info(device)[0]):
            self.frames = self._upload(dump.frames)
        self.offsets = torch.from_numpy(np.asarray(dump.offsets, dtype=np.int64))
        self.lengths = torch.from_numpy(np.asarray(dump.lengths, dtype=np.int64))

    @property
    def resident(self) -> bool:
        return self.frames is not None

    def _upload(self, frames: np.ndarray, block: int = 1 << 20) -> torch.Tensor:
        out = torch.empty((len(frames), self.dim), dtype=torch.float16, device=self.device)
        for at in range(0, len(frames), block):
            out[at : at + block] = torch.from_numpy(np.array(frames[at : at + block])).to(self.device)
        return out

    def batch(self, idx: list[int]) -> dict:
        """feats (B, T, F) float32 on the device, feat_lens (B,) on the host, tokens (B, U) on the
        device, token_lens (B,) on the host, seconds (audio seconds, for throughput)."""
        ids = torch.as_tensor(idx, dtype=torch.long)
        lens = self.lengths[ids]
        longest = int(lens.max()) if len(idx) else 0
        tok = [self.tokens[i] for i in idx]
        tok_lens = torch.tensor([len(t) for t in tok], dtype=torch.long)
        y = torch.zeros(len(idx), max(int(tok_lens.max()) if len(idx) else 0, 1), dtype=torch.long)
        for r, t in enumerate(tok):
            y[r, : len(t)] = torch.from_numpy(t)
        dev = self.device
        if self.frames is not None:
            off = to_device(self.offsets[ids], dev)
            lens_d = to_device(lens.clone(), dev)
            t = torch.arange(longest, device=dev)
            valid = t[None, :] < lens_d[:, None]
            rows = torch.where(valid, off[:, None] + t[None, :], 0)
            feats = (self.frames[rows] * valid[..., None]).float()
        else:
            x = torch.zeros(len(idx), longest, self.dim)
            for r, i in enumerate(idx):
                x[r, : int(lens[r])] = torch.from_numpy(self.dump.feats(i))
            feats = to_device(x, dev)
        return {"feats": feats, "feat_lens": _pinned(lens, dev), "tokens": to_device(y, dev),
                "token_lens": tok_lens, "seconds": float(lens.sum()) / self.fps}
