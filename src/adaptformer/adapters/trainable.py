"""Which parameters train, decided by the model's structure, never by checkpoint key names.

The reference code trains "whatever the checkpoint did not contain", so an unconverted
checkpoint silently leaves the backbone random and trainable. Here each method names the
modules it trains, and everything else is frozen.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from torch import nn

from .config import method_rule
from .inject import active_head, adapter_pieces, adapter_state, unwrap

_log = logging.getLogger(__name__)


def adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The parameters adapter ``name`` added to the backbone (AdaptMLP, prompts, LoRA)."""
    out: dict[str, nn.Parameter] = {}
    for path, piece in adapter_pieces(model, name):
        if isinstance(piece, nn.Parameter):
            out[f"{path}.{name}"] = piece
        else:
            out.update({f"{path}.{name}.{k}": p for k, p in piece.named_parameters()})
    return out


def _task_parameter_ids(model: nn.Module) -> set[int]:
    """Ids of every parameter that belongs to some task (adapters and heads), not the backbone."""
    state = adapter_state(model)
    ids = {id(p) for name in state.configs for p in adapter_parameters(model, name).values()}
    ids |= {id(p) for p in active_head(model).parameters()}
    if hasattr(model, "task_heads"):
        ids |= {id(p) for p in model.task_heads.parameters()}
    return ids


def backbone_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The pretrained backbone's parameters: everything that is not an adapter or a head."""
    model = unwrap(model)
    if hasattr(model, "adaptformer"):
        task = _task_parameter_ids(model)
    else:
        task = {id(p) for p in model.get_classifier().parameters()}
    return {k: p for k, p in model.named_parameters() if id(p) not in task}


def fresh_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Backbone parameters the checkpoint could not provide, named in
    ``model.fresh_parameter_names``: e.g. the zero-initialised ``time_embed`` of an image
    backbone inflated to video (without training it the model cannot tell frame order), or
    ``fc_norm`` after a VideoMAE pre-training checkpoint. They train with every method and are
    saved in the task file."""
    model = unwrap(model)
    names = getattr(model, "fresh_parameter_names", ())
    backbone = backbone_parameters(model)
    return {k: backbone[k] for k in sorted(names) if k in backbone}


@dataclass(frozen=True)
class ParamCount:
    """Trainable vs. total parameters; ``backbone`` excludes every adapter and head."""

    trainable: int
    total: int
    backbone: int

    @property
    def trainable_percent(self) -> float:
        """Trainable parameters as a percentage of the backbone (the paper's convention)."""
        return 100.0 * self.trainable / max(self.backbone, 1)

    def __str__(self) -> str:
        return (
            f"trainable {self.trainable:,} / total {self.total:,} parameters "
            f"({self.trainable_percent:.2f}% of the {self.backbone:,}-parameter backbone)"
        )


def count_parameters(model: nn.Module) -> ParamCount:
    model = unwrap(model)
    params = list(model.parameters())
    return ParamCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
        backbone=sum(p.numel() for p in backbone_parameters(model).values()),
    )


def trainable_parameters(
    model: nn.Module, method: str, name: str | None = None
) -> list[nn.Parameter]:
    """The parameters ``method`` trains for task ``name`` (default: the active task).

    Only that task's adapter and head: other tasks in the same model stay frozen. ``full`` and
    ``bitfit`` also train (shared) backbone weights, which changes every task.
    """
    rule = method_rule(method)
    model = unwrap(model)
    state = adapter_state(model)
    name = name or state.active
    if name != state.active:
        raise ValueError(f"task {name!r} is not active; call set_adapter(model, {name!r}) first")
    head = list(active_head(model).parameters()) + list(fresh_parameters(model).values())
    if rule.adds_modules:
        own = list(adapter_parameters(model, name).values())
        if not own:
            raise ValueError(
                f"method {method!r} needs adapter {name!r} injected with method={method!r} "
                f"(it was injected as {state.configs[name].method!r})"
            )
        return own + head
    shared = list(shared_backbone_parameters(model, method).values())
    return shared + [p for p in head if all(p is not b for b in shared)]


def shared_backbone_parameters(model: nn.Module, method: str) -> dict[str, nn.Parameter]:
    """The shared backbone weights ``method`` trains (all for ``full``, the biases for
    ``bitfit``, none otherwise): a task file of such a method must carry them."""
    which = method_rule(method).trains_backbone
    if which is None:
        return {}
    backbone = backbone_parameters(model)
    return backbone if which == "all" else {k: p for k, p in backbone.items() if k.endswith("bias")}


def mark_trainable(model: nn.Module, method: str, name: str | None = None) -> ParamCount:
    """Freeze everything, then unfreeze what ``method`` trains; log and return the counts."""
    chosen = {id(p) for p in trainable_parameters(model, method, name)}
    for p in unwrap(model).parameters():
        p.requires_grad_(id(p) in chosen)
    counts = count_parameters(model)
    _log.info("%s: %s", method, counts)
    return counts


def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 over the backbone's tensors (names, shapes, bytes): which backbone an adapter needs."""
    h = hashlib.sha256()
    for name, p in sorted(backbone_parameters(model).items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
