"""Image data for fine-tuning: data sets by name, train/val/test splits, transforms, metrics.

Typical use by the training engine::

    cfg = DataConfig(dataset="cifar100", data_root="data/", train_per_class=None)
    stats = stats_from_timm(timm.data.resolve_data_config({}, model=model))
    splits = build_datasets(cfg, **stats)  # train / val (model selection) / test (once)

Modules: ``config`` (DataConfig), ``datasets`` (builders, build_datasets), ``splits`` (seeded
few-shot and validation selection), ``sources`` (torch Dataset views), ``safe`` (unreadable
files), ``transforms`` (the reference recipe), ``metrics`` (accuracy counts, mAP).
"""

from .config import DATASETS, DataConfig
from .datasets import DataSplits, build_datasets
from .metrics import (
    accuracy_from_counts,
    average_precision,
    mean_average_precision,
    per_class_average_precision,
    topk_correct,
)
from .safe import UnreadableImageError
from .sources import SplitDataset
from .transforms import build_eval_transform, build_train_transform, stats_from_timm

__all__ = [
    "DATASETS",
    "DataConfig",
    "DataSplits",
    "SplitDataset",
    "UnreadableImageError",
    "accuracy_from_counts",
    "average_precision",
    "build_datasets",
    "build_eval_transform",
    "build_train_transform",
    "mean_average_precision",
    "per_class_average_precision",
    "stats_from_timm",
    "topk_correct",
]
