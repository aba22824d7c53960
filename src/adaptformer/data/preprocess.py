"""The evaluation preprocessing written out as data, for code that cannot import adaptformer.

An exported model's sidecar (``model.onnx.json``) carries :func:`eval_recipe`: following its
steps with PIL and numpy alone gives the tensor that ``predict``, ``eval`` and the server feed
the model (:func:`adaptformer.data.build_eval_transform`), bit for bit. Without it a user
guesses (resize to the input size, or timm's defaults for the pretrained size) and gets other
answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from .transforms import EVAL_CROP_PCT, _check_stats, resolve_interpolation


def eval_recipe(
    img_size: int, mean: Sequence[float], std: Sequence[float], interpolation: str
) -> dict[str, Any]:
    """The steps of :func:`~adaptformer.data.build_eval_transform` for ``img_size``, with every
    number a reimplementation needs (see ``docs/serving.md`` for a 12-line PIL + numpy one)."""
    mean, std = _check_stats(mean, std)
    resolve_interpolation(interpolation)  # a name torchvision knows, or a one-line error
    resize = math.floor(img_size / EVAL_CROP_PCT)
    return {
        "input_size": [img_size, img_size],
        "steps": [
            {"op": "convert", "mode": "RGB",
             "note": "16-bit images are scaled to 8 bits first, not clipped"},
            {"op": "resize_shorter_side", "size": resize, "interpolation": interpolation,
             "note": "PIL Image.resize; the longer side becomes int(size * longer / shorter)"},
            {"op": "center_crop", "size": [img_size, img_size],
             "note": "top = round((height - size) / 2), left = round((width - size) / 2), "
                     "Python's round (half to even)"},
            {"op": "to_float", "scale": 1 / 255, "layout": "CHW", "dtype": "float32"},
            {"op": "normalize", "mean": mean, "std": std, "note": "(x - mean) / std per channel"},
        ],
    }  # fmt: skip


def model_stats(model: nn.Module) -> dict[str, Any]:
    """Normalisation and resize filter from the backbone's own timm config."""
    import timm

    data_cfg = timm.data.resolve_model_data_config(model)
    return {
        "mean": list(data_cfg["mean"]),
        "std": list(data_cfg["std"]),
        "interpolation": data_cfg.get("interpolation", "bicubic"),
    }
