"""Train and evaluation transforms: the AdaptFormer reference recipe, parametrised by backbone.

The reference (MAE / AdaptFormer image fine-tuning) trains with RandomResizedCrop(224,
bicubic) + horizontal flip and tests with resize 256 + center crop 224, ImageNet mean/std.
Mean, std and interpolation here come from the backbone's timm data config instead, so a
backbone trained with other statistics (CLIP, Inception-style) gets its own; the resize ratio
stays the paper's 224/256 = 0.875 for every input size (e.g. 36 -> 32 for 32-pixel inputs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .safe import to_rgb

# The paper's test-time ratio of crop to resized side: 224 / 256.
EVAL_CROP_PCT = 0.875

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
    mean, std = _check_stats(mean, std)
    mode = resolve_interpolation(interpolation)
    return T.Compose(
        [
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
    mean, std = _check_stats(mean, std)
    mode = resolve_interpolation(interpolation)
    return T.Compose(
        [
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
