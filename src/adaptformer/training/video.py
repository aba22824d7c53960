"""What ``adaptformer train --dataset video-list`` needs beyond the image path: the backbone
(a VideoMAE checkpoint, or any image ViT inflated to video), the video data and multi-view eval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..backbones.create import pretrained_backbone
from ..backbones.video import _SIZE_ALIASES, VIDEO_SIZES
from ..backbones.video_weights import (
    create_video_model,
    load_videomae_checkpoint,
    video_model_from_image,
)
from ..data.video.datasets import (
    VideoDataSplits,
    VideoListDataset,
    build_video_datasets,
    collate_videos,
)
from ..utils.distributed import DistInfo, shard_indices
from ..utils.errors import UserFacingError
from .config import TrainConfig
from .video_eval import evaluate_multiview

_log = logging.getLogger(__name__)


def is_videomae_name(model: str) -> bool:
    """``--model videomae_base`` (or ``small``/``large``/``huge``, ``vit_b``...) names a
    VideoMAE-layout model, whose weights come from ``--checkpoint``."""
    name = model.removeprefix("videomae_")
    return name in VIDEO_SIZES or name in _SIZE_ALIASES


class VideoModality:
    """Video runs (``--dataset video-list``): the :class:`~adaptformer.training.modality.Modality`
    of clips, multi-view evaluation and a collation that drops undecodable clips."""

    def build_backbone(self, cfg: TrainConfig) -> nn.Module:
        return build_video_backbone(cfg)

    def build_data(self, cfg: TrainConfig, stats: dict[str, Any]) -> VideoDataSplits:
        return build_video_data(cfg, stats)

    def collate(self) -> Callable | None:
        return _training_batch

    def evaluate(self, model, dataset, cfg, device, info, prefix, progress, batch_size, workers):
        views = cfg.test_clips * cfg.test_crops
        return evaluate_videos(model, dataset, max(1, batch_size // views), device, info,
                               cfg.precision, workers, prefix, progress)  # fmt: skip


def _training_batch(items: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(clips, labels)`` without the clips that failed to decode (None when all did), so the
    training loop sees the same batches as for images."""
    batch = collate_videos(items)
    return None if batch is None else (batch[0], batch[1])


def build_video_backbone(cfg: TrainConfig) -> nn.Module:
    """The video backbone for ``cfg`` with a features-only head.

    A VideoMAE name loads its ``--checkpoint`` strictly; anything else is built as the image
    model ``--model``/``--checkpoint`` describes and inflated to video (logged). Parameters
    the checkpoint cannot provide are recorded in ``fresh_parameter_names`` so that every
    method trains them and task files carry them.
    """
    if is_videomae_name(cfg.model):
        if not cfg.checkpoint:
            raise ValueError(
                f"--model {cfg.model} needs --checkpoint VIDEOMAE.pth (VideoMAE's released "
                "pre-training or fine-tuned weights)"
            )
        model = create_video_model(
            cfg.model.removeprefix("videomae_"), num_frames=cfg.num_frames, img_size=cfg.img_size
        )
        report = load_videomae_checkpoint(model, cfg.checkpoint)
        model.fresh_parameter_names = {k for k in report.fresh if not k.startswith("head.")}
        return model
    image = pretrained_backbone(cfg.model, cfg.checkpoint, cfg.img_size)
    _log.info(
        "inflating image backbone %s to video: %d frames, tubelet %d (2D kernel averaged over "
        "the tubelet, positions repeated over time, learnable time embedding from zero)",
        cfg.model, cfg.num_frames, cfg.tubelet_size,
    )  # fmt: skip
    model = video_model_from_image(
        image, num_frames=cfg.num_frames, tubelet_size=cfg.tubelet_size, img_size=cfg.img_size,
        num_classes=0,
    )  # fmt: skip
    model.fresh_parameter_names = {"time_embed"}
    return model


def build_video_data(cfg: TrainConfig, stats: dict[str, Any]) -> VideoDataSplits:
    if not cfg.data_root:
        raise ValueError(
            "--dataset video-list needs --data-root DIR holding train.csv, val.csv, test.csv"
        )
    splits = build_video_datasets(
        cfg.data_root,
        video_root=cfg.video_root,
        num_frames=cfg.num_frames,
        sampling=cfg.sampling,
        sampling_rate=cfg.sampling_rate,
        size=cfg.img_size,
        mean=tuple(stats["mean"]),
        std=tuple(stats["std"]),
        flip=cfg.flip,
        test_clips=cfg.test_clips,
        test_crops=cfg.test_crops,
    )
    if cfg.strict_data and splits.skipped:
        listed = "; ".join(f"{s.path} ({s.reason})" for s in splits.skipped[:5])
        more = f" and {len(splits.skipped) - 5} more" if len(splits.skipped) > 5 else ""
        raise UserFacingError(
            f"{len(splits.skipped)} listed videos cannot be read: {listed}{more}; replace or "
            "remove them from the lists, or drop --strict-data to skip them"
        )
    return splits


def evaluate_videos(
    model: nn.Module,
    dataset: VideoListDataset,
    batch_size: int,
    device: torch.device,
    info: DistInfo,
    precision: str,
    workers: int,
    prefix: str,
    progress: bool,
) -> dict[str, float]:
    """Multi-view metrics over every video once: ranks score disjoint shards of videos."""
    shard = Subset(dataset, shard_indices(len(dataset), info))
    loader = DataLoader(
        shard, batch_size=batch_size, num_workers=workers, collate_fn=collate_videos
    )
    out = evaluate_multiview(
        model, loader, device, expected_videos=dataset.video_indices.tolist(),
        precision=precision, prefix=prefix, progress=progress,
    )  # fmt: skip
    out[f"{prefix}_images"] = out[f"{prefix}_videos"]  # what the run summary counts
    return out
