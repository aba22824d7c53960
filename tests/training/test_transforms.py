"""`af.transforms`: the CLI's preprocessing for a model or a run, not timm's defaults."""

from __future__ import annotations

import timm
import torch
from PIL import Image

import adaptformer as af
from adaptformer.data import build_eval_transform

from ..helpers import tiny_vit


def test_a_model_gives_its_own_input_size_and_statistics():
    model = tiny_vit()  # 32 px; timm's default config for it would say 224
    cfg = timm.data.resolve_model_data_config(model)
    img = Image.new("RGB", (50, 37), (200, 10, 90))
    x = af.transforms(model)(img)
    expected = build_eval_transform(32, cfg["mean"], cfg["std"], cfg["interpolation"])(img)
    assert x.shape == (3, 32, 32) and torch.equal(x, expected)
    assert af.transforms(model, train=True)(img).shape == (3, 32, 32)
