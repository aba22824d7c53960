"""``AdapterConfig.bottleneck_ratio``: one bottleneck per block, a fraction of its width."""

from __future__ import annotations

import json

import pytest

import adaptformer as af
from adaptformer.adapters.files import loadable_problems, read_adapter_files

from ..helpers import tiny_vit


@pytest.mark.parametrize(
    ("ratio", "widths", "expected"),
    [
        (0.083, [96, 192, 384, 768], [8, 16, 32, 64]),  # Swin-T/S: dim // 12
        (0.083, [128, 256, 512, 1024], [11, 21, 42, 85]),  # Swin-B: nearest, not dim // 12
        (0.083, [768], [64]),  # ViT-B: the paper's r
        (0.125, [12, 20], [2, 3]),  # halves round up (1.5 -> 2, 2.5 -> 3)
        (0.01, [24], [1]),  # at least 1
    ],
)
def test_bottleneck_for_rounds_to_the_nearest_and_is_at_least_one(ratio, widths, expected):
    config = af.AdapterConfig(bottleneck_ratio=ratio)
    assert config.bottleneck is None
    assert [config.bottleneck_for(w) for w in widths] == expected
    assert af.AdapterConfig(bottleneck=8).bottleneck_for(768) == 8


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"bottleneck": 8, "bottleneck_ratio": 0.1}, "both set the adapter width"),
        ({"bottleneck_ratio": 0.0}, r"bottleneck_ratio=0.0 must be a fraction in \(0, 1\]"),
        ({"bottleneck_ratio": 1.5}, "bottleneck_ratio=1.5 must be a fraction"),
        ({"bottleneck_ratio": float("nan")}, "bottleneck_ratio=nan must be a fraction"),
        ({"bottleneck_ratio": "0.1"}, "bottleneck_ratio='0.1' must be a fraction"),
    ],
)
def test_bad_ratios_are_refused(fields, problem):
    with pytest.raises(ValueError, match=problem):
        af.AdapterConfig(**fields)


def test_bottleneck_ratio_on_a_plain_vit(tmp_path):
    model = tiny_vit(depth=2, embed_dim=48)
    af.inject(model, af.AdapterConfig(bottleneck_ratio=0.083), name="t")
    assert [b.adaptmlp["t"].down_proj.out_features for b in model.blocks] == [4, 4]
    af.save_adapter(model, tmp_path / "t")
    info, tensors = read_adapter_files(tmp_path / "t")
    assert loadable_problems(info, tensors) == []
    fresh = tiny_vit(depth=2, embed_dim=48)
    af.load_adapter(fresh, tmp_path / "t")
    assert af.AdapterConfig.from_dict(info["config"]).bottleneck_for(48) == 4


def test_files_without_bottleneck_ratio_still_load(tmp_path):
    """Task files written before ``bottleneck_ratio`` existed have no such key."""
    model = tiny_vit(depth=2)
    af.inject(model, af.AdapterConfig(bottleneck=8), name="t")
    af.save_adapter(model, tmp_path / "t")
    path = tmp_path / "t" / "adapter_config.json"
    info = json.loads(path.read_text())
    del info["config"]["bottleneck_ratio"]
    path.write_text(json.dumps(info))
    af.load_adapter(tiny_vit(depth=2), tmp_path / "t")
