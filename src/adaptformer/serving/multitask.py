"""Mixed-task batches: one backbone pass where every image runs its own task's adapters and head.

AdaptFormer (Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535) calls itself
"scalable" because one frozen backbone serves many tasks through tiny per-task modules. Here that
holds within a single batch: ``forward_tasks(model, x, ["cars", "birds", "cars"])`` sorts the rows
by task once, runs ``forward_features`` + pooling once with per-task routing inside each adapted
block (see :mod:`adaptformer.adapters.routing`), applies each task's head to its own rows and restores the
input order. No Python loop over samples, only over the tasks present.

Output: heads may have different class counts, so logits come back as ONE padded tensor
``(B, max classes)`` with ``-inf`` beyond each row's class count, plus the per-row counts. ``-inf``
keeps ``softmax``/``argmax``/``topk`` of a padded row equal to those of its unpadded logits, and a
single tensor stays cheap to move and to export; :meth:`MultiTaskOutput.per_sample` gives the
trimmed list form.

Supported per task: AdaptFormer (parallel or sequential), LoRA, VPT (deep or shallow; prompts are
padded to the largest count and masked) and linear-probe (head only) tasks. ``full`` and
``bitfit`` tasks change the shared backbone itself and cannot share a batch with other tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.config import method_rule
from ..adapters.inject import adapter_state, get_head, unwrap
from ..adapters.routing import GroupedRouting, routed
from ..adapters.trainable import adapter_parameters


@dataclass(frozen=True)
class MultiTaskOutput:
    """What :func:`forward_tasks` returns, rows in the input order.

    Attributes:
        logits: ``(B, max classes)``; row ``i`` holds its task's logits in the first
            ``num_classes[i]`` columns and ``-inf`` after them.
        num_classes: the valid width of each row (its task head's output size).
        tasks: the task of each row, as given.
        features: ``(B, D)`` pooled pre-logits features each head saw.
    """

    logits: torch.Tensor
    num_classes: list[int]
    tasks: list[str]
    features: torch.Tensor

    def per_sample(self) -> list[torch.Tensor]:
        """Each row's logits without padding."""
        return [row[:c] for row, c in zip(self.logits, self.num_classes, strict=True)]

    def task_rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(row indices, their unpadded logits ``(n, classes)``) of task ``name``."""
        index = [i for i, t in enumerate(self.tasks) if t == name]
        if not index:
            raise KeyError(f"no row of this batch belongs to task {name!r}")
        rows = torch.tensor(index, device=self.logits.device)
        return rows, self.logits[rows, : self.num_classes[index[0]]]


def forward_tasks(model: nn.Module, x: torch.Tensor, tasks: Sequence[str]) -> MultiTaskOutput:
    """Run each image through its own task (adapters and head) in one backbone pass.

    Args:
        model: a model with several tasks from :func:`adaptformer.inject` / ``load_adapter``;
            its active adapter is neither used nor changed.
        x: ``(B, C, H, W)`` images.
        tasks: ``B`` task names, one per image, in any order, repeated or not.

    Returns:
        Padded logits, per-row class counts, the tasks and the pooled features.

    Raises:
        ValueError: unknown task names, a length mismatch, ``full``/``bitfit`` tasks mixed with
            others, or gradient checkpointing in training mode.
    """
    tasks = list(tasks)
    feats, groups, order = _run(model, x, tasks)
    model = unwrap(model)
    pieces = [get_head(model, t)(feats[a:b]) for t, a, b in groups]
    width = max(p.shape[1] for p in pieces)
    logits = torch.cat([F.pad(p, (0, width - p.shape[1]), value=float("-inf")) for p in pieces])
    sizes = dict(zip((t for t, _, _ in groups), (p.shape[1] for p in pieces), strict=True))
    if order is not None:
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        logits, feats = logits.index_select(0, inverse), feats.index_select(0, inverse)
    return MultiTaskOutput(logits, [sizes[t] for t in tasks], tasks, feats)


def forward_all_tasks(
    model: nn.Module, x: torch.Tensor, tasks: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Every task's logits for every image, from one backbone pass.

    Tasks that add nothing to the backbone (linear probes) share one bare-backbone copy of each
    image; every other task gets its own copy, so the pass holds ``B x (adapter tasks + 1)`` rows
    at most.

    Args:
        model: a model with several tasks.
        x: ``(B, C, H, W)`` images.
        tasks: the tasks to answer (default: all of the model's tasks).

    Returns:
        ``{task: (B, classes) logits}`` in the order of ``tasks``.
    """
    m = unwrap(model)
    known = adapter_state(m).configs
    names = list(dict.fromkeys(tasks)) if tasks is not None else sorted(known)
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ValueError(
            f"cannot answer task(s) {unknown or names}; this model has {sorted(known)}"
        )
    variant = {t: (t if adapter_parameters(m, t) else None) for t in names}
    bare = next((t for t in names if variant[t] is None), None)
    runs = list(dict.fromkeys(variant[t] or bare for t in names))
    b = x.shape[0]
    row_tasks = [r for r in runs for _ in range(b)]
    feats, groups, _ = _run(model, x.repeat(len(runs), 1, 1, 1), row_tasks)
    # _run's features are task-sorted; a stable sort keeps each run's images in input order
    rows = {t: feats[a:e] for t, a, e in groups}
    return {t: get_head(m, t)(rows[variant[t] or bare]) for t in names}


class MultiTaskModel(nn.Module):
    """``MultiTaskModel(model)(x, tasks=[...])``: :func:`forward_tasks` as a module call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, tasks: Sequence[str]) -> MultiTaskOutput:
        return forward_tasks(self.model, x, tasks)


def _run(
    model: nn.Module, x: torch.Tensor, tasks: list[str]
) -> tuple[torch.Tensor, list[tuple[str, int, int]], torch.Tensor | None]:
    """Pooled features of the task-sorted batch, its groups, and the sorting permutation."""
    model = unwrap(model)
    _check(model, x, tasks)
    names = sorted(set(tasks))
    rank = {t: i for i, t in enumerate(names)}
    keys = torch.tensor([rank[t] for t in tasks])
    order = torch.sort(keys, stable=True).indices
    counts = torch.bincount(keys, minlength=len(names)).tolist()
    bounds = [0, *torch.tensor(counts).cumsum(0).tolist()]
    groups = [(t, bounds[i], bounds[i + 1]) for i, t in enumerate(names)]
    if torch.equal(order, torch.arange(len(tasks))):
        order = None  # already grouped: no gather needed
    else:
        order = order.to(x.device)
        x = x.index_select(0, order)
    with routed(model, GroupedRouting(groups)):
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return feats, groups, order


def _check(model: nn.Module, x: torch.Tensor, tasks: list[str]) -> None:
    state = adapter_state(model)
    if len(tasks) != x.shape[0]:
        raise ValueError(f"got {len(tasks)} task names for a batch of {x.shape[0]} images")
    unknown = sorted(set(tasks) - set(state.configs))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; this model has {sorted(state.configs)}")
    changing = sorted(t for t in set(tasks) if method_rule(state.configs[t].method).trains_backbone)
    if changing and len(set(tasks)) > 1:
        raise ValueError(
            f"task(s) {changing} were trained with full/bitfit, which changes the shared backbone; "
            "they cannot share a batch with other tasks"
        )
    if model.training and getattr(model, "grad_checkpointing", False):
        raise ValueError(
            "mixed-task batches cannot use gradient checkpointing (the recomputation in backward "
            "runs after the routing is gone); call model.set_grad_checkpointing(False)"
        )


def top_k(logits: torch.Tensor, k: int, multilabel: bool) -> list[tuple[int, float]]:
    """The ``k`` most likely outputs of one row's logits as ``(index, probability)``: sigmoid
    for multi-label tasks, softmax otherwise (``adaptformer predict`` and the server)."""
    probs = logits.float().sigmoid() if multilabel else logits.float().softmax(0)
    top = probs.topk(min(k, probs.numel()))
    return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
