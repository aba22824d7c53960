"""Few-shot subsets and validation splits: deterministic, stratified, disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from adaptformer.data.splits import carve_val, few_shot, relative_id, seeded_order

# seeded_order(["img0", ..., "img7"], seed=0), computed once; must never change.
PINNED_ORDER_SEED0 = [0, 7, 4, 6, 3, 2, 5, 1]


def _pool(n_classes: int = 4, per_class: int = 60) -> tuple[np.ndarray, list[str]]:
    labels = np.repeat(np.arange(n_classes), per_class)
    ids = [f"train/c{c}/img{i:04d}.jpg" for c in range(n_classes) for i in range(per_class)]
    return labels, ids


def test_seeded_order_is_pinned() -> None:
    """The same ids and seed give this order on every machine (a keyed BLAKE2b hash)."""
    ids = [f"img{i}" for i in range(8)]
    assert seeded_order(ids, 0).tolist() == PINNED_ORDER_SEED0
    assert seeded_order(ids, 1).tolist() != PINNED_ORDER_SEED0


def test_few_shot_takes_n_per_class_deterministically() -> None:
    labels, ids = _pool()
    a = few_shot(labels, ids, 7, seed=3)
    assert np.bincount(labels[a]).tolist() == [7, 7, 7, 7]
    assert np.array_equal(a, few_shot(labels, ids, 7, seed=3))
    assert not np.array_equal(a, few_shot(labels, ids, 7, seed=4))
    # Nested: a larger subset contains the smaller one of the same seed.
    assert set(a) <= set(few_shot(labels, ids, 20, seed=3))


def test_few_shot_ignores_pool_order_and_unrelated_files() -> None:
    labels, ids = _pool()
    chosen = {ids[i] for i in few_shot(labels, ids, 5, seed=0)}
    perm = np.random.default_rng(1).permutation(len(ids))
    assert {ids[i] for i in perm[few_shot(labels[perm], [ids[i] for i in perm], 5, 0)]} == chosen
    # Dropping an image that was not chosen (e.g. skipped as unreadable) changes nothing.
    drop = next(i for i, x in enumerate(ids) if x not in chosen)
    keep = np.array([i for i in range(len(ids)) if i != drop])
    kept_ids = [ids[i] for i in keep]
    assert {kept_ids[i] for i in few_shot(labels[keep], kept_ids, 5, 0)} == chosen


def test_short_classes_keep_everything(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.array([0] * 10 + [1] * 3)
    ids = [str(i) for i in range(13)]
    assert np.bincount(labels[few_shot(labels, ids, 5, 0)]).tolist() == [5, 3]
    assert "fewer images" in caplog.text


def test_val_from_few_shot_gives_45_plus_5_per_class() -> None:
    labels, ids = _pool(per_class=80)
    pool = few_shot(labels, ids, 50, seed=0)
    train, val = carve_val(labels[pool], [ids[i] for i in pool], 0.1, seed=0)
    assert np.bincount(labels[pool[train]]).tolist() == [45] * 4
    assert np.bincount(labels[pool[val]]).tolist() == [5] * 4
    assert not set(pool[train]) & set(pool[val])
    assert set(pool[train]) | set(pool[val]) == set(pool)


def test_val_is_deterministic_and_sorted() -> None:
    labels, ids = _pool()
    train, val = carve_val(labels, ids, 0.25, seed=5)
    again = carve_val(labels, ids, 0.25, seed=5)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.bincount(labels[val]).tolist() == [15] * 4


def test_tiny_classes_still_give_a_stratified_val() -> None:
    """VTAB-1k style: many classes of 2-3 images; per-class rounding alone would give 0."""
    labels = np.repeat(np.arange(40), [2, 3] * 20)
    ids = [str(i) for i in range(len(labels))]
    train, val = carve_val(labels, ids, 0.1, seed=0)
    assert len(val) == round(0.1 * len(labels))
    assert np.bincount(labels[val], minlength=40).max() == 1
    assert np.bincount(labels[train], minlength=40).min() >= 1  # every class still trains


def test_unstratified_split_for_multilabel() -> None:
    ids = [str(i) for i in range(20)]
    train, val = carve_val(None, ids, 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16


def test_no_val_when_fraction_is_zero() -> None:
    labels, ids = _pool()
    train, val = carve_val(labels, ids, 0.0, seed=0)
    assert len(train) == len(ids) and len(val) == 0


def test_single_image_classes_cannot_give_val() -> None:
    with pytest.raises(ValueError, match="set val_fraction=0"):
        carve_val(np.arange(5), [str(i) for i in range(5)], 0.1, seed=0)


def test_relative_id_is_location_independent(tmp_path) -> None:
    a = relative_id(tmp_path / "x" / "train" / "cat" / "1.jpg", tmp_path / "x")
    b = relative_id("/elsewhere/train/cat/1.jpg", "/elsewhere")
    assert a == b == "train/cat/1.jpg"
