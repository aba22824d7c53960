"""What an unset ``--img-size``, ``--epochs`` and ``--precision`` become: a first try that fits.

A user who gives only ``--dataset`` and ``--data-root`` should get a run that finishes in
minutes on a CPU and uses a GPU well when there is one (issue #25); the paper's recipe (224 px,
100 epochs) took hours on a 2-core CPU. So these three options default to "unset" and are
resolved once the device and the training set are known:

- **CPU**: 112 px (8x8 patches of 14 px; AdaptFormer-64 on ViT-S/14 trains about 4x faster
  than at 224 px), fp32, and as many epochs as see about 6,000 training images, between 1 and
  10: a 2,000-image folder gets 3 epochs (about 5 minutes on 2 cores), 200 images get 10.
- **GPU**: 224 px, bf16 autocast where the GPU supports it (else fp32), and as many epochs as
  see about 300,000 training images, between 1 and 100 (the paper's 100 for a few thousand
  images, a few epochs for a large data set).
- **Video** (``--dataset video-list``) keeps the fixed defaults it had: 224 px, 100 epochs,
  fp32.

The resolved values are logged, saved in ``config.yaml`` (so ``eval``, ``predict`` and
``--resume`` see fixed values) and written in ``summary.json``; any of the three given
explicitly is kept as given. ``adaptformer vtab`` and the benchmarks set their own.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import TrainConfig

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FirstTry:
    """The defaults of one kind of device."""

    img_size: int
    precision: str
    train_images: int  # the run sees about this many training images ...
    max_epochs: int  # ... in at least 1 and at most this many epochs

    def epochs(self, train_size: int) -> int:
        """Whole epochs closest to ``train_images`` images seen, within [1, max_epochs]."""
        return max(1, min(self.max_epochs, round(self.train_images / max(train_size, 1))))


FIRST_TRY: dict[str, FirstTry] = {
    "cpu": FirstTry(img_size=112, precision="fp32", train_images=6_000, max_epochs=10),
    "cuda": FirstTry(img_size=224, precision="bf16", train_images=300_000, max_epochs=100),
}
VIDEO_DEFAULTS: dict[str, int | str] = {"img_size": 224, "epochs": 100, "precision": "fp32"}
# For --help: what an unset option becomes.
HELP = {
    "img_size": "112 on a CPU, 224 on a GPU; video: 224",
    "epochs": "as many as see about 6,000 training images on a CPU (1 to 10), 300,000 on a GPU "
    "(1 to 100); video: 100",
    "precision": "fp32 on a CPU, bf16 on a GPU that has it; video: fp32",
}


def _device_defaults(device: torch.device) -> FirstTry:
    first = FIRST_TRY["cuda" if device.type == "cuda" else "cpu"]
    if first.precision == "bf16" and not torch.cuda.is_bf16_supported():
        first = dataclasses.replace(first, precision="fp32")
    return first


def resolve_for_device(cfg: TrainConfig, device: torch.device) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with an unset image size and precision filled in for ``device``, and the
    ``--flag value`` texts it filled (for the log)."""
    if cfg.is_video:
        values = {k: v for k, v in VIDEO_DEFAULTS.items() if k != "epochs"}
    else:
        first = _device_defaults(device)
        values = {"img_size": first.img_size, "precision": first.precision}
    return _fill(cfg, values)


def resolve_epochs(
    cfg: TrainConfig, device: torch.device, train_size: int
) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with an unset epoch count filled in from the training set's size."""
    if cfg.is_video:
        epochs = int(VIDEO_DEFAULTS["epochs"])
    else:
        epochs = _device_defaults(device).epochs(train_size)
    return _fill(cfg, {"epochs": epochs})


def _fill(cfg: TrainConfig, values: dict) -> tuple[TrainConfig, list[str]]:
    unset = {k: v for k, v in values.items() if getattr(cfg, k) is None}
    if not unset:
        return cfg, []
    filled = [f"--{k.replace('_', '-')} {v}" for k, v in unset.items()]
    return dataclasses.replace(cfg, **unset), filled


def log_filled(filled: list[str], device: torch.device, train_size: int | None = None) -> None:
    """One log line naming the defaults a run chose, so they are never a surprise."""
    if not filled:
        return
    kind = "GPU" if device.type == "cuda" else "CPU"
    images = f", {train_size:,} training images" if train_size is not None else ""
    _log.info(
        "defaults for a first try on a %s%s: %s (set them to choose; the paper's recipe: "
        "--config paper_image)",
        kind,
        images,
        ", ".join(filled),
    )
