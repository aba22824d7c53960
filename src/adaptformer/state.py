"""Adapter-only files: ``adapter_config.json`` + ``adapter_model.safetensors``.

A file holds one task: its adapter tensors and its head, with the task name stripped from every
key (``blocks.3.adaptmlp.down_proj.weight``), so it loads under any name. Loading checks the
exact key set and every shape before touching the model and raises a ``ValueError`` that lists
what does not fit, instead of leaving anything silently uninitialised.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import AdapterConfig
from .inject import (
    AdaptedBlock,
    adapter_state,
    delete_adapter,
    get_head,
    inject,
    set_adapter,
    unwrap,
)
from .layers import LoRALinear
from .methods import backbone_parameters, fresh_parameters

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "adaptformer-adapter/1"


def _backbone_info(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {
        "architecture": cfg.get("architecture", type(model).__name__),
        "embed_dim": int(getattr(model, "embed_dim", model.num_features)),
        "depth": len(model.blocks),
        "num_prefix_tokens": int(getattr(model, "num_prefix_tokens", 0)),
    }


def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Task ``name``'s tensors keyed without the task name: adapter, head (with buffers), and
    for ``full``/``bitfit`` the backbone weights that method changes."""
    model = unwrap(model)
    config = adapter_state(model).configs[name]
    out: dict[str, torch.Tensor] = {}
    for path, m in model.named_modules():
        if isinstance(m, AdaptedBlock):
            if name in m.adaptmlp:
                for k, t in m.adaptmlp[name].state_dict().items():
                    out[f"{path}.adaptmlp.{k}"] = t
            if name in m.prompts:
                out[f"{path}.prompts"] = m.prompts[name]
        elif isinstance(m, LoRALinear) and name in m.lora_A:
            out[f"{path}.lora_A.weight"] = m.lora_A[name].weight
            out[f"{path}.lora_B.weight"] = m.lora_B[name].weight
    for k, t in get_head(model, name).state_dict().items():
        out[f"head.{k}"] = t
    out.update({f"backbone.{k}": p for k, p in fresh_parameters(model).items()})
    if config.method == "full":
        out.update({f"backbone.{k}": p for k, p in backbone_parameters(model).items()})
    elif config.method == "bitfit":
        out.update(
            {
                f"backbone.{k}": p
                for k, p in backbone_parameters(model).items()
                if k.endswith("bias")
            }
        )
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
    _atomic(directory / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), {"format": FORMAT}))
    _atomic(
        directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(info, indent=2) + "\n")
    )
    return directory


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter directory, with clear errors."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: pass the directory that save_adapter() wrote "
            f"(it holds {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an adaptformer adapter file (format {info.get('format')!r})"
        )
    return info


def load_adapter(model: nn.Module, directory: str | Path, name: str = "default") -> nn.Module:
    """Load an adapter directory into ``model`` as task ``name`` and make it active.

    The adapter is injected first if ``name`` does not exist yet. Every tensor's key and shape is
    checked against the model before anything is copied.

    Raises:
        ValueError: the backbone does not match (width, depth, layers), listing the keys/shapes.
    """
    model = unwrap(model)
    info = read_adapter_config(directory)
    config = AdapterConfig.from_dict(info["config"])
    tensors = load_file(str(Path(directory) / WEIGHTS_NAME))
    existing = getattr(model, "adaptformer", None)
    injected = existing is None or name not in existing.configs
    head_before, active_before = model.head, existing.active if existing else None
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
                model.head = head_before
        if active_before is not None:
            set_adapter(model, active_before)
        stored, here = info["backbone"], _backbone_info(model)
        raise ValueError(
            f"adapter in {directory} does not fit this model (adapter trained on "
            f"{stored['architecture']} width {stored['embed_dim']} depth {stored['depth']}; "
            f"model is {here['architecture']} width {here['embed_dim']} depth {here['depth']}): "
            + "; ".join(problems)
        )
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(tensors[k])
    return model


def _mismatches(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], limit: int = 10
) -> list[str]:
    """Human-readable key and shape differences between a file and a model (first ``limit``)."""

    def clip(items: list[str]) -> str:
        more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k} (file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in set(tensors) & set(expected)
        if tensors[k].shape != expected[k].shape
    )
    out = []
    if missing:
        out.append(f"missing from file: {clip(missing)}")
    if unexpected:
        out.append(f"not in model: {clip(unexpected)}")
    if wrong:
        out.append(f"shape mismatch: {clip(wrong)}")
    return out
