"""Adapter-only files: ``adapter_config.json`` + ``adapter_model.safetensors``.

A file holds one task: its adapter tensors and its head, with the task name stripped from every
key (``blocks.3.adaptmlp.down_proj.weight``), so it loads under any name. Loading checks the
exact key set and every shape before touching the model and raises a ``ValueError`` that lists
what does not fit, instead of leaving anything silently uninitialised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..utils.files import (
    FLOAT_DTYPES,
    TensorInfo,
    atomic_path,
    atomic_write_text,
    first_line,
    is_count,
    read_json,
    read_safetensors,
    safetensors_header,
)
from ..utils.state_dicts import clip, key_shape_problems
from .config import AdapterConfig, is_finite_number, method_rule
from .inject import (
    active_head,
    adapter_pieces,
    adapter_state,
    block_widths,
    delete_adapter,
    get_head,
    head_width,
    inject,
    model_family,
    put_head,
    set_adapter,
    unwrap,
)
from .trainable import fresh_parameters, shared_backbone_parameters

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "adaptformer-adapter/1"
# The largest magnitude a task file's tensor may hold (issue #24, item 15). Trained adapters and
# heads hold values well below 10 (they start at zero or at 1/sqrt(width)); one layer with
# weights up to 1e4 on LayerNorm-ed features (|x| <= sqrt(width) * |gamma|, about 3e3 for
# width 8192 with gamma 32) gives |y| <= 8192 * 1e4 * 3e3 + 1e4, about 2.5e11, so a head or one
# adapter cannot leave float32's range (3.4e38), and 1e4 leaves three orders of headroom over
# real files. Values like the 1e38 of a tampered file are refused at load instead of turning
# answers into inf.
MAX_ABS_WEIGHT = 1e4


def _backbone_info(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    family = model_family(model)
    widths = block_widths(model)
    return {
        "architecture": cfg.get("architecture", type(model).__name__),
        "family": family.name,
        "embed_dim": widths[0],
        "depth": len(widths),
        "widths": widths,
        "head_dim": head_width(model),
        "num_prefix_tokens": family.prefix_tokens(model),
    }


def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Task ``name``'s tensors keyed without the task name: adapter, head (with buffers), and
    for ``full``/``bitfit`` the backbone weights that method changes."""
    model = unwrap(model)
    config = adapter_state(model).configs[name]
    out: dict[str, torch.Tensor] = {}
    for path, piece in adapter_pieces(model, name):
        if isinstance(piece, nn.Parameter):
            out[path] = piece
        else:
            out.update({f"{path}.{k}": t for k, t in piece.state_dict().items()})
    for k, t in get_head(model, name).state_dict().items():
        out[f"head.{k}"] = t
    out.update({f"backbone.{k}": p for k, p in fresh_parameters(model).items()})
    shared = shared_backbone_parameters(model, config.method)
    out.update({f"backbone.{k}": p for k, p in shared.items()})
    return {k: t.detach() for k, t in out.items()}


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write task ``name`` (default: active) to ``directory``; files are replaced atomically.

    Args:
        model: a model with adapters from :func:`adaptformer.inject`.
        directory: created if missing.
        name: the task to save.
        metadata: extra JSON-able facts to keep with it (class names, backbone hash, ...).

    Returns:
        The directory.
    """
    model = unwrap(model)
    state = adapter_state(model)
    name = name or state.active
    if name not in state.configs:
        raise KeyError(f"no adapter named {name!r}; have {sorted(state.configs)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: t.contiguous().cpu().clone() for k, t in adapter_tensors(model, name).items()}
    info = {
        "format": FORMAT,
        "config": state.configs[name].to_dict(),
        "num_classes": state.num_classes[name],
        "backbone": _backbone_info(model),
        "metadata": metadata or {},
    }
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), {"format": FORMAT})
    atomic_write_text(directory / CONFIG_NAME, json.dumps(info, indent=2) + "\n")
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter directory, its fields' types checked.

    The file is untrusted (adapters are downloaded and shared), so a wrong type is a
    ``ValueError`` naming the field here, not a ``KeyError``/``TypeError`` later.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass the directory that save_adapter() wrote "
            f"(it holds {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    info = read_json(path, "an adaptformer adapter config")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise ValueError(f"{path} is not an adaptformer adapter file (format {found!r})")
    problems = [
        f"{key} must be {kind}"
        for key, kind, ok in (
            ("config", "a mapping of AdapterConfig fields", isinstance(info.get("config"), dict)),
            ("num_classes", "a whole number >= 0", is_count(info.get("num_classes"))),
            ("backbone", "a mapping", isinstance(info.get("backbone", {}), dict)),
            ("metadata", "a mapping", isinstance(info.get("metadata", {}), dict)),
        )
        if not ok
    ]
    problems += _metadata_problems(info.get("metadata", {}))
    if problems:
        raise ValueError(f"{path} is damaged: {'; '.join(problems)}; save the adapter again")
    try:
        AdapterConfig.from_dict(info["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
    return {"backbone": {}, "metadata": {}, **info}


def _metadata_problems(meta: Any) -> list[str]:
    """Type problems of the metadata ``adaptformer train`` writes (checked when present, since
    eval/predict/tasks use them to rebuild the preprocessing and name the classes)."""
    if not isinstance(meta, dict):
        return []  # reported as "metadata must be a mapping"
    checks = {
        "classes": ("a list of names", lambda v: isinstance(v, list)
                    and all(isinstance(c, str) for c in v)),
        "multilabel": ("true or false", lambda v: isinstance(v, bool)),
        "video": ("true or false", lambda v: isinstance(v, bool)),
        "mean": ("3 finite numbers", _three_numbers),
        "std": ("3 finite numbers", _three_numbers),
        "interpolation": ("a filter name", lambda v: isinstance(v, str)),
        "img_size": ("a positive whole number", lambda v: is_count(v) and v > 0),
        "model": ("a name", lambda v: isinstance(v, str)),
        "backbone_sha256": ("a hex digest", lambda v: isinstance(v, str)),
    }  # fmt: skip
    return [
        f"metadata {key} must be {kind}"
        for key, (kind, ok) in checks.items()
        if key in meta and not ok(meta[key])
    ]


def _three_numbers(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(is_finite_number(x) for x in v)


def read_adapter_files(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An adapter directory's config and tensors, checked without a model: sizes in the config
    against the shapes in the file header (before reading any tensor), then dtypes and values.

    Raises:
        ValueError: the files are damaged or disagree, naming the field or tensor.
    """
    info = read_adapter_config(directory)
    config = AdapterConfig.from_dict(info["config"])
    path = Path(directory) / WEIGHTS_NAME
    header = safetensors_header(path)
    problems = _size_problems(config, info["num_classes"], header) + _config_too_large(config)
    bad_dtype = sorted(k for k, t in header.items() if t.dtype not in FLOAT_DTYPES | {"I64"})
    if bad_dtype:
        problems.append(f"not floating point: {', '.join(bad_dtype)}")
    if problems:
        raise ValueError(f"adapter in {directory} is inconsistent: " + "; ".join(problems))
    tensors = read_safetensors(path)
    problems = _not_finite(tensors) + _too_large(tensors)
    if problems:
        raise ValueError(
            f"adapter in {directory} {problems[0]}; it is damaged, or its training diverged: "
            "train it again"
        )
    return info, tensors


def loadable_problems(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """What :func:`load_adapter` would refuse in these (checked) files, found without the
    backbone: the config is injected into a stand-in transformer with the block widths, head
    width and prefix tokens the file records, built on the ``meta`` device (no memory, no
    weights), and the file's tensors are compared with what it expects: missing and extra keys,
    shapes, integer vs. float. ``backbone.*`` tensors (parameters the checkpoint lacked, e.g. a
    video time embedding) depend on the real backbone and are compared when the task is loaded.
    """
    recorded = info.get("backbone", {})
    dims = {k: recorded.get(k) for k in ("embed_dim", "depth", "num_prefix_tokens")}
    bad = [k for k in ("embed_dim", "depth") if not is_count(dims[k]) or not 0 < dims[k] <= 16384]
    if bad or not is_count(dims["num_prefix_tokens"]) or dims["num_prefix_tokens"] > 64:
        return [f"its backbone record {dims} is not a width, depth and prefix-token count"]
    widths = recorded.get("widths", [dims["embed_dim"]] * dims["depth"])
    head_dim = recorded.get("head_dim", widths[-1] if isinstance(widths, list) and widths else 0)
    if (
        not isinstance(widths, list)
        or len(widths) != dims["depth"]
        or not all(is_count(w) and 0 < w <= 16384 for w in widths)
        or not is_count(head_dim)
        or not 0 < head_dim <= 16384
    ):
        return [f"its backbone record's widths {widths!r} do not fit depth {dims['depth']}"]
    config = AdapterConfig.from_dict(info["config"])
    try:
        expected = _stand_in_tensors(
            config, info["num_classes"], widths, head_dim, dims["num_prefix_tokens"]
        )
    except Exception as e:
        return [f"its config does not fit its backbone record ({first_line(e)})"]
    own = {k: t for k, t in tensors.items() if not k.startswith("backbone.")}
    return _mismatches(own, expected)


class _StandIn(nn.Module):
    """Blocks of the recorded widths and a head: all a task file's shapes depend on."""

    def __init__(self, widths: list[int], head_dim: int, num_prefix_tokens: int) -> None:
        from timm.models.vision_transformer import Block

        super().__init__()
        self.blocks = nn.ModuleList(Block(w, num_heads=1, mlp_ratio=1.0) for w in widths)
        self.num_features = head_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.head = nn.Identity()


def _stand_in_tensors(
    config: AdapterConfig,
    num_classes: int,
    widths: list[int],
    head_dim: int,
    num_prefix_tokens: int,
) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = _StandIn(widths, head_dim, num_prefix_tokens)
        inject(model, config, name="t", num_classes=num_classes)
        expected = adapter_tensors(model, "t")
    return {k: t for k, t in expected.items() if not k.startswith("backbone.")}


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """Why ``tensors`` (read from an untrusted file) cannot be copied onto ``expected``: keys,
    shapes, integer-vs-float kind and non-finite values; empty when they fit."""
    return _mismatches(tensors, expected) + _not_finite(tensors)


def _not_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    bad = sorted(
        k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()
    )
    return [f"holds NaN or infinite values in {', '.join(bad[:10])}"] if bad else []


def _config_too_large(config: AdapterConfig) -> list[str]:
    """The config's own multipliers (a fixed adapter scale, LoRA's alpha / r) are weights too."""
    # With bottleneck_ratio the smallest rank a block can get is 1.
    factors = {"lora_alpha / bottleneck": config.lora_alpha / max(config.bottleneck or 1, 1)}
    if is_finite_number(config.scale):
        factors["scale"] = config.scale
    return [
        f"{k} {abs(v):g} is above {MAX_ABS_WEIGHT:g} in magnitude"
        for k, v in factors.items()
        if abs(v) > MAX_ABS_WEIGHT
    ]


def _too_large(tensors: dict[str, torch.Tensor]) -> list[str]:
    bad = sorted(
        k
        for k, t in tensors.items()
        if t.is_floating_point() and t.numel() and t.detach().abs().max().item() > MAX_ABS_WEIGHT
    )
    if not bad:
        return []
    return [f"holds values above {MAX_ABS_WEIGHT:g} in magnitude in {', '.join(bad[:10])}"]


def _size_problems(
    config: AdapterConfig, num_classes: int, header: dict[str, TensorInfo]
) -> list[str]:
    """Where the config's sizes (classes, bottleneck, prompt tokens) disagree with the shapes the
    file declares. Checked before anything is built, so a config asking for 10**9 classes is
    refused instead of allocated."""
    head = "head.1.weight" if config.head_batchnorm else "head.weight"
    # key suffix -> (what the config says, first dimension given the tensor's shape)
    expect: dict[str, tuple[str, Callable[[tuple[int, ...]], int | None]]] = {}
    if num_classes > 0:
        expect[head] = (f"num_classes={num_classes}", lambda shape: num_classes)
    rank = _rank_rule(config)
    if method_rule(config.method).bottleneck_adapter:
        expect[".adaptmlp.down_proj.weight"] = rank
    elif config.method == "lora":
        expect[".lora_A.weight"] = rank
    elif config.method == "vpt":
        expect[".prompts"] = (
            f"prompt_tokens={config.prompt_tokens}",
            lambda s: config.prompt_tokens,
        )
    problems = []
    for suffix, (said, size_of) in expect.items():
        found = [(k, t.shape) for k, t in header.items() if k == suffix or k.endswith(suffix)]
        wrong = [f"{k} {shape}" for k, shape in found if not shape or shape[0] != size_of(shape)]
        if not found:
            problems.append(f"{said} but the file has no {suffix.lstrip('.')} tensor")
        elif wrong:
            problems.append(f"{said} but the file has {', '.join(sorted(wrong)[:3])}")
    return problems


def _rank_rule(config: AdapterConfig) -> tuple[str, Callable[[tuple[int, ...]], int | None]]:
    """What the config says about the first dimension of ``down_proj``/``lora_A`` (r x width):
    one bottleneck, or one per block from the width that tensor reads (its second dimension)."""
    if config.bottleneck_ratio is None:
        return f"bottleneck={config.bottleneck}", lambda shape: config.bottleneck
    return (
        f"bottleneck_ratio={config.bottleneck_ratio:g} (round(ratio x width) per block)",
        lambda shape: config.bottleneck_for(shape[1]) if len(shape) == 2 else None,
    )


def load_adapter(model: nn.Module, directory: str | Path, name: str = "default") -> nn.Module:
    """Load an adapter directory into ``model`` as task ``name`` and make it active.

    The adapter is injected first if ``name`` does not exist yet. The files are checked on
    their own first (:func:`read_adapter_files`), then every tensor's key, shape and kind
    against the model, before anything is copied; on any error the model is left as it was.

    Raises:
        ValueError: damaged files, or the backbone does not match (width, depth, layers),
            listing the keys/shapes.
    """
    model = unwrap(model)
    info, tensors = read_adapter_files(directory)
    config = AdapterConfig.from_dict(info["config"])
    existing = getattr(model, "adaptformer", None)
    injected = existing is None or name not in existing.configs
    if not injected:
        _refuse_other_config(existing.configs[name], config, name, directory)
    _refuse_shared_backbone_change(existing, config, name, directory)
    head_before, active_before = active_head(model), existing.active if existing else None
    if injected:
        inject(model, config, name=name, num_classes=info["num_classes"])
    else:
        set_adapter(model, name)
    expected = adapter_tensors(model, name)
    problems = _mismatches(tensors, expected)
    if problems:
        if injected:  # leave the model as it was
            delete_adapter(model, name)
            if active_before is None:
                put_head(model, head_before)
        if active_before is not None:
            set_adapter(model, active_before)
        stored, here = info["backbone"], _backbone_info(model)
        raise ValueError(
            f"adapter in {directory} does not fit this model (adapter trained on "
            f"{stored.get('architecture')} width {stored.get('embed_dim')} depth "
            f"{stored.get('depth')}; model is {here['architecture']} width {here['embed_dim']} "
            f"depth {here['depth']}): " + "; ".join(problems)
        )
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(tensors[k])
    return model


def _refuse_shared_backbone_change(
    existing: Any, config: AdapterConfig, name: str, directory: str | Path
) -> None:
    """A ``full``/``bitfit`` task carries backbone tensors; copying them into a model that
    holds other tasks would change the backbone those tasks share (and their answers)."""
    others = sorted(set(existing.configs) - {name}) if existing is not None else []
    if method_rule(config.method).trains_backbone and others:
        raise ValueError(
            f"adapter in {directory} was trained with method {config.method}, which changes the "
            f"backbone's own weights, so it cannot be loaded beside the tasks {others[:5]} that "
            "share this backbone: load it into a model of its own"
        )


def _refuse_other_config(
    present: AdapterConfig, wanted: AdapterConfig, name: str, directory: str | Path
) -> None:
    """Loading into an existing task copies tensors only: its config (scale, LoRA scaling,
    position, activation, ...) would stay the old one and the task would answer neither as
    before nor as the file says, so another config is refused before anything changes."""
    old, new = present.to_dict(), wanted.to_dict()
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        raise ValueError(
            f"adapter {name!r} exists with another config than the one in {directory} "
            f"({', '.join(f'{k}: {old.get(k)!r} vs {new.get(k)!r}' for k in differ[:4])}); "
            f"delete_adapter(model, {name!r}) first or load it under another name"
        )


def _mismatches(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], limit: int = 10
) -> list[str]:
    """Human-readable key and shape differences between a file and a model (first ``limit``)."""

    out = key_shape_problems(
        tensors,
        expected,
        labels=("missing from file", "not in model", "shape mismatch"),
        sides=("file", "model"),
        shown=limit,
    )
    kind = sorted(
        f"{k} (file {tensors[k].dtype} vs model {expected[k].dtype})"
        for k in set(tensors) & set(expected)
        if tensors[k].is_floating_point() != expected[k].is_floating_point()
    )
    if kind:
        out.append(f"wrong kind of number: {clip(kind, limit)}")
    return out
