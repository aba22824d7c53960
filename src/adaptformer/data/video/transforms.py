"""Clip transforms: multi-scale crop for training, short-side resize + spatial crops for testing.

Training follows the AdaptFormer/VideoMAE video recipe: TSN's ``GroupMultiScaleCrop`` with
scales ``(1, .875, .75, .66)`` of the short side (crop width and height each pick a scale, at
most one step apart), one of 13 fixed crop positions, then a resize to the input size; every
frame of a clip gets the same crop. A horizontal flip is optional: on for Kinetics/HMDB, off for
Something-Something, whose classes name left and right. Testing resizes the short side to the
input size and takes ``num_crops`` squares spread along the long side (VideoMAE's 3-crop test;
one crop is the centre).

Frames arrive as ``uint8 [T, H, W, 3]`` and leave as normalised ``float32 [3, T, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MULTISCALE = (1.0, 0.875, 0.75, 0.66)


def _as_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.ndim != 4 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {t.dtype} {tuple(t.shape)}")
    return t


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[T, 3, height, width]`` in [0, 1] (bilinear)."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(
        x, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float ``[T, 3, H, W]`` -> normalised ``[3, T, H, W]``."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).transpose(0, 1).contiguous()


def multiscale_offsets(
    image_w: int, image_h: int, crop_w: int, crop_h: int
) -> list[tuple[int, int]]:
    """TSN's 13 fixed crop positions: corners, centre, edge centres and quarter points."""
    ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0)]
    grid += [(1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


def multiscale_crop_box(
    image_w: int,
    image_h: int,
    size: int,
    rng: np.random.Generator,
    scales: Sequence[float] = MULTISCALE,
    max_distort: int = 1,
) -> tuple[int, int, int, int]:
    """A random ``(left, top, width, height)`` box as TSN's ``GroupMultiScaleCrop`` picks it."""
    base = min(image_w, image_h)
    sizes = [int(base * s) for s in scales]
    sizes = [size if abs(s - size) < 3 else s for s in sizes]  # snap near-sizes, as TSN does
    pairs = [
        (w, h)
        for i, h in enumerate(sizes)
        for j, w in enumerate(sizes)
        if abs(i - j) <= max_distort
    ]
    w, h = pairs[int(rng.integers(len(pairs)))]
    w, h = min(w, image_w), min(h, image_h)
    offsets = multiscale_offsets(image_w, image_h, w, h)
    left, top = offsets[int(rng.integers(len(offsets)))]
    return left, top, w, h


def spatial_crop_starts(long_side: int, size: int, num_crops: int) -> list[int]:
    """Starts of ``num_crops`` crops of ``size`` spread along a side (one crop: centred)."""
    slack = max(long_side - size, 0)
    if num_crops == 1:
        return [slack // 2]
    return [int(i * slack / (num_crops - 1)) for i in range(num_crops)]


class TrainTransform:
    """Multi-scale crop (+ optional flip) and normalisation of one training clip.

    Args:
        size: output height and width.
        mean: per-channel mean of the backbone's input normalisation.
        std: per-channel std.
        flip: random horizontal flip (p=0.5); turn off when left/right defines the class.
        scales: crop sides as fractions of the short side.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        flip: bool = True,
        scales: Sequence[float] = MULTISCALE,
    ) -> None:
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.flip, self.scales = flip, tuple(scales)

    def __call__(self, frames: np.ndarray | torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        t = _as_tensor(frames)
        left, top, w, h = multiscale_crop_box(t.shape[2], t.shape[1], self.size, rng, self.scales)
        x = _resize(t[:, top : top + h, left : left + w], self.size, self.size)
        if self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        return _normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, scales={self.scales}, flip={self.flip})"


class EvalTransform:
    """Short side resized to ``size``, then ``num_crops`` squares along the long side.

    Args:
        size: output height and width (and the resized short side).
        mean: per-channel mean.
        std: per-channel std.
        num_crops: spatial views (VideoMAE tests with 3).
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        num_crops: int = 1,
    ) -> None:
        if num_crops < 1:
            raise ValueError(f"num_crops={num_crops} must be >= 1")
        self.size, self.mean, self.std, self.num_crops = size, tuple(mean), tuple(std), num_crops

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``[T, H, W, 3]`` -> ``[num_crops, 3, T, size, size]``."""
        t = _as_tensor(frames)
        h, w = t.shape[1], t.shape[2]
        scale = self.size / min(h, w)
        nh, nw = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        x = _resize(t, nh, nw)
        crops = []
        for start in spatial_crop_starts(max(nh, nw), self.size, self.num_crops):
            if nw >= nh:
                crop = x[..., : self.size, start : start + self.size]
            else:
                crop = x[..., start : start + self.size, : self.size]
            crops.append(_normalize(crop, self.mean, self.std))
        return torch.stack(crops)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, num_crops={self.num_crops})"
