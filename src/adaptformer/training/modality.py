"""What differs between image and video training, chosen once per run by :func:`modality_of`.

The runner, ``adaptformer eval`` and ``load_run`` ask the modality for the backbone, the data
splits, the batch collation and the evaluation, and never test ``cfg.is_video`` themselves. The
video modality lives in :mod:`adaptformer.training.video`; it imports PyAV-dependent code only
when a video run is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from ..backbones.create import pretrained_backbone
from ..data import DataConfig, DataSplits, build_datasets
from ..data.preprocess import model_stats
from ..utils.distributed import DistInfo
from .config import TrainConfig
from .engine import evaluate


class Modality(Protocol):
    """The parts of a run that depend on the kind of input."""

    def build_backbone(self, cfg: TrainConfig) -> nn.Module:
        """The features-only backbone of ``cfg`` with pretrained weights."""
        ...

    def build_data(self, cfg: TrainConfig, stats: dict[str, Any]) -> Any:
        """Train / val / test splits (``DataSplits`` or ``VideoDataSplits``)."""
        ...

    def collate(self) -> Callable | None:
        """The DataLoader ``collate_fn`` of training batches (None: torch's default)."""
        ...

    def evaluate(
        self,
        model: nn.Module,
        dataset: Any,
        cfg: TrainConfig,
        device: torch.device,
        info: DistInfo,
        prefix: str,
        progress: bool,
        batch_size: int,
        workers: int,
    ) -> dict[str, Any]:
        """Exact metrics of ``dataset``, every sample counted once over all ranks."""
        ...


class ImageModality:
    def build_backbone(self, cfg: TrainConfig) -> nn.Module:
        return pretrained_backbone(cfg.model, cfg.checkpoint, cfg.img_size)

    def build_data(self, cfg: TrainConfig, stats: dict[str, Any]) -> DataSplits:
        data_cfg = DataConfig(
            **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataConfig)}
        )
        return build_datasets(data_cfg, stats["mean"], stats["std"], stats["interpolation"])

    def collate(self) -> Callable | None:
        return None

    def evaluate(self, model, dataset, cfg, device, info, prefix, progress, batch_size, workers):
        return evaluate(model, dataset, batch_size, device, info, cfg.precision, workers, prefix,
                        progress)  # fmt: skip


def modality_of(cfg: TrainConfig) -> Modality:
    """The image or the video modality of ``cfg`` (``--dataset video-list``)."""
    if cfg.is_video:
        from .video import VideoModality

        return VideoModality()
    return ImageModality()


def data_stats(model: nn.Module) -> dict[str, Any]:
    """Normalisation and resize filter from the backbone's own timm config."""
    return model_stats(model)
