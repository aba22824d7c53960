"""Training draws whose randomness belongs to the draw, not to the process that makes it.

Augmentation (random crops and flips, a clip's frames) reads the global random generators of
whichever process decodes the image: the trainer itself with ``--workers 0``, a data-loader
worker seeded from the loader otherwise. Left alone, the same run gives other crops with
another ``--workers``, another world size under DDP, or after a ``--resume`` with other
options, so "resume is bit-identical" would hold only when nothing harmless changed.

Here every draw carries its own seed, a function of (run seed, epoch, image index) only: the
batch sampler (:class:`SeededBatches`) attaches it, and the data set wrapper
(:class:`SeededDraws`) seeds torch, ``random`` and numpy with it for that one item and puts the
process's generators back afterwards (so dropout in the trainer draws what it drew before).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_MASK = (1 << 63) - 1


def draw_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for image ``index`` in ``epoch`` of a run seeded ``seed``.

    A SplitMix64-style mix rather than a sum, so (seed, epoch, index) triples that sum alike
    (seed 1 epoch 0 and seed 0 epoch 1) still get unrelated streams.
    """
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB)
    z &= (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


class _EpochBatches(Protocol):
    epoch: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[list[int]]: ...


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """``batches``' index lists, each index paired with its draw seed for the current epoch
    (read from ``batches.epoch``, which the trainer sets before each epoch)."""

    def __init__(self, batches: _EpochBatches, seed: int) -> None:
        self.batches, self.seed = batches, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.batches.epoch
        for batch in self.batches:
            yield [(i, draw_seed(self.seed, epoch, i)) for i in batch]


class SeededDraws(Dataset):
    """``dataset[index]`` computed with every global generator seeded by the draw's seed."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):  # CPU generator back afterwards
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed & 0xFFFFFFFF)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
