"""Balanced real + synthetic batches (SatSynth's downstream protocol).

With R synthetic samples per real one, every batch holds real and synthetic samples in the
ratio 1 : R (R / (1 + R) of the batch is synthetic; when that is not a whole number, the
synthetic count alternates so the running ratio stays exact). An epoch covers the real set
once; synthetic samples are drawn without replacement and reshuffled when used up.
"""
from __future__ import annotations

import math

import torch


class BalancedBatchSampler(torch.utils.data.Sampler):
    """Index batches into ConcatDataset([real, synthetic]): indices < n_real are real."""

    def __init__(self, n_real: int, n_synthetic: int, batch_size: int, ratio: float, seed: int = 0,
                 rank: int = 0, world: int = 1):
        if ratio <= 0 or n_synthetic == 0:
            raise ValueError("Balanced sampling needs a synthetic set and a ratio above 0.")
        self.n_real, self.n_synthetic, self.batch_size = n_real, n_synthetic, batch_size
        self.fraction = ratio / (1 + ratio)
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed)
        real_per_batch = max(batch_size * (1 - self.fraction), 1e-9)
        self.batches = max(1, math.ceil(n_real / real_per_batch))

    def synthetic_in_batch(self, b: int) -> int:
        f = self.batch_size * self.fraction
        return math.floor((b + 1) * f + 1e-9) - math.floor(b * f + 1e-9)

    def __len__(self) -> int:
        return len(range(self.rank, self.batches, self.world))

    def __iter__(self):
        real, synthetic = _Stream(self.n_real, self.generator), _Stream(self.n_synthetic, self.generator)
        for b in range(self.batches):   # every rank draws every batch, so the streams stay in step
            n_synthetic = self.synthetic_in_batch(b)
            batch = real.take(self.batch_size - n_synthetic) + [self.n_real + i for i in synthetic.take(n_synthetic)]
            if b % self.world == self.rank:
                yield batch


class _Stream:
    """Endless shuffled passes over range(n)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator, self.order = n, generator, []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.generator).tolist()
            out.append(self.order.pop())
        return out
