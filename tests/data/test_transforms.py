"""The reference recipe's transforms, built from the backbone's timm data config."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from adaptformer.data import build_eval_transform, build_train_transform, stats_from_timm
from adaptformer.data.transforms import MAX_IMG_SIZE, CheckShape, ToRGB

from ..helpers import tiny_vit
from .synth import FLAT, IMAGENET


def _steps(tf: T.Compose) -> list[type]:
    return [type(t) for t in tf.transforms]


def test_eval_is_resize_256_center_crop_224_for_224() -> None:
    tf = build_eval_transform(224, **IMAGENET, interpolation="bicubic")
    assert _steps(tf) == [CheckShape, ToRGB, T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    resize, crop = tf.transforms[2], tf.transforms[3]
    assert resize.size == 256 and resize.interpolation == InterpolationMode.BICUBIC
    assert crop.size == (224, 224)
    assert build_eval_transform(32, **IMAGENET).transforms[2].size == 36  # floor(32 / 0.875)


def test_train_is_random_resized_crop_bicubic_and_flip() -> None:
    tf = build_train_transform(224, **IMAGENET, interpolation="bicubic")
    assert _steps(tf) == [
        CheckShape,
        ToRGB,
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    ]
    rrc = tf.transforms[2]
    assert rrc.size == (224, 224) and rrc.interpolation == InterpolationMode.BICUBIC
    assert rrc.scale == (0.08, 1.0)


def test_no_augmentation_trains_on_the_eval_transform() -> None:
    tf = build_train_transform(64, **IMAGENET, augment="none")
    assert _steps(tf) == _steps(build_eval_transform(64, **IMAGENET))
    img = Image.new("RGB", (80, 70), (10, 200, 30))
    assert torch.equal(tf(img), tf(img))


def test_normalisation_uses_the_given_mean_and_std() -> None:
    out = build_eval_transform(8, **IMAGENET)(Image.new("RGB", (8, 8), (255, 0, 128)))
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert out.shape == (3, 8, 8)
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)


def test_grey_images_become_three_equal_channels() -> None:
    out = build_train_transform(16, **FLAT)(Image.new("L", (28, 28), 77))
    assert out.shape == (3, 16, 16)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_stats_come_from_timm_data_config() -> None:
    model = tiny_vit()
    stats = stats_from_timm(timm.data.resolve_data_config({}, model=model))
    assert stats == {
        "mean": timm.data.IMAGENET_DEFAULT_MEAN,
        "std": timm.data.IMAGENET_DEFAULT_STD,
        "interpolation": "bicubic",
    }
    tf = build_eval_transform(32, **stats)
    assert tf.transforms[2].interpolation == InterpolationMode.BICUBIC


def test_transforms_pickle_for_spawned_workers() -> None:
    tf = build_train_transform(16, **IMAGENET)
    assert _steps(pickle.loads(pickle.dumps(tf))) == _steps(tf)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interpolation": "random"}, "interpolation='random' is not supported"),
        ({"mean": (0.5,), "std": (0.5,)}, "must have 3 values"),
        ({"std": (0.2, 0.0, 0.2)}, "must be positive"),
    ],
)
def test_bad_transform_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_eval_transform(16, **{**IMAGENET, **kwargs})


def test_timm_config_without_stats() -> None:
    with pytest.raises(ValueError, match="lacks std, interpolation"):
        stats_from_timm({"mean": (0, 0, 0)})


# -- issue 24, item 2: no resize of a thin image, no input size that cannot be allocated --------


@pytest.mark.parametrize("augment", ["paper", "none"])
@pytest.mark.parametrize("size", [(1, 200_000), (300, 2)])
def test_thin_images_are_refused_before_any_resize(size, augment) -> None:
    tf = build_train_transform(32, **IMAGENET, augment=augment)
    with pytest.raises(ValueError, match="at most 20:1") as err:
        tf(Image.new("L", size))
    assert "\n" not in str(err.value)
    assert tf(Image.new("L", (40, 2))).shape == (3, 32, 32)  # 20:1 is fine


@pytest.mark.parametrize("img_size", [MAX_IMG_SIZE + 1, 100_000])
def test_input_size_is_bounded(img_size) -> None:
    for build in (build_eval_transform, build_train_transform):
        with pytest.raises(ValueError, match=f"at most {MAX_IMG_SIZE}"):
            build(img_size, **IMAGENET)
