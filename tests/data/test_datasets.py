"""Every data set format on tiny synthetic copies of its real layout; layout errors."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from adaptformer.data import DataConfig, DataSplits, build_datasets

from .synth import (
    FLAT,
    IMAGENET,
    colour,
    make_cifar,
    make_fashion,
    make_flowers,
    make_food101,
    make_imagefolder,
    make_mnist5k,
    make_multilabel,
    make_svhn,
    make_vtab,
    write_image,
)

needs_scipy = pytest.mark.skipif(
    importlib.util.find_spec("scipy") is None,
    reason="svhn and flowers102 store labels in .mat files that torchvision reads with scipy, "
    "which is not installed (add scipy to the project's dependencies)",
)


def _build(dataset: str, root: Path | None, **kwargs) -> DataSplits:
    cfg = DataConfig(
        dataset=dataset, data_root=None if root is None else str(root), img_size=8, **kwargs
    )
    return build_datasets(cfg, **FLAT)


def _check_disjoint(splits: DataSplits) -> None:
    """Train and val are disjoint views of one pool; test is a different pool."""
    assert splits.train.pool is not splits.test.pool
    if splits.val is not None:
        assert splits.val.pool is splits.train.pool
        assert not set(splits.train.indices) & set(splits.val.indices)
        assert not set(splits.train.ids) & set(splits.val.ids)
    assert not set(splits.train.ids) & set(splits.test.ids)


def _check_items(splits: DataSplits) -> None:
    for ds in (splits.train, splits.val, splits.test):
        if ds is None:
            continue
        x, y = next(iter(DataLoader(ds, batch_size=len(ds))))
        assert x.shape == (len(ds), 3, 8, 8) and x.dtype == torch.float32
        if splits.multilabel:
            assert y.shape == (len(ds), splits.num_classes) and y.dtype == torch.float32
        else:
            assert y.dtype == torch.int64 and int(y.max()) < splits.num_classes


def test_imagefolder(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=10, n_test=4)
    splits = _build("imagefolder", tmp_path)
    assert splits.classes == ["cat", "dog", "eel"] and not splits.multilabel
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 12)
    assert splits.test_split == "val" and splits.skipped == []
    assert np.bincount(splits.val.targets).tolist() == [1, 1, 1]
    _check_disjoint(splits)
    _check_items(splits)


def test_imagefolder_pixels_and_labels_line_up(tmp_path: Path) -> None:
    """Each image is one colour per class: the label must be the one of the pixels."""
    make_imagefolder(tmp_path, n_train=3, n_test=2)
    mean, std = torch.tensor(IMAGENET["mean"]), torch.tensor(IMAGENET["std"])
    splits = build_datasets(
        DataConfig(data_root=str(tmp_path), img_size=8, val_fraction=0.0), **IMAGENET
    )
    for ds in (splits.train, splits.test):
        for i in range(len(ds)):
            x, y = ds[i]
            rgb = (x.mean(dim=(1, 2)) * std + mean) * 255
            assert torch.allclose(rgb, torch.tensor(colour(y), dtype=torch.float32), atol=3)


def test_imagefolder_prefers_test_over_val(tmp_path: Path, caplog) -> None:
    make_imagefolder(tmp_path, n_test=2, test_name="val")
    make_imagefolder(tmp_path, n_train=0, n_test=3, test_name="test")
    splits = _build("imagefolder", tmp_path)
    assert splits.test_split == "test" and len(splits.test) == 9
    assert "val is not used" in caplog.text
    assert len(_build("imagefolder", tmp_path, test_split="val").test) == 6


def test_imagefolder_test_with_fewer_classes_keeps_train_indices(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_test=0)
    for i in range(2):
        write_image(tmp_path / "val" / "eel" / f"{i}.jpg", 2)
    splits = _build("imagefolder", tmp_path)
    assert splits.test.targets.tolist() == [2, 2]


def test_few_shot_on_imagefolder(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=30, n_test=1)
    splits = _build("imagefolder", tmp_path, train_per_class=20, val_fraction=0.1, seed=1)
    assert np.bincount(splits.train.targets).tolist() == [18, 18, 18]
    assert np.bincount(splits.val.targets).tolist() == [2, 2, 2]
    again = _build("imagefolder", tmp_path, train_per_class=20, val_fraction=0.1, seed=1)
    assert splits.train.ids == again.train.ids and splits.val.ids == again.val.ids
    other = _build("imagefolder", tmp_path, train_per_class=20, val_fraction=0.1, seed=2)
    assert splits.train.ids != other.train.ids


def test_cifar10_pickle_batches(tmp_path: Path, skip_md5: None) -> None:
    make_cifar(tmp_path, n_per_class=5)
    splits = _build("cifar10", tmp_path)
    assert splits.classes == [f"class{i}" for i in range(10)]
    # 10% of 50 is 5: five classes (largest remainders, then lowest index) give one each.
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45, 5, 20)
    assert np.bincount(splits.val.targets, minlength=10).tolist() == [1] * 5 + [0] * 5
    _check_disjoint(splits)
    _check_items(splits)


def test_cifar100_pickle_files(tmp_path: Path, skip_md5: None) -> None:
    make_cifar(tmp_path, n_per_class=4, cifar100=True)
    splits = _build("cifar100", tmp_path, val_fraction=0.25)
    assert splits.classes == [f"fine{i}" for i in range(5)]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 10)
    _check_items(splits)


@pytest.mark.parametrize("gz", [False, True], ids=["idx", "idx.gz"])
def test_fashionmnist_raw_idx(tmp_path: Path, gz: bool) -> None:
    make_fashion(tmp_path, n_train=40, n_test=10, gz=gz)
    splits = _build("fashionmnist", tmp_path, val_fraction=0.25)
    assert splits.classes[:2] == ["T-shirt/top", "Trouser"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    x, y = splits.test[3]
    assert x.shape == (3, 8, 8) and y == 3
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey -> 3 equal channels
    assert torch.allclose(x, torch.full_like(x, (65 / 255 - 0.5) / 0.5), atol=1e-6)
    _check_disjoint(splits)


@needs_scipy
def test_svhn_mat_files(tmp_path: Path, skip_md5: None) -> None:
    make_svhn(tmp_path, n_train=30, n_test=10)
    splits = _build("svhn", tmp_path)
    assert splits.classes == [str(d) for d in range(10)]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (27, 3, 10)
    # The file's label 10 means digit 0 (its pixels hold 10 * 20 = 200 in the red channel).
    x, y = splits.test[9]
    assert y == 0 and abs(float(x[0].mean()) - (200 / 255 - 0.5) / 0.5) < 1e-5
    _check_items(splits)


def test_food101(tmp_path: Path) -> None:
    make_food101(tmp_path)
    splits = _build("food101", tmp_path, val_fraction=0.5)
    assert splits.classes == ["pizza", "ramen", "sushi"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 9, 6)
    assert splits.train.ids[0].startswith("food-101/images/")
    _check_disjoint(splits)
    _check_items(splits)


@needs_scipy
def test_flowers102_test_or_val(tmp_path: Path, skip_md5: None) -> None:
    make_flowers(tmp_path)
    splits = _build("flowers102", tmp_path, val_fraction=0.25)
    assert len(splits.classes) == 102
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 9)
    assert _build("flowers102", tmp_path, test_split="val").test_split == "val"
    _check_disjoint(splits)
    _check_items(splits)


def test_vtab1k_lists(tmp_path: Path) -> None:
    make_vtab(tmp_path, n_classes=4, n_train=12, n_test=5)
    splits = _build("vtab1k", tmp_path)
    assert splits.classes == ["0", "1", "2", "3"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (43, 5, 20)
    assert splits.train.ids[0].startswith("images/train800val200_")
    _check_disjoint(splits)
    _check_items(splits)


def _split_lists(root: Path) -> None:
    """train800.txt / val200.txt as VTAB-1k has them: the first and last lines of the 1,000."""
    lines = (root / "train800val200.txt").read_text().splitlines()
    (root / "train800.txt").write_text("\n".join(lines[:40]) + "\n")
    (root / "val200.txt").write_text("\n".join(lines[40:]) + "\n")


def test_vtab1k_tuning_phase_trains_on_train800_and_tests_on_val200(tmp_path: Path) -> None:
    make_vtab(tmp_path, n_classes=4, n_train=12, n_test=5)
    _split_lists(tmp_path)
    (tmp_path / "classes.txt").write_text("zero\none\ntwo\nthree\n")
    splits = _build("vtab1k", tmp_path, train_split="train800", test_split="val200",
                    val_fraction=0.0)  # fmt: skip
    assert (len(splits.train), splits.val, len(splits.test)) == (40, None, 8)
    assert splits.classes == ["zero", "one", "two", "three"] and splits.test_split == "val200"
    _check_disjoint(splits)


def test_vtab1k_refuses_a_test_list_that_overlaps_training(tmp_path: Path) -> None:
    make_vtab(tmp_path, n_classes=4, n_train=12, n_test=5)
    _split_lists(tmp_path)
    with pytest.raises(ValueError, match=r"8 image\(s\) of val200.txt are also in train800val200"):
        _build("vtab1k", tmp_path, test_split="val200")


def test_train_split_is_only_for_list_data_sets() -> None:
    with pytest.raises(ValueError, match="train_split applies to list data sets"):
        DataConfig(dataset="cifar10", data_root="x", train_split="train800")


def test_multilabel_lists(tmp_path: Path) -> None:
    make_multilabel(tmp_path)
    splits = _build("multilabel", tmp_path, val_fraction=0.2)
    assert splits.multilabel and splits.classes == ["cat", "dog", "eel"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 2)
    ids = splits.train.ids + splits.val.ids
    targets = dict(
        zip(ids, np.concatenate([splits.train.targets, splits.val.targets]), strict=True)
    )
    assert targets["imgs/a 1.jpg"].tolist() == [1, 0, 0]
    assert targets["imgs/a8.jpg"].tolist() == [1, 1, 1]
    assert splits.test.targets.tolist() == [[1, 0, 0], [0, 1, 1]]
    _check_disjoint(splits)
    _check_items(splits)


def test_multilabel_class_order_from_classes_txt(tmp_path: Path) -> None:
    make_multilabel(tmp_path)
    (tmp_path / "classes.txt").write_text("eel\ndog\ncat\nfox\n")
    splits = _build("multilabel", tmp_path, val_fraction=0)
    assert splits.classes == ["eel", "dog", "cat", "fox"]
    assert splits.test.targets.tolist() == [[0, 0, 1, 0], [1, 1, 0, 0]]


def test_mnist5k_from_data_root(tmp_path: Path) -> None:
    make_mnist5k(tmp_path, per_class=10)
    splits = _build("mnist5k", tmp_path, val_fraction=0.25)
    assert splits.classes == [str(d) for d in range(10)]
    # Test: the last fifth of each digit in file order (2 of 10 here, 100 of 500 for real).
    assert len(splits.test) == 20 and np.bincount(splits.test.targets).tolist() == [2] * 10
    assert splits.test.ids[:2] == ["row/8", "row/9"]
    assert (len(splits.train), len(splits.val)) == (60, 20)
    x, y = splits.test[0]
    assert torch.equal(x[0], x[2]) and y == 0
    _check_disjoint(splits)


def test_mnist5k_fetched_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptformer.backbones import registry

    make_mnist5k(tmp_path, per_class=5)
    asked = []
    monkeypatch.setattr(
        registry, "fetch", lambda name: asked.append(name) or tmp_path / "mnist_5k.csv.gz"
    )
    splits = _build("mnist5k", None)
    assert asked == ["mnist5k"] and len(splits.test) == 10


# --------------------------------------------------------------------------- layout errors


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("imagefolder", "no train/ folder"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("food101", "food-101/images"),
        ("fashionmnist", "FashionMNIST/raw"),
        ("vtab1k", "train800val200.txt and test.txt not found"),
        ("multilabel", "train.txt and test.txt not found"),
        ("mnist5k", "mnist_5k.csv.gz not found"),
    ],
)
def test_wrong_layout_says_what_is_expected(tmp_path: Path, dataset: str, expected: str) -> None:
    with pytest.raises(FileNotFoundError, match="fix --data-root") as err:
        _build(dataset, tmp_path)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; point --data-root") as err:
        _build("cifar10", tmp_path / "nope")
    assert "(or pass --download)" in str(err.value)


def test_imagefolder_pointed_at_train_itself(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"it holds cat, dog, eel"):
        _build("imagefolder", tmp_path / "train")


def test_imagefolder_test_class_unknown_to_train(tmp_path: Path) -> None:
    make_imagefolder(tmp_path)
    write_image(tmp_path / "val" / "fox" / "0.jpg", 3)
    with pytest.raises(ValueError, match="class folders that train/ lacks: fox"):
        _build("imagefolder", tmp_path)


@pytest.mark.parametrize(
    ("dataset", "split", "match"),
    [
        ("imagefolder", "holdout", "no holdout/ folder"),
        ("cifar10", "val", "choose 'test'"),
        ("vtab1k", "val200", "val200.txt not found"),
    ],
)
def test_unknown_test_split(
    tmp_path: Path, skip_md5: None, dataset: str, split: str, match: str
) -> None:
    make_imagefolder(tmp_path)
    make_cifar(tmp_path)
    make_vtab(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        _build(dataset, tmp_path, test_split=split)


def test_vtab1k_bad_lines(tmp_path: Path) -> None:
    make_vtab(tmp_path)
    (tmp_path / "test.txt").write_text("images/x.png\n")
    with pytest.raises(ValueError, match=r"test.txt:1: expected '<image path> <label>'"):
        _build("vtab1k", tmp_path)
    (tmp_path / "test.txt").write_text("images/x.png cat\n")
    with pytest.raises(ValueError, match="non-integer label"):
        _build("vtab1k", tmp_path)


def test_multilabel_rejects_few_shot_and_unknown_labels(tmp_path: Path) -> None:
    make_multilabel(tmp_path)
    with pytest.raises(ValueError, match="unset it"):
        DataConfig(dataset="multilabel", data_root=str(tmp_path), train_per_class=2)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['eel'\]"):
        _build("multilabel", tmp_path)


@pytest.mark.parametrize(
    ("dataset", "split", "make"),
    [
        ("imagefolder", "train", make_imagefolder),
        ("vtab1k", "train800val200", make_vtab),
        ("multilabel", "train", make_multilabel),
    ],
)
def test_test_split_cannot_be_the_training_split(
    tmp_path: Path, dataset: str, split: str, make
) -> None:
    make(tmp_path)
    with pytest.raises(ValueError, match="is the training split"):
        _build(dataset, tmp_path, test_split=split)


def test_splits_pickle_for_spawned_workers(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=4, n_test=1)
    splits = _build("imagefolder", tmp_path)
    copy = pickle.loads(pickle.dumps(splits.train))
    assert copy.ids == splits.train.ids
    assert copy[0][1] == splits.train[0][1]
    assert copy[0][0].shape == (3, 8, 8)


# -- links and duplicates ---------------------------------------------------------------------


def test_a_symlink_loop_does_not_multiply_the_data(tmp_path: Path) -> None:
    """``ln -s .. train/cat/loop`` made 12 files into hundreds, labelled other classes' images
    "cat" and put every validation image in training too."""
    make_imagefolder(tmp_path, n_train=6)
    (tmp_path / "train" / "cat" / "loop").symlink_to("..", target_is_directory=True)
    (tmp_path / "train" / "cat" / "self").symlink_to(".", target_is_directory=True)
    splits = _build("imagefolder", tmp_path, val_fraction=0.5)
    assert len(splits.train) + len(splits.val) == 18
    _check_disjoint(splits)
    train, val = splits.train, splits.val
    files = [train.pool.source.describe(i) for i in train.indices]
    files += [val.pool.source.describe(i) for i in val.indices]
    assert len({str(Path(f).resolve()) for f in files}) == 18


def test_a_linked_folder_inside_the_class_is_read_once(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=4)
    cat = tmp_path / "train" / "cat"
    (cat / "sub").mkdir()
    for i in range(2):
        write_image(cat / "sub" / f"extra_{i}.jpg", 0)
    (cat / "again").symlink_to("sub", target_is_directory=True)
    (cat / "same.jpg").symlink_to(cat / "cat_000.jpg")  # a file link: the same file, once
    splits = _build("imagefolder", tmp_path, val_fraction=0.5)
    assert len(splits.train) + len(splits.val) == 3 * 4 + 2
    _check_disjoint(splits)


def test_repeated_list_lines_are_used_once(tmp_path: Path) -> None:
    make_vtab(tmp_path)
    listing = tmp_path / "train800val200.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(lines + lines[:5]) + "\n")
    splits = _build("vtab1k", tmp_path, val_fraction=0.5)
    assert len(splits.train) + len(splits.val) == len([x for x in lines if x.strip()])
    _check_disjoint(splits)


def test_a_class_of_only_unreadable_images_is_an_error(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=3)
    for f in (tmp_path / "train" / "dog").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"every training image of class index\(es\) \[1\]"):
        _build("imagefolder", tmp_path)


def test_an_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=3)
    for f in (tmp_path / "train" / "dog").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no images in .*train/dog/"):
        _build("imagefolder", tmp_path)


# -- issue 24, item 8: a folder link at or above the data root, or into another split, is an error


def _link(at: Path, to: str | Path) -> None:
    at.symlink_to(to, target_is_directory=True)


LINKS = {  # where the link is (below the data root), what it points to, what the error says
    "class -> ..": ("train/evil", "..", "at the data root"),
    "class -> root's parent": ("train/evil", "../..", "above the data root"),
    "class -> /": ("train/evil", "/", "above the data root"),
    "class -> other split": ("train/evil", "../val/cat", "inside val/"),
    "class -> its own split": ("train/evil", "cat", "inside train/"),
    "nested -> other split": ("train/cat/more", "../../val/dog", "inside val/"),
    "nested -> above root": ("train/cat/up", "../../..", "above the data root"),
    "test class -> train": ("val/evil", "../train/cat", "inside train/"),
    "split -> other split": ("val", "train", "inside train/"),
    "split -> root": ("val", ".", "at the data root"),
}


@pytest.mark.parametrize("case", sorted(LINKS))
def test_folder_links_out_of_place_are_errors(tmp_path: Path, case: str) -> None:
    where, to, words = LINKS[case]
    root = tmp_path / "data"
    make_imagefolder(root, n_train=2, n_test=1)
    link = root / where
    if link.exists():  # a split replaced by a link
        shutil.rmtree(link)
    _link(link, to)
    with pytest.raises(ValueError, match=f"{words}.*no folder link may") as err:
        _build("imagefolder", root, val_fraction=0.0)
    assert str(link) in str(err.value) and "\n" not in str(err.value)


def test_a_file_link_into_another_split_is_an_error(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=2, n_test=1)
    leak = tmp_path / "train" / "cat" / "leak.jpg"
    leak.symlink_to(tmp_path / "val" / "cat" / "cat_000.jpg")
    with pytest.raises(ValueError, match=r"leak\.jpg .*inside val/"):
        _build("imagefolder", tmp_path, val_fraction=0.0)


def test_a_class_folder_linked_from_outside_the_data_root_is_read(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for i in range(2):
        write_image(store / "fox" / f"fox_{i}.jpg", 2)
        write_image(store / "fox_test" / f"fox_{i}.jpg", 2)
    root = tmp_path / "data"
    make_imagefolder(root, n_train=2, n_test=1)
    _link(root / "train" / "fox", store / "fox")
    _link(root / "val" / "fox", store / "fox_test")
    splits = _build("imagefolder", root, val_fraction=0.0)
    assert splits.classes == ["cat", "dog", "eel", "fox"] and len(splits.train) == 8


def test_a_link_into_a_named_test_split_is_an_error(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, n_train=2, n_test=1, test_name="holdout")
    _link(tmp_path / "train" / "evil", "../holdout/cat")
    with pytest.raises(ValueError, match="inside holdout/"):
        _build("imagefolder", tmp_path, val_fraction=0.0, test_split="holdout")
