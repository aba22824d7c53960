"""Train and evaluation transforms: the AdaptFormer reference recipe, parametrised by backbone.

The reference (MAE / AdaptFormer image fine-tuning) trains with RandomResizedCrop(224,
bicubic) + horizontal flip and tests with resize 256 + center crop 224, ImageNet mean/std.
Mean, std and interpolation here come from the backbone's timm data config instead, so a
backbone trained with other statistics (CLIP, Inception-style) gets its own; the resize ratio
stays the paper's 224/256 = 0.875 for every input size (e.g. 36 -> 32 for 32-pixel inputs).

Every pipeline starts with :class:`CheckShape`, so no resize ever sees a thin image (its short
side scaled to the input size would make the long side gigantic), and the input size itself is
at most :data:`MAX_IMG_SIZE`: together they bound what any resize here allocates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .safe import shape_problem, to_rgb

# The paper's test-time ratio of crop to resized side: 224 / 256.
EVAL_CROP_PCT = 0.875
# Largest input side (img_size): 4.6x the usual 224, far above any released ViT's, and one
# image is still 12 MB as float32 (100,000 would be 120 GB, before the model's tokens).
MAX_IMG_SIZE = 1024

_INTERPOLATIONS: dict[str, InterpolationMode] = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
    "lanczos": InterpolationMode.LANCZOS,
}


class ToRGB:
    """Convert any PIL image to 3-channel RGB (grey-scale data sets, palette PNGs, CMYK JPEGs).

    A class rather than a lambda so the transform pickles into spawned DataLoader workers.
    """

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else to_rgb(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CheckShape:
    """Refuse an image no resize should see (see :func:`adaptformer.data.safe.shape_problem`)
    with a one-line ``ValueError`` naming the limit; files and uploads are already refused from
    their header, this guards images handed to the transforms directly."""

    def __call__(self, img: Image.Image) -> Image.Image:
        problem = shape_problem(*img.size)
        if problem:
            raise ValueError(f"image of {problem}")
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_img_size(img_size: int) -> int:
    """``img_size`` if it is a whole number in 1..MAX_IMG_SIZE, else a one-line ``ValueError``."""
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 1:
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
    if img_size > MAX_IMG_SIZE:
        raise ValueError(
            f"img_size {img_size} is too large: at most {MAX_IMG_SIZE} pixels a side (one "
            f"{img_size}x{img_size} image alone would take {3 * 4 * img_size**2 / 1e9:,.1f} GB)"
        )
    return img_size


def resolve_interpolation(interpolation: str | InterpolationMode) -> InterpolationMode:
    """Map a timm interpolation name ('bicubic', 'bilinear', ...) to torchvision's enum."""
    if isinstance(interpolation, InterpolationMode):
        return interpolation
    mode = _INTERPOLATIONS.get(str(interpolation).lower())
    if mode is None:
        raise ValueError(
            f"interpolation={interpolation!r} is not supported; choose one of "
            f"{', '.join(_INTERPOLATIONS)}"
        )
    return mode


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    try:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
    except (TypeError, ValueError):
        raise ValueError(f"mean={mean!r} and std={std!r} must be lists of numbers") from None
    if len(mean) != 3 or len(std) != 3 or not all(map(math.isfinite, mean + std)):
        raise ValueError(
            f"mean={mean} and std={std} must have 3 values each, all finite (images are "
            "converted to RGB)"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std={std} must be positive")
    return mean, std


def build_eval_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str | InterpolationMode = "bicubic",
) -> T.Compose:
    """Resize the short side to ``floor(img_size / 0.875)``, center crop ``img_size``, normalise.

    Args:
        img_size: side of the square output.
        mean: per-channel mean of the backbone's pretraining data.
        std: per-channel std of the backbone's pretraining data.
        interpolation: resize filter, a timm name or a torchvision ``InterpolationMode``.
    """
    check_img_size(img_size)
    mean, std = _check_stats(mean, std)
    mode = resolve_interpolation(interpolation)
    return T.Compose(
        [
            CheckShape(),
            ToRGB(),
            T.Resize(math.floor(img_size / EVAL_CROP_PCT), interpolation=mode),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def build_train_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str | InterpolationMode = "bicubic",
    augment: Literal["paper", "none"] = "paper",
) -> T.Compose:
    """The reference training transform, or the evaluation transform when ``augment='none'``.

    Args:
        img_size: side of the square output.
        mean: per-channel mean of the backbone's pretraining data.
        std: per-channel std of the backbone's pretraining data.
        interpolation: resize filter, a timm name or a torchvision ``InterpolationMode``.
        augment: 'paper' (RandomResizedCrop with the default scale (0.08, 1) + horizontal
            flip, as in the reference) or 'none' (deterministic resize + center crop).
    """
    if augment == "none":
        return build_eval_transform(img_size, mean, std, interpolation)
    if augment != "paper":
        raise ValueError(f"augment={augment!r} must be 'paper' or 'none'")
    check_img_size(img_size)
    mean, std = _check_stats(mean, std)
    mode = resolve_interpolation(interpolation)
    return T.Compose(
        [
            CheckShape(),
            ToRGB(),
            T.RandomResizedCrop(img_size, interpolation=mode),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def stats_from_timm(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """Pick ``mean``, ``std`` and ``interpolation`` out of a timm data config.

    Args:
        data_config: the dict from ``timm.data.resolve_data_config({}, model=model)``.

    Returns:
        Keyword arguments for :func:`build_datasets` and the transform builders.
    """
    missing = [k for k in ("mean", "std", "interpolation") if k not in data_config]
    if missing:
        raise ValueError(
            f"timm data config lacks {', '.join(missing)}; pass the output of "
            "timm.data.resolve_data_config({}, model=model)"
        )
    return {
        "mean": tuple(data_config["mean"]),
        "std": tuple(data_config["std"]),
        "interpolation": data_config["interpolation"],
    }
