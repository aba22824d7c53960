"""Mixed-task batches: one backbone pass where every image runs its own task's adapters and head.

AdaptFormer (Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535) calls itself
"scalable" because one frozen backbone serves many tasks through tiny per-task modules. Here that
holds within a single batch: ``forward_tasks(model, x, ["cars", "birds", "cars"])`` runs
``forward_features`` + pooling once; inside each adapted block every row gets its own task's
adapter update from weights stacked per task and gathered by a task-index tensor
(:mod:`adaptformer.adapters.banks`), and the heads are gathered the same way. A fixed number of
kernels whatever the number of tasks; rows stay in their order. Training-mode batches (dropout,
drop-path, gradients to the tasks' parameters) sort the rows by task instead and run each task's
own modules on its rows (:class:`adaptformer.adapters.routing.GroupedRouting`).

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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.banks import TaskBanks, task_banks
from ..adapters.config import method_rule
from ..adapters.context import routing_scope
from ..adapters.inject import adapter_state, get_head, head_width, unwrap
from ..adapters.routing import BankRouting, GroupedRouting, routed
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


def forward_tasks(
    model: nn.Module, x: torch.Tensor, tasks: Sequence[str], compile: bool | str = False
) -> MultiTaskOutput:
    """Run each image through its own task (adapters and head) in one backbone pass.

    Args:
        model: a model with several tasks from :func:`adaptformer.inject` / ``load_adapter``;
            its active adapter is neither used nor changed.
        x: ``(B, C, H, W)`` images.
        tasks: ``B`` task names, one per image, in any order, repeated or not.
        compile: run the pass through ``torch.compile`` (True: the default inductor backend;
            a string names another backend). Compiled once per model and batch shape; new
            mixes of tasks and added or removed tasks reuse it (see docs/multitask.md for
            what does recompile). Eval-mode batches without VPT tasks only; others run eagerly.

    Returns:
        Padded logits, per-row class counts, the tasks and the pooled features.

    Raises:
        ValueError: unknown task names, a length mismatch, ``full``/``bitfit`` tasks mixed with
            others, or gradient checkpointing in training mode.
    """
    tasks = list(tasks)
    model = unwrap(model)
    _check(model, x, tasks)
    present = list(dict.fromkeys(tasks))
    widths = dict(zip(present, task_widths(model, present), strict=True))
    if uses_banks(model, present):
        width = max(widths.values())
        logits, feats = _banked(model, x, tasks, present, compile, width)
        logits = logits[:, :width]
    else:
        logits, feats = grouped_pass(model, x, tasks)
    return MultiTaskOutput(logits, [widths[t] for t in tasks], tasks, feats)


def grouped_pass(
    model: nn.Module, x: torch.Tensor, tasks: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded logits and features with rows sorted by task and each task's own modules run on
    its rows (:class:`GroupedRouting`): what training-mode batches use, and an independent
    reference for the banks (export verification, tests). Rows come back in input order."""
    model = unwrap(model)
    feats, groups, order = _grouped(model, x, list(tasks))
    pieces = [get_head(model, t)(feats[a:b]) for t, a, b in groups]
    width = max(p.shape[1] for p in pieces)
    logits = torch.cat([F.pad(p, (0, width - p.shape[1]), value=float("-inf")) for p in pieces])
    if order is not None:
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        logits, feats = logits.index_select(0, inverse), feats.index_select(0, inverse)
    return logits, feats


def forward_all_tasks(
    model: nn.Module,
    x: torch.Tensor,
    tasks: Sequence[str] | None = None,
    compile: bool | str = False,
) -> dict[str, torch.Tensor]:
    """Every task's logits for every image, from one backbone pass.

    Tasks that add nothing to the backbone (linear probes) share one bare-backbone copy of each
    image; every other task gets its own copy, so the pass holds ``B x (adapter tasks + 1)`` rows
    at most.

    Args:
        model: a model with several tasks.
        x: ``(B, C, H, W)`` images.
        tasks: the tasks to answer (default: all of the model's tasks).
        compile: as in :func:`forward_tasks`.

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
    feats = forward_tasks(m, x.repeat(len(runs), 1, 1, 1), row_tasks, compile).features
    rows = {t: feats[i * b : (i + 1) * b] for i, t in enumerate(runs)}
    return {t: get_head(m, t)(rows[variant[t] or bare]) for t in names}


class MultiTaskModel(nn.Module):
    """``MultiTaskModel(model)(x, tasks=[...])``: :func:`forward_tasks` as a module call."""

    def __init__(self, model: nn.Module, compile: bool | str = False) -> None:
        super().__init__()
        self.model = model
        self.compile = compile

    def forward(self, x: torch.Tensor, tasks: Sequence[str]) -> MultiTaskOutput:
        return forward_tasks(self.model, x, tasks, self.compile)


def task_widths(model: nn.Module, names: Sequence[str]) -> list[int]:
    """Output width of each task's head (its classes; features for a head-less task)."""
    state = adapter_state(model)
    return [state.num_classes[t] or head_width(model) for t in names]


def uses_banks(model: nn.Module, present: Sequence[str]) -> bool:
    """Whether a mixed batch of ``present`` tasks runs on the banks (gathered, fixed cost).

    Banks are copies of the task modules made for inference: a training-mode pass (dropout,
    drop-path, BatchNorm statistics) or one that must send gradients to a task's parameters
    runs each task's own modules on its rows instead (:class:`GroupedRouting`).
    """
    model = unwrap(model)
    if model.training:
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(
        p.requires_grad
        for t in present
        for p in (*adapter_parameters(model, t).values(), *get_head(model, t).parameters())
    )


def banked_pass(
    model: nn.Module,
    banks: TaskBanks,
    x: torch.Tensor,
    index: torch.Tensor,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded logits (``width`` columns if given) and pooled features of a batch whose rows run
    the tasks in ``index``'s slots: the one function the eager, traced (export) and compiled
    passes share. The :class:`BankRouting` for ``index`` must be current (``routing_scope``)."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    return banks.head(feats, index, width), feats


_COMPILED: dict[str, Any] = {}


def compiled_pass(backend: bool | str = True) -> Any:
    """:func:`banked_pass` under ``torch.compile`` (one per backend, cached: dynamo keeps a
    graph per model and input shape, guarded on the banks' shapes, never on the mix)."""
    name = "inductor" if backend is True else str(backend)
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(banked_pass, backend=name)
    return _COMPILED[name]


def _banked(
    model: nn.Module,
    x: torch.Tensor,
    tasks: list[str],
    present: list[str],
    compile: bool | str,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    configs = adapter_state(model).configs
    prompted = any(configs[t].method == "vpt" for t in present)
    compiled = bool(compile) and not prompted
    banks = task_banks(model, present, every=compiled)
    index = banks.index(tasks)
    names = present if prompted else ()
    if compiled:
        # Prompt selection is unrolled over the tasks present, so prompted batches run eagerly;
        # without prompts the compiled pass does not depend on which tasks are present at all.
        banks.mark_dynamic()
        with routing_scope(BankRouting(banks, index, names)):
            return compiled_pass(compile)(model, banks, x, index)
    # Eager: compute only the banks, ranks, rows and head widths the batch's tasks use.
    with routing_scope(BankRouting(banks, index, names, banks.plan(tasks))):
        return banked_pass(model, banks, x, index, width)


def _grouped(
    model: nn.Module, x: torch.Tensor, tasks: list[str]
) -> tuple[torch.Tensor, list[tuple[str, int, int]], torch.Tensor | None]:
    """Pooled features of the task-sorted batch, its groups, and the sorting permutation."""
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
