"""Seeded few-shot subsets and stratified validation splits, as pure functions on indices.

Order: the few-shot subset is drawn first, then validation is carved from it, stratified by
class. So ``train_per_class=50, val_fraction=0.1`` gives 45 training and 5 validation images
per class: the validation split is the same size relative to what the model trains on, and the
test set is never used for model selection.

Selection is by a keyed hash of each item's identity (its path below the data root, or its
index in an array data set), not by ``rng.permutation(len(pool))``. The result is therefore the
same on every machine and platform, does not depend on the pool's size, and stays put when an
unrelated file is added, removed or skipped as unreadable.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_log = logging.getLogger(__name__)


def relative_id(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """A file's identity for seeded selection: its POSIX path below the data root.

    Relative, so the same files give the same subset wherever the data set is stored.
    """
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def seeded_order(ids: Sequence[str], seed: int) -> np.ndarray:
    """Positions of ``ids`` sorted by a seed-keyed BLAKE2b hash: a portable seeded shuffle.

    Args:
        ids: one stable identity per item.
        seed: the shuffle's seed; any integer.
    """
    key = str(seed).encode()
    hashes = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=key).digest(), "big")
            for i in ids
        ),
        dtype=np.uint64,
        count=len(ids),
    )
    return np.argsort(hashes, kind="stable")


def _rank_in_class(order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each item, how many items of its class come before it in ``order``."""
    n = len(labels)
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    by_class = np.lexsort((position, labels))
    sorted_labels = labels[by_class]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, sizes)
    return rank


def few_shot(labels: np.ndarray, ids: Sequence[str], per_class: int, seed: int) -> np.ndarray:
    """The first ``per_class`` items of each class in the seeded order, sorted by position.

    A class with fewer items keeps all of them, with a warning.

    Args:
        labels: class index per item.
        ids: stable identity per item (see :func:`relative_id`).
        per_class: images to keep per class.
        seed: seed of the order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rank = _rank_in_class(seeded_order(ids, seed), labels)
    classes, counts = np.unique(labels, return_counts=True)
    short = [f"{c} ({n})" for c, n in zip(classes, counts, strict=True) if n < per_class]
    if short:
        _log.warning(
            "train_per_class=%d: %d class(es) have fewer images and keep all of them: %s",
            per_class,
            len(short),
            ", ".join(short[:20]) + (" ..." if len(short) > 20 else ""),
        )
    return np.flatnonzero(rank < per_class)


def _val_quota(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Validation images per class: ``fraction`` of each class, rounded by largest remainder.

    Each class gets ``floor(fraction * n_c)``, and the classes with the largest remainders
    (ties: lower class index) one more, until the total reaches ``round(fraction * N)`` (at
    least 1). Every class keeps at least one training image, so the total can fall short when
    many classes have a single image. This keeps the split deterministic and close to the
    requested fraction even for classes of two or three images (VTAB-1k's 100-class tasks),
    where per-class rounding alone would hold out nothing.
    """
    exact = counts * fraction
    cap = np.maximum(counts - 1, 0)
    quota = np.minimum(np.floor(exact).astype(np.int64), cap)
    total = min(max(1, round(fraction * counts.sum())), int(cap.sum()))
    remainder = exact - np.floor(exact)
    for c in np.lexsort((np.arange(len(counts)), -remainder)):
        if quota.sum() >= total:
            break
        if quota[c] < cap[c]:
            quota[c] += 1
    return quota


def carve_val(
    labels: np.ndarray | None,
    ids: Sequence[str],
    fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a training pool into train and validation positions, stratified by class.

    The validation images of a class are the last ones of that class in the seeded order, so
    after :func:`few_shot` (which keeps the first N) they are drawn from the few-shot subset.

    Args:
        labels: class index per item, or None to split without stratification (multi-label).
        ids: stable identity per item.
        fraction: share of each class held out, in [0, 1).
        seed: seed of the order (use the same as for :func:`few_shot`).

    Returns:
        ``(train, val)`` positions into the pool, each sorted.
    """
    n = len(ids)
    if fraction <= 0 or n == 0:
        return np.arange(n), np.arange(0)
    labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} items")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = _val_quota(counts, fraction)
    if quota.sum() == 0:
        raise ValueError(
            f"val_fraction={fraction} leaves no validation image: every class of the {n}-image "
            "training pool has a single image; add images, raise train_per_class, or set "
            "val_fraction=0"
        )
    rank = _rank_in_class(seeded_order(ids, seed), labels)
    is_val = rank >= (counts - quota)[inverse]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
