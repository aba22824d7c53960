"""DataConfig: bad values fail at construction with one line that names the fix."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from adaptformer.data import DATASETS, DataConfig
from adaptformer.data.config import DatasetName


def test_defaults_are_the_paper_setting() -> None:
    cfg = DataConfig(data_root="x")
    assert (cfg.img_size, cfg.val_fraction, cfg.augment, cfg.download) == (224, 0.1, "paper", False)


def test_every_field_has_help_text() -> None:
    for f in dataclasses.fields(DataConfig):
        assert f.metadata.get("help"), f.name


def test_path_data_root_becomes_str(tmp_path) -> None:
    assert DataConfig(data_root=tmp_path).data_root == str(tmp_path)


def test_mnist5k_needs_no_root() -> None:
    assert DataConfig(dataset="mnist5k").data_root is None


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({"dataset": "imagenet22k"}, "choose one of imagefolder"),
        ({"dataset": "cifar10"}, "needs data_root (--data-root)"),
        ({"img_size": 0}, "positive integer"),
        ({"img_size": 224.0}, "positive integer"),
        ({"train_per_class": 0}, "positive integer or None"),
        ({"train_per_class": 1}, "use train_per_class >= 2 or val_fraction=0"),
        ({"val_fraction": 1.0}, "must be in [0, 1)"),
        ({"val_fraction": -0.1}, "must be in [0, 1)"),
        ({"seed": "0"}, "must be an integer"),
        ({"augment": "randaug"}, "must be one of paper, none"),
        ({"download": True}, "only cifar10, cifar100, svhn"),
        ({"download": "yes"}, "True or False"),
        ({"strict_data": 1}, "True or False"),
        ({"test_split": "../test"}, "split name such as 'test'"),
        ({"test_split": ""}, "split name such as 'test'"),
    ],
)
def test_bad_values_name_the_fix(kwargs: dict, fix: str) -> None:
    kwargs = {"data_root": "x", **kwargs} if kwargs.get("dataset") != "cifar10" else kwargs
    with pytest.raises(ValueError, match="invalid DataConfig") as err:
        DataConfig(**kwargs)
    message = str(err.value)
    assert fix in message
    assert "\n" not in message


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ValueError) as err:
        DataConfig(data_root="x", img_size=-1, val_fraction=2.0)
    assert "img_size" in str(err.value) and "val_fraction" in str(err.value)


def test_few_shot_of_one_is_fine_without_validation() -> None:
    assert DataConfig(data_root="x", train_per_class=1, val_fraction=0.0).train_per_class == 1


def test_dataset_names_match_the_literal() -> None:
    assert typing.get_args(DatasetName) == DATASETS
