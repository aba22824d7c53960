"""Classification metrics as pure functions on tensors, built to combine exactly across ranks.

Accuracy is returned as integer counts, not percentages: each rank counts on its own shard,
the engine sums ``[correct..., total]`` with one ``all_reduce``, and the ratio is exact
whatever the shard sizes (averaging per-rank percentages is not, and padding a shard with
duplicates, as the reference's distributed eval does, counts some images twice).
Average precision cannot be summed, so mAP is computed once from the gathered scores and
targets of all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_correct(
    logits: torch.Tensor,
    targets: torch.Tensor,
    topk: Sequence[int] = (1, 5),
) -> torch.Tensor:
    """How many targets are among the ``k`` highest logits, for each ``k``.

    Args:
        logits: ``[N, C]`` scores.
        targets: ``[N]`` class indices.
        topk: the ``k`` values; a ``k`` above ``C`` counts as ``C`` (every sample is correct).

    Returns:
        ``int64 [len(topk)]`` counts of correct samples (the total is ``N``).
    """
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must be [N, C] "
            "and [N]"
        )
    if not topk or any(k < 1 for k in topk):
        raise ValueError(f"topk={tuple(topk)} must be positive integers")
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(targets.to(pred.device).view(-1, 1))
    return torch.stack([hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk]).long()


def accuracy_from_counts(correct: torch.Tensor, total: int | torch.Tensor) -> list[float]:
    """Percentages from (summed) :func:`topk_correct` counts and the (summed) sample count."""
    total = int(total)
    if total <= 0:
        raise ValueError("accuracy of zero samples is undefined; the evaluated split is empty")
    return [100.0 * int(c) / total for c in correct]


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Non-interpolated average precision of one class: ``sum_n (R_n - R_{n-1}) P_n``.

    Precision and recall are taken at each distinct score, so tied scores form one threshold
    and the result does not depend on the order of ties (the definition used by scikit-learn's
    ``average_precision_score``). Without ties it is the mean of the precision at the rank of
    each positive.

    Args:
        scores: ``[N]`` scores, higher meaning more likely positive.
        targets: ``[N]`` 0/1 (or bool) labels.

    Returns:
        AP in [0, 1], or NaN if there is no positive.
    """
    scores = scores.detach().flatten().double().cpu()
    targets = targets.detach().flatten().double().cpu()
    if scores.shape != targets.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} differ")
    positives = targets.sum()
    if scores.numel() == 0 or positives == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, targets = scores[order], targets[order]
    ends = torch.cat(
        [torch.nonzero(scores[1:] != scores[:-1]).flatten(), torch.tensor([len(scores) - 1])]
    )
    tp = targets.cumsum(0)[ends]
    precision = tp / (ends + 1).double()
    recall = tp / positives
    step = torch.diff(recall, prepend=torch.zeros(1, dtype=recall.dtype))
    return float((step * precision).sum())


def per_class_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AP of each class (column); NaN for a class without any positive.

    Args:
        scores: ``[N, C]`` scores (logits or probabilities; only their order matters).
        targets: ``[N, C]`` multi-hot 0/1 labels.
    """
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be [N, C]"
        )
    return torch.tensor(
        [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])],
        dtype=torch.float64,
    )


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP: the mean of per-class AP over the classes with at least one positive.

    Classes without positives in the evaluated split are left out rather than counted as 0,
    so a small split does not punish the model for classes it never saw.

    Args:
        scores: ``[N, C]`` scores of all evaluated images (gathered from every rank).
        targets: ``[N, C]`` multi-hot 0/1 labels, row-aligned with ``scores``.
    """
    ap = per_class_average_precision(scores, targets)
    valid = ~torch.isnan(ap)
    if not valid.any():
        raise ValueError("mAP is undefined: no class has a positive target in this split")
    return float(ap[valid].mean())
