"""A resumable, rank-aware epoch sampler.

Each epoch's order is a permutation seeded by (seed, epoch), split across ranks like
`DistributedSampler` (rank r takes every world_size-th index) and truncated to whole batches.
It yields `(epoch, index)` so that a dataset can seed each item from (seed, epoch, index),
independently of worker processes, and it can start at a batch inside the epoch: resuming a
run skips the batches already trained on without loading them.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    def __init__(self, length: int, batch_size: int, seed: int, epoch: int = 0,
                 start_batch: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.epoch, self.start_batch = epoch, start_batch
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select an epoch's order and the first batch to yield (the sampler runs in the main
        process, so this also steers persistent DataLoader workers)."""
        self.epoch, self.start_batch = epoch, start_batch

    @staticmethod
    def batches_per_epoch(length: int, batch_size: int, world_size: int = 1) -> int:
        return length // (batch_size * world_size)

    def indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        else:
            order = np.arange(self.length)
        n = self.batches_per_epoch(self.length, self.batch_size, self.world_size) * self.batch_size
        return order[self.rank::self.world_size][:n][self.start_batch * self.batch_size:]

    def __iter__(self):
        return iter([(self.epoch, int(i)) for i in self.indices()])

    def __len__(self) -> int:
        return len(self.indices())
