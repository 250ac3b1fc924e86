"""Duration-bucketing batch sampler: utterances of similar length share a batch whose padded
size (longest × count) stays under a frame budget; batch order is shuffled per epoch from a seed.

The batch list is a pure function of (lengths, seed, epoch), which is what lets a killed run
resume in the middle of an epoch with the same data order.
"""

from __future__ import annotations

import numpy as np


class DurationBatchSampler:
    def __init__(self, lengths: np.ndarray, max_frames: int, *, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, bucket_jitter: float = 0.1):
        self.lengths = np.asarray(lengths)
        self.max_frames = int(max_frames)
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.bucket_jitter = bucket_jitter

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for ``epoch`` (every rank gets the same count)."""
        rng = np.random.default_rng([self.seed, epoch])
        keys = self.lengths.astype(np.float64)
        if self.shuffle:  # jitter the sort key so batch composition changes between epochs
            keys = keys * (1.0 + self.bucket_jitter * rng.random(len(keys)))
        order = np.argsort(keys, kind="stable")
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = 0
        for i in order.tolist():
            n = int(self.lengths[i])
            if cur and max(longest, n) * (len(cur) + 1) > self.max_frames:
                batches.append(cur)
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, n)
        if cur:
            batches.append(cur)
        if self.shuffle:
            rng.shuffle(batches)
        if 0 < len(batches) < self.world_size:  # too few to share: repeat so every rank steps alike
            batches = [batches[i % len(batches)] for i in range(self.world_size)]
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank : usable : self.world_size]
