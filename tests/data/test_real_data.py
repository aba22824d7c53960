"""The real shared data sets: Imagenette and CIFAR-10 (ImageFolder), Fashion-MNIST (IDX)."""

from __future__ import annotations

import collections
import gzip
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from adaptformer.data import DataConfig, build_datasets

from .synth import IMAGENET

pytestmark = pytest.mark.shared

# DataConfig(train_per_class=20, seed=7): the first two validation files, computed once.
PINNED_IMAGENETTE_VAL_SEED7 = [
    "train/English springer/n02102040_1148.jpg",
    "train/English springer/n02102040_1249.jpg",
]
IMAGENETTE_CLASSES = [
    "English springer",
    "French horn",
    "cassette player",
    "chain saw",
    "church",
    "garbage truck",
    "gas pump",
    "golf ball",
    "parachute",
    "tench",
]


def test_imagenette(imagenette_root: Path) -> None:
    cfg = DataConfig(data_root=str(imagenette_root), img_size=32)
    splits = build_datasets(cfg, **IMAGENET)
    assert splits.classes == IMAGENETTE_CLASSES
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1800, 200, 1300)
    assert splits.test_split == "val" and splits.skipped == []
    assert np.bincount(splits.val.targets).tolist() == [20] * 10
    assert not set(splits.train.ids) & set(splits.val.ids)
    x, y = next(iter(DataLoader(splits.val, batch_size=50)))
    assert x.shape == (50, 3, 32, 32) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1.0  # normalised natural images, roughly centred


def test_imagenette_few_shot_is_reproducible(imagenette_root: Path) -> None:
    cfg = DataConfig(data_root=str(imagenette_root), img_size=32, train_per_class=20, seed=7)
    a, b = build_datasets(cfg, **IMAGENET), build_datasets(cfg, **IMAGENET)
    assert np.bincount(a.train.targets).tolist() == [18] * 10
    assert np.bincount(a.val.targets).tolist() == [2] * 10
    assert a.train.ids == b.train.ids and a.val.ids == b.val.ids
    # Pinned on one machine: the same seed picks the same files everywhere.
    assert a.val.ids[:2] == PINNED_IMAGENETTE_VAL_SEED7


@pytest.fixture(scope="module")
def cifar10_sample(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 20 images per class and split of the CIFAR-10 tar (all 60,000 is too slow)."""
    tar = shared_dir / "data" / "cifar10.tar"
    if not tar.exists():
        pytest.skip(f"needs {tar}")
    dest = tmp_path_factory.mktemp("cifar10")
    taken: collections.Counter = collections.Counter()
    members = []
    with tarfile.open(tar) as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and taken[parts[1], parts[2]] < 20:
                taken[parts[1], parts[2]] += 1
                members.append(m)
        tf.extractall(dest, members=members, filter="data")
    return dest / "cifar10"


def test_cifar10_sample_as_imagefolder(cifar10_sample: Path) -> None:
    splits = build_datasets(DataConfig(data_root=str(cifar10_sample), img_size=32), **IMAGENET)
    assert splits.classes[:3] == ["airplane", "automobile", "bird"]
    assert splits.test_split == "test"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (180, 20, 200)
    x, _ = splits.test[0]
    assert x.shape == (3, 32, 32)


def test_fashionmnist_gz_read_directly(shared_dir: Path) -> None:
    """The shared copy holds only .gz files; they are read without unpacking."""
    cfg = DataConfig(dataset="fashionmnist", data_root=str(shared_dir / "data"), img_size=28)
    splits = build_datasets(cfg, **IMAGENET)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert np.bincount(splits.test.targets).tolist() == [1000] * 10
    assert np.bincount(splits.val.targets).tolist() == [600] * 10
    # The known Fashion-MNIST statistics (README): mean pixel 72.94 train / 73.15 test.
    assert float(splits.train.pool.source.images.mean()) == pytest.approx(72.94, abs=0.01)
    assert float(splits.test.pool.source.images.mean()) == pytest.approx(73.15, abs=0.01)
    x, _ = splits.train[0]
    assert x.shape == (3, 28, 28)


def test_fashionmnist_decompressed_via_torchvision(shared_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (shared_dir / "data" / "FashionMNIST" / "raw").glob("*.gz"):
        with gzip.open(gz) as f, open(raw / gz.stem, "wb") as g:
            shutil.copyfileobj(f, g)
    cfg = DataConfig(dataset="fashionmnist", data_root=str(tmp_path), img_size=28)
    plain = build_datasets(cfg, **IMAGENET)
    cfg_gz = DataConfig(dataset="fashionmnist", data_root=str(shared_dir / "data"), img_size=28)
    packed = build_datasets(cfg_gz, **IMAGENET)
    assert np.array_equal(plain.test.pool.source.images, packed.test.pool.source.images)
    assert np.array_equal(plain.train.targets, packed.train.targets)
    assert plain.val.ids == packed.val.ids
