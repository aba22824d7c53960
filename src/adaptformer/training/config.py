"""The training run's configuration: dataclass defaults < YAML file (``--config``) < flags.

Each field's help lives once, in its metadata; the CLI builds its flags from these fields, so a
new option is one line here. The resolved config is written to the run folder as
``config.yaml`` and is all that ``eval``/``predict``/``--resume`` need to rebuild the run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..adapters.config import ACTIVATIONS, INITS, METHODS, POSITIONS, AdapterConfig
from ..data.config import DATASETS
from ..data.transforms import MAX_IMG_SIZE
from ..utils.files import read_yaml_mapping
from .first_try import HELP as FIRST_TRY_HELP
from .trackers import TRACKERS

DEFAULT_MODEL = "vit_small_patch14_dinov2.imgfocus"
# The video data set: lists of clips, trained through the video modality (training/video.py).
VIDEO_DATASET = "video-list"
# Default warm-up as a share of the run: a fixed number of epochs outlasts short runs (a 20-epoch
# warm-up left a 3-epoch run at a tenth of its learning rate).
WARMUP_FRACTION = 0.1
# Largest value of each size option: each one allocates memory (or processes) in proportion, and a
# config file is untrusted (img_size: 100000 asked for 78 GB). Far above any real run's values.
SIZE_LIMITS: dict[str, int] = {
    "img_size": MAX_IMG_SIZE,  # pixels a side (data/transforms.py)
    "batch_size": 4096,  # images per step and process
    "accum_steps": 1024,
    "epochs": 100_000,
    "bottleneck": 8192,  # adapter width: 5x a ViT-g's 1536
    "prompt_tokens": 1024,
    "num_frames": 256,
    "test_clips": 32,
    "test_crops": 32,
    "workers": 256,  # processes
}
# Default base learning rate (per 256 images; lr = blr * total batch / 256) per optimizer and
# method. AdamW: chosen by the learning-rate sweep of benchmarks/vtab_lite.py (section
# "defaults": the VTAB-1k tuning phase, train800 -> val200, on eurosat and dsprites_loc): the
# multiple of a first guess with the best mean val200 top-1, the grid extended upwards until its
# largest point lost, so none of these sits on the edge of what was measured (docs/results.md
# lists every point). AdaptFormer's is 4x LoRA's: its output is scaled by 0.1, which AdamW's
# step size does not see. The linear probe's is the exception: the sweep's best (0.36, x9)
# diverged on every other data set in benchmarks/defaults.py (Imagenette, CIFAR-10, flowers102,
# dsprites_ori, already at 56 px / 3 epochs): AdamW moves each of a head's 384 weights per class
# by about the lr per step, so its logits move by lr x the features' L1 norm (about 620 on
# every one of those data sets), and a few-shot run has too few steps to recover. It is the
# sweep's x1 (0.04), a ninth, which trains there. SGD: the paper's blr 0.1 for the methods that train few parameters;
# full fine-tuning collapses at 0.1, so it gets a tenth of it.
DEFAULT_BLR: dict[str, dict[str, float]] = {
    "adamw": {
        "adaptformer": 4.8e-2,
        "adapter_plus": 3.6e-2,
        "houlsby": 1.2e-2,
        "pfeiffer": 3.6e-2,
        "linear": 0.04,
        "full": 4e-4,
        "vpt": 3.6e-2,
        "lora": 1.2e-2,
        "bitfit": 3.6e-2,
    },
    "sgd": {
        "adaptformer": 0.1,
        "adapter_plus": 0.1,
        "houlsby": 0.1,
        "pfeiffer": 0.1,
        "linear": 0.1,
        "full": 0.01,
        "vpt": 0.1,
        "lora": 0.1,
        "bitfit": 0.1,
    },
}


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    choices, parse = kwargs.pop("choices", None), kwargs.pop("parse", None)
    meta: dict[str, Any] = {"help": help, **kwargs}
    if choices:
        meta["choices"] = choices
    if parse:
        meta["parse"] = parse  # reads the CLI text (argparse ``type``)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_ADAPTER_FIELDS = {f.name: f for f in dataclasses.fields(AdapterConfig)}


def _a(name: str, **meta: Any) -> Any:
    """A ``TrainConfig`` field that is AdapterConfig's field ``name``: same default, same help."""
    f = _ADAPTER_FIELDS[name]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    extra = {k: v for k, v in f.metadata.items() if k != "help"}  # e.g. default_text
    return _f(default, f.metadata["help"], **extra, **meta)


def parse_scale(text: str) -> float | str:
    """``--scale 0.1``, ``--scale learnable`` or ``--scale channel``."""
    return text if text in ("learnable", "channel") else _float(text, "scale")


@dataclass
class TrainConfig:
    """Everything a training run depends on (the resolved values are saved with the run)."""

    # backbone
    model: str = _f(
        DEFAULT_MODEL,
        "registry name (see `adaptformer models`), timm model name, or hf:FOLDER (a Hugging "
        "Face ViT/DINOv2 save_pretrained folder)",
    )
    checkpoint: str | None = _f(
        None, "local backbone weights (.safetensors/.pth; timm, MAE or HF names)"
    )
    img_size: int | None = _f(
        None,
        "input resolution; position embeddings are resampled to it",
        default_text=FIRST_TRY_HELP["img_size"],
    )
    # data
    dataset: str = _f("imagefolder", f"data set name ({', '.join((*DATASETS, VIDEO_DATASET))})")
    data_root: str | None = _f(None, "folder holding the data set")
    train_per_class: int | None = _f(
        None, "deterministic few-shot subset: N training images per class"
    )
    val_fraction: float = _f(
        0.1, "fraction of training data held out for model selection (never the test set)"
    )
    test_split: str | None = _f(
        None,
        "split scored once at the end (default: the data set's test split; imagefolder: test/ else val/)",
    )
    train_split: str | None = _f(
        None,
        "list the training pool is read from (vtab1k, multilabel); default train800val200 / train",
    )
    augment: str = _f(
        "paper",
        "training augmentation: paper (RandomResizedCrop + flip) or none",
        choices=["paper", "none"],
    )
    download: bool = _f(False, "let torchvision download the data set (needs internet)")
    strict_data: bool = _f(False, "fail on a corrupt image or video instead of skipping it")
    workers: int = _f(2, "data loading worker processes per training process")
    # video (--dataset video-list)
    video_root: str | None = _f(
        None, "folder that relative paths in the video lists resolve against"
    )
    num_frames: int = _f(8, "frames per clip (paper: 8)")
    sampling: str = _f(
        "dense",
        "dense (fixed stride: Kinetics/HMDB) or segment (SSv2)",
        choices=["dense", "segment"],
    )
    sampling_rate: int = _f(4, "frame stride of dense sampling (paper: 4)")
    tubelet_size: int = _f(2, "frames per token when an image backbone is inflated to video")
    flip: bool = _f(
        True, "horizontal flip in video training (turn off for SSv2: left/right matters)"
    )
    test_clips: int = _f(1, "temporal clips per video at evaluation (paper's final test: 4)")
    test_crops: int = _f(1, "spatial crops per clip at evaluation (paper's final test: 3)")
    # method: every AdapterConfig field, its help written once (in AdapterConfig); ``dropout``
    # is ``adapter_dropout`` here, because its default depends on images vs video.
    method: str = _a("method", choices=list(METHODS))
    bottleneck: int | None = _a("bottleneck")
    bottleneck_ratio: float | None = _a("bottleneck_ratio")
    scale: float | str | None = _a("scale", parse=parse_scale)
    adapter_dropout: float | None = _f(
        None,
        "dropout inside the adapter; unset: the method's preset for images (adaptformer 0.1), "
        "0.0 for video (the paper's video setting)",
    )
    layernorm: str | None = _a("layernorm", choices=["none", "in", "out"])
    position: str | None = _a("position", choices=list(POSITIONS))
    init: str | None = _a("init", choices=list(INITS))
    activation: str | None = _a("activation", choices=list(ACTIVATIONS))
    drop_path: float | None = _a("drop_path")
    layers: list[int] | None = _a("layers")
    prompt_tokens: int = _a("prompt_tokens")
    prompt_mode: str = _a("prompt_mode", choices=["deep", "shallow"])
    lora_alpha: float = _a("lora_alpha")
    head_batchnorm: bool = _a("head_batchnorm")
    # optimisation
    epochs: int | None = _f(
        None, "training epochs (paper: 100)", default_text=FIRST_TRY_HELP["epochs"]
    )
    warmup_epochs: float | None = _f(
        None,
        "linear warm-up epochs (per step), then half-cycle cosine to min_lr; "
        f"default {WARMUP_FRACTION:g} of the run",
    )
    batch_size: int = _f(32, "images per process per step (before accumulation)")
    accum_steps: int = _f(1, "gradient accumulation steps")
    optimizer: str = _f(
        "adamw",
        "adamw, or sgd (the paper's: momentum 0.9, no weight decay)",
        choices=["sgd", "adamw"],
    )
    lr: float | None = _f(None, "absolute peak learning rate; default blr * total batch / 256")
    blr: float | None = _f(
        None,
        "base learning rate per 256 images; default per method and optimizer "
        "(README: default learning rates)",
    )
    min_lr: float = _f(0.0, "learning rate at the end of the cosine")
    layer_decay: float = _f(
        1.0,
        "layer-wise lr decay: block i of depth d trains at lr x decay**(d - i), the embeddings "
        "at decay**(d + 1), the head at lr (MAE/VideoMAE fine-tuning: 0.75); 1: off",
    )
    new_params_lr_scale: float = _f(
        1.0,
        "lr multiplier of the parameters no checkpoint provides: the head and fresh backbone "
        "parameters (an inflated video model's time_embed); adapter tensors keep the method's lr",
    )
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(0.0, "weight decay (on matrices only; paper: 0)")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy (paper: 0)")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value")
    precision: str | None = _f(
        None,
        "fp32, bf16 (autocast, CPU or GPU) or fp16 (autocast + loss scaling, GPU)",
        choices=["fp32", "bf16", "fp16"],
        default_text=FIRST_TRY_HELP["precision"],
    )
    grad_checkpointing: bool = _f(False, "recompute block activations in backward to save memory")
    compile: bool = _f(
        False,
        "run the model through torch.compile (a C++ compiler is needed on CPU; the first steps "
        "compile for minutes; docs/multitask.md has what it bought on our CPU)",
    )
    divergence_guard: bool = _f(
        True, "stop a run whose loss climbs past 3x its start (a learning rate too high)"
    )
    log_to: list[str] = _f(
        [],
        "experiment trackers that also get the config, per-step loss/lr and per-epoch metrics: "
        "tensorboard, mlflow, wandb (several allowed; pip install 'adaptformer[trackers]')",
        choices=list(TRACKERS),
    )
    # run
    seed: int = _f(0, "random seed (data subset, init, order, augmentation)")
    output: str | None = _f(None, "run folder (default runs/<dataset>-<method>-<time>)")
    test_every_epoch: bool = _f(
        False, "also evaluate the test split after every epoch (reporting only)"
    )
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    max_steps_per_epoch: int | None = _f(
        None, "cap optimizer steps per epoch (smoke tests, benchmarks)"
    )

    def __post_init__(self) -> None:
        if isinstance(self.scale, str) and self.scale not in ("learnable", "channel"):  # old runs
            self.scale = _float(self.scale, "scale")
        # Types first: the value checks below compare and format values they assume typed.
        problems = list(self._type_problems()) or list(self._problems())
        if problems:
            raise ValueError("; ".join(problems))
        if self.model.startswith("hf:"):  # a folder, recorded absolute: eval, tasks, serve and
            # export rebuild the backbone from the run's record, from any working directory
            self.model = "hf:" + str(Path(self.model[3:]).expanduser().resolve())

    def _type_problems(self):
        """Every field's value against its annotation (a config file can hold anything), then
        the sizes against :data:`SIZE_LIMITS`."""
        for name, hint in field_types().items():
            problem = _type_problem(name, getattr(self, name), hint)
            if problem:
                yield problem
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, int) and value > limit:
                yield f"{name} {value} is too large: at most {limit}"

    def _problems(self):
        unknown = [t for t in self.log_to if t not in TRACKERS]
        if unknown:
            yield f"--log-to {' '.join(unknown)}: choose from {', '.join(TRACKERS)}"
        positive = (
            "img_size",
            "epochs",
            "batch_size",
            "accum_steps",
            "bottleneck",
            "prompt_tokens",
        )
        for name in positive:
            v = getattr(self, name)
            if v is None and name in ("bottleneck", "img_size", "epochs"):  # unset: a default
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                yield f"--{name.replace('_', '-')} must be a positive integer, got {v!r}"
        if self.lr is not None and not self.lr > 0:
            yield f"--lr must be positive, got {self.lr!r}"
        if self.blr is not None and not self.blr > 0:
            yield f"--blr must be positive, got {self.blr!r}"
        if (
            self.warmup_epochs is not None
            and isinstance(self.epochs, int)
            and self.warmup_epochs >= self.epochs
        ):
            yield (
                f"--warmup-epochs {self.warmup_epochs:g} is not shorter than the run "
                f"(--epochs {self.epochs}), so the learning rate would never reach its peak: "
                f"use --warmup-epochs below {self.epochs} (e.g. "
                f"{WARMUP_FRACTION * self.epochs:g}) or leave it unset "
                f"(default {WARMUP_FRACTION:g} of the run)"
            )
        if not 0 < self.layer_decay <= 1:
            yield f"--layer-decay must be in (0, 1] (1: off), got {self.layer_decay!r}"
        if not self.new_params_lr_scale > 0:
            yield f"--new-params-lr-scale must be positive, got {self.new_params_lr_scale!r}"
        if not 0 <= self.val_fraction < 1:
            yield f"--val-fraction must be in [0, 1), got {self.val_fraction!r}"
        if (self.warmup_epochs or 0) < 0 or self.min_lr < 0 or self.weight_decay < 0:
            yield "--warmup-epochs, --min-lr and --weight-decay must not be negative"
        if not 0 <= self.label_smoothing < 1:
            yield f"--label-smoothing must be in [0, 1), got {self.label_smoothing!r}"
        if self.train_per_class is not None and self.train_per_class < 1:
            yield f"--train-per-class must be a positive integer, got {self.train_per_class!r}"
        if self.workers < 0:
            yield f"--workers must be >= 0, got {self.workers!r}"
        for name in (
            "method",
            "augment",
            "layernorm",
            "position",
            "prompt_mode",
            "optimizer",
            "precision",
            "sampling",
            "init",
            "activation",
        ):
            choices = _FIELDS[name].metadata["choices"]
            if getattr(self, name) not in (*choices, None):  # None: the method's preset
                yield f"--{name.replace('_', '-')} {getattr(self, name)!r} is not one of {', '.join(choices)}"
        try:
            self.adapter_config()
        except ValueError as e:
            yield str(e)

    @property
    def is_video(self) -> bool:
        return self.dataset == VIDEO_DATASET

    @property
    def resolved_warmup_epochs(self) -> float:
        """The warm-up actually used: as asked, or ``WARMUP_FRACTION`` of the run."""
        if self.warmup_epochs is not None:
            return float(self.warmup_epochs)
        return WARMUP_FRACTION * self.epochs

    @property
    def resolved_blr(self) -> float:
        """``--blr`` as asked, or the method's default for the optimizer (``DEFAULT_BLR``)."""
        if self.blr is not None:
            return self.blr
        return DEFAULT_BLR[self.optimizer][self.method]

    def peak_lr(self, total_batch: int) -> float:
        """``--lr``, else ``blr * total_batch / 256`` (the linear scaling rule of MAE)."""
        return self.lr if self.lr is not None else self.resolved_blr * total_batch / 256

    @property
    def resolved_dropout(self) -> float | None:
        """``--adapter-dropout`` as asked; else 0.0 for video (the paper's video setting) and
        None for images, which the AdapterConfig resolves to the method's preset."""
        if self.adapter_dropout is not None:
            return self.adapter_dropout
        return 0.0 if self.is_video else None

    def adapter_config(self) -> AdapterConfig:
        """The run's AdapterConfig: every adapter field copied by name (none by hand)."""
        shared = {k: getattr(self, k) for k in _ADAPTER_FIELDS if k != "dropout"}
        return AdapterConfig(**shared, dropout=self.resolved_dropout)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from ..utils.files import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; see `adaptformer train --help`")
        try:
            return cls(**data)
        except TypeError as e:  # e.g. lr: "fast" compared with 0: a bad value, not a bug
            raise ValueError(f"a config value has the wrong type ({e}); fix the config") from None

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """The config file at ``path`` (a run's ``config.yaml``), schema-checked: any problem is
        one ``ValueError`` line naming the file."""
        values = read_yaml(path)
        try:
            return cls.from_dict(values)
        except ValueError as e:
            raise ValueError(f"config file {path}: {e}") from None


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the recipes shipped with the package (``--config paper_image``)."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Options from a YAML file, or from a shipped recipe given by name."""
    path = Path(path)
    if (
        not path.is_file()
        and (PACKAGED_CONFIGS / f"{path.stem}.yaml").is_file()
        and path.parent == Path(".")
    ):
        path = PACKAGED_CONFIGS / f"{path.stem}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"config file {path} does not exist (shipped recipes: {', '.join(packaged_configs())})"
        )
    return {k.replace("-", "_"): v for k, v in read_yaml_mapping(path).items()}


def _float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"--{name} must be a number, 'learnable' or 'channel', got {text!r}"
        ) from None


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPE_NAMES = {
    bool: "true or false",
    int: "a whole number",
    float: "a finite number",
    str: "a string",
    type(None): "empty",
}


@functools.cache
def field_types() -> dict[str, Any]:
    """Each option's type, from the dataclass annotations (``int | None``, ``list[int]``...)."""
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in _FIELDS}


def _type_problem(name: str, value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit annotation ``hint``, or None. ``bool`` is not a number here
    and a float must be finite (YAML reads ``.nan`` and ``.inf``)."""
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if any(_fits(value, kind) for kind in kinds):
        return None
    wanted = " or ".join(_TYPE_NAMES.get(k, _list_name(k)) for k in kinds)
    return f"{name} must be {wanted}, got {reprlib.repr(value)}"


def _list_name(kind: Any) -> str:
    (item,) = typing.get_args(kind) or (int,)
    return f"a list of {'whole numbers' if item is int else 'names'}"


def _fits(value: Any, kind: Any) -> bool:
    if kind is bool or kind is str or kind is type(None):
        return isinstance(value, kind)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return _fits(value, int) or (isinstance(value, float) and math.isfinite(value))
    if typing.get_origin(kind) is list:  # list[int]: block indices; list[str]: trackers
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    raise TypeError(f"TrainConfig option type {kind!r} has no check: add one to _fits")
