"""Multi-scale crop, optional flip, short-side resize + spatial crops, normalisation."""

from __future__ import annotations

import numpy as np
import torch

from adaptformer.data.video.transforms import (
    EvalTransform,
    TrainTransform,
    multiscale_crop_box,
    spatial_crop_starts,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_multiscale_boxes_follow_tsn() -> None:
    rng = np.random.default_rng(0)
    sides = set()
    for _ in range(300):
        left, top, w, h = multiscale_crop_box(340, 256, 224, rng)
        assert 0 <= left <= 340 - w and 0 <= top <= 256 - h
        sides.add(w)
        sides.add(h)
    # int(256 * s) for s in (1, .875, .75, .66), with 224 snapped to the input size
    assert sides == {256, 224, 192, 168}


def test_train_transform_shapes_and_flip_option() -> None:
    frames = np.zeros((4, 60, 80, 3), dtype=np.uint8)
    frames[..., :40, 0] = 255  # left half red: a flip moves it right
    seen_flipped = False
    for seed in range(20):
        for flip in (False, True):
            out = TrainTransform(32, MEAN, STD, flip=flip)(frames, np.random.default_rng(seed))
            assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
            left_red = bool(out[0, :, :, 0].mean() > out[0, :, :, -1].mean())
            assert left_red or flip
            seen_flipped |= not left_red
    assert seen_flipped


def test_eval_transform_crops_along_the_long_side() -> None:
    frames = np.zeros((2, 100, 300, 3), dtype=np.uint8)
    frames[..., :100, :] = 255  # white left third
    views = EvalTransform(50, MEAN, STD, num_crops=3)(frames)
    assert views.shape == (3, 3, 2, 50, 50)
    left = views[0][..., :45]  # the last columns blur into the black part when downscaled
    torch.testing.assert_close(left, torch.full_like(left, 2.0))  # (1 - .5) / .25
    torch.testing.assert_close(views[2], torch.full_like(views[2], -2.0))
    assert spatial_crop_starts(150, 50, 3) == [0, 50, 100]
    assert spatial_crop_starts(150, 50, 1) == [50]
