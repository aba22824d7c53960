"""Accuracy counts and mAP against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from adaptformer.data import (
    accuracy_from_counts,
    average_precision,
    mean_average_precision,
    per_class_average_precision,
    topk_correct,
)


def test_topk_counts_by_hand() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.7, 0.2],  # target 1: top-1 hit
            [0.5, 0.3, 0.2],  # target 1: top-2 hit
            [0.6, 0.3, 0.1],  # target 2: only in top-3
            [0.2, 0.2, 0.6],  # target 2: top-1 hit
        ]
    )
    targets = torch.tensor([1, 1, 2, 2])
    assert topk_correct(logits, targets, (1, 2, 3)).tolist() == [2, 3, 4]
    # k beyond the number of classes counts as C: everything is correct.
    assert topk_correct(logits, targets, (5,)).tolist() == [4]
    assert topk_correct(logits, targets, (1,)).dtype == torch.int64


def test_counts_sum_exactly_across_shards() -> None:
    """What DDP does: count per rank, add counts, divide once; shard sizes differ."""
    logits, targets = torch.randn(37, 6), torch.randint(0, 6, (37,))
    whole = topk_correct(logits, targets, (1, 5))
    parts = [topk_correct(logits[a:b], targets[a:b], (1, 5)) for a, b in ((0, 5), (5, 37))]
    assert torch.equal(sum(parts), whole)
    assert accuracy_from_counts(whole, 37) == [100.0 * int(c) / 37 for c in whole]


def test_accuracy_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        accuracy_from_counts(torch.tensor([0]), 0)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"must be \[N, C\] and \[N\]"):
        topk_correct(torch.randn(3, 4), torch.tensor([0, 1]))


def test_average_precision_by_hand() -> None:
    # Ranked: + - + - + ; precision at the positives 1/1, 2/3, 3/5.
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = torch.tensor([1, 0, 1, 0, 1])
    assert average_precision(scores, targets) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # The order of the input rows does not matter, only the scores.
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert average_precision(scores[perm], targets[perm]) == pytest.approx(0.7555555555)


def test_tied_scores_form_one_threshold() -> None:
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5
    assert average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5


def test_mean_average_precision_skips_classes_without_positives() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.3],
            [0.8, 0.9, 0.2],
            [0.1, 0.2, 0.1],
            [0.4, 0.3, 0.0],
        ]
    )
    targets = torch.tensor(
        [
            [1, 0, 0],
            [0, 1, 0],
            [1, 1, 0],
            [0, 0, 0],
        ]
    )
    # class 0: ranking 0.9(+) 0.8(-) 0.4(-) 0.1(+) -> (1/1 + 2/4) / 2 = 0.75
    # class 1: ranking 0.9(+) 0.3(-) 0.2(+) 0.1(-) -> (1/1 + 2/3) / 2 = 5/6
    # class 2: no positive -> NaN, left out of the mean
    ap = per_class_average_precision(scores, targets)
    assert ap[:2].tolist() == pytest.approx([0.75, 5 / 6])
    assert math.isnan(ap[2])
    assert mean_average_precision(scores, targets) == pytest.approx((0.75 + 5 / 6) / 2)


def test_perfect_ranking_has_map_one() -> None:
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]])
    assert mean_average_precision(targets.float() + 0.1, targets) == 1.0


def test_matches_scikit_learn_on_random_data() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    scores = torch.randn(200, 5).round(decimals=1)  # rounding makes ties
    targets = (torch.rand(200, 5) < 0.3).long()
    ours = per_class_average_precision(scores, targets)
    for c in range(5):
        ref = metrics.average_precision_score(targets[:, c].numpy(), scores[:, c].numpy())
        assert ours[c].item() == pytest.approx(ref, abs=1e-12)


def test_map_needs_a_positive() -> None:
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(torch.rand(3, 2), torch.zeros(3, 2))
