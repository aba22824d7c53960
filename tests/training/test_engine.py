import math

import pytest
import torch

from adaptformer.training.engine import (
    GlobalBatchSampler,
    NonFiniteLossError,
    Schedule,
    evaluate,
    train_one_epoch,
)
from adaptformer.utils.distributed import DistInfo

from ..helpers import tiny_vit


def test_schedule_warms_up_per_step_then_cosine_to_min():
    s = Schedule(lr=1.0, min_lr=0.1, warmup_epochs=2, epochs=10)
    assert s(0) == 0 and s(1) == 0.5 and s(2) == 1.0
    assert math.isclose(s(6), 0.1 + 0.9 * 0.5)
    assert math.isclose(s(10), 0.1)


def test_global_batches_are_split_across_ranks_exactly():
    one = list(GlobalBatchSampler(20, 6, DistInfo(), seed=3))
    r0 = list(GlobalBatchSampler(20, 3, DistInfo(0, 2), seed=3))
    r1 = list(GlobalBatchSampler(20, 3, DistInfo(1, 2), seed=3))
    assert len(one) == len(r0) == len(r1) == 3  # 20 // 6, the last partial batch dropped
    assert all(a == b + c for a, b, c in zip(one, r0, r1, strict=True))
    s = GlobalBatchSampler(20, 6, DistInfo(), seed=3)
    s.set_epoch(1)
    assert list(s) != one
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(5, 4, DistInfo(0, 2), seed=0)


def test_nan_loss_stops_before_the_optimizer_step():
    model = tiny_vit(num_classes=3)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    before = model.head.weight.clone()
    loader = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1 step 0"):
        train_one_epoch(model, loader, opt, Schedule(0.1, 0, 0, 1), 0, torch.device("cpu"),
                        progress=False)  # fmt: skip
    assert torch.equal(model.head.weight, before)


def test_evaluate_is_exact_across_shards():
    """Two ranks' shards together count every image exactly once."""
    model = tiny_vit(num_classes=3)
    data = [(torch.randn(3, 32, 32), i % 3) for i in range(7)]
    full = evaluate(model, data, 3, torch.device("cpu"), DistInfo(), progress=False)
    parts = [evaluate(model, data, 3, torch.device("cpu"), DistInfo(r, 2), progress=False)
             for r in range(2)]  # fmt: skip
    assert full["val_images"] == 7 == sum(p["val_images"] for p in parts)
    correct = sum(p["val_top1"] * p["val_images"] for p in parts) / 7
    assert math.isclose(full["val_top1"], correct)


def test_the_divergence_guard_stops_a_climbing_loss_and_spares_one_hard_batch():
    from adaptformer.training.engine import DivergenceError, DivergenceGuard

    guard = DivergenceGuard("lower --blr (now 0.36)")
    for step, loss in enumerate([2.3, 2.0, 1.5, 1.2, 9.0, 1.0, 0.9]):  # one hard batch
        guard.check(loss, 0, step, 1e-3)
    assert guard.start == 2.3
    guard = DivergenceGuard("lower --blr (now 0.36)")
    with pytest.raises(DivergenceError, match=r"diverged at epoch 1 step 2: .* over 3x its start "
                                              r"2.3 .*lower --blr \(now 0.36\), or pass "
                                              r"--no-divergence-guard"):  # fmt: skip
        for step, loss in enumerate([2.3, 12.7, 23.7, 30.0]):  # seen with a linear probe
            guard.check(loss, 0, step, 0.045)
    resumed = DivergenceGuard("h", start=2.3)  # the start travels in the checkpoint
    resumed.check(0.1, 3, 0, 1e-3)
    assert resumed.start == 2.3
