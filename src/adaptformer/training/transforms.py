"""``af.transforms(model_or_run)``: the preprocessing a model or a run folder expects.

One definition for everyone: ``adaptformer train``/``eval``/``predict``, the server and the
exporters build their transforms from the same (input size, mean, std, interpolation) through
:mod:`adaptformer.data.transforms`; this is the library user's way to the same transform, so a
Python loop does not fall back to timm's defaults (which give the pretrained input size, 518 px
for DINOv2, and another crop).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision import transforms as T

from ..data.preprocess import model_stats
from ..data.transforms import build_eval_transform, build_train_transform


def transforms(
    source: nn.Module | str | Path, train: bool = False, augment: str | None = None
) -> T.Compose:
    """The evaluation (or training) transform of a backbone or of a finished run.

    Args:
        source: a timm backbone (its input size and its timm data config's mean, std and
            interpolation), or a run folder written by ``adaptformer train`` (the size and
            statistics it was trained with).
        train: the training transform (random resized crop + flip) instead of evaluation's
            resize to ``size / 0.875`` + center crop.
        augment: training augmentation, ``"paper"`` or ``"none"`` (default: the run's own, or
            ``"paper"`` for a model).
    """
    if isinstance(source, nn.Module):
        size = getattr(getattr(source, "patch_embed", None), "img_size", None)
        if size is None:
            raise ValueError("the model does not record its input size (no patch_embed.img_size)")
        img_size = size[0] if isinstance(size, tuple | list) else int(size)
        stats, run_augment = model_stats(source), "paper"
    else:
        from ..adapters.files import read_adapter_files
        from .config import TrainConfig

        run = Path(source)
        if not (run / "config.yaml").is_file():
            raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
        cfg = TrainConfig.load(run / "config.yaml")
        meta = read_adapter_files(run)[0]["metadata"]
        img_size, run_augment = cfg.img_size, cfg.augment
        stats = {k: meta[k] for k in ("mean", "std", "interpolation")}
    if train:
        return build_train_transform(img_size, **stats, augment=augment or run_augment)
    return build_eval_transform(img_size, **stats)
