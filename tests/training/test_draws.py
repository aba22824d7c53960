"""Seeded draws: augmentation is a function of (seed, epoch, index), not of the process."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader

from adaptformer.training.draws import SeededBatches, SeededDraws, draw_seed


class _Noisy:
    """A data set whose items are random draws from all three global generators."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i, torch.rand(()).item(), random.random(), np.random.rand()])


class _Batches:
    def __init__(self) -> None:
        self.epoch = 0

    def __len__(self) -> int:
        return 2

    def __iter__(self):
        yield [3, 1, 7, 0]
        yield [2, 5, 4, 6]


def _epoch(workers: int, epoch: int = 0) -> torch.Tensor:
    batches = _Batches()
    batches.epoch = epoch
    loader = DataLoader(SeededDraws(_Noisy()), batch_sampler=SeededBatches(batches, seed=5),
                        num_workers=workers)  # fmt: skip
    return torch.cat(list(loader))


def test_draws_do_not_depend_on_the_worker_count_or_the_process_state():
    torch.manual_seed(1)
    a = _epoch(0)
    torch.manual_seed(2)  # the trainer's generators are elsewhere: same draws
    random.seed(2)
    assert torch.equal(_epoch(0), a)
    assert torch.equal(_epoch(2), a)


def test_draws_change_with_the_epoch_and_the_index():
    a, b = _epoch(0, epoch=0), _epoch(0, epoch=1)
    assert torch.equal(a[:, 0], b[:, 0]) and not torch.equal(a[:, 1:], b[:, 1:])
    assert len({draw_seed(0, 0, i) for i in range(1000)}) == 1000
    assert draw_seed(1, 0, 0) != draw_seed(0, 1, 0) != draw_seed(0, 0, 1)


def test_a_draw_leaves_the_global_generators_where_they_were():
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    expected = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    SeededDraws(_Noisy())[(4, 123)]
    assert torch.equal(torch.rand(2), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
