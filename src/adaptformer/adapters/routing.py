"""Per-batch task routing: which rows of a batch run which task's adapters.

One frozen backbone serves many tasks ("scalable" in AdaptFormer, Chen et al., NeurIPS 2022,
https://arxiv.org/abs/2205.13535). While a routing is current (:func:`routed`, a context
variable: re-entrant and thread-safe), every ``AdaptedBlock`` and ``LoRALinear`` of the routed
model stops using its single active adapter and asks the routing for each row's own adapter
output. The frozen parts (attention, MLP, norms) still run once over the whole batch. Two
layouts share one block implementation:

- :class:`BankRouting`: the task of each row is an index tensor into the model's
  :class:`~adaptformer.adapters.banks.TaskBanks`; each adapter point is one batched product on
  weights gathered per row. A fixed number of kernels whatever the number of tasks, static
  shapes, rows in any order: used for inference, export (tracing) and ``torch.compile``.
- :class:`GroupedRouting`: rows sorted so that each task's rows are contiguous; every adapter
  runs on its own rows (batch slices are views) and the pieces are concatenated. It calls the
  task's own modules, so it is used where banks cannot be: training-mode passes (dropout,
  drop-path, gradients reaching each task's parameters).

VPT prompts change the token count per task, so mixed batches pad prompts to the largest count
present and mask the padding out of attention as keys (an additive ``-inf`` bias: the softmax
weights of real tokens are then exactly those of the unpadded sequence). Padded query rows are
computed and thrown away with the prompts. Prompts are read from the tasks' own parameters with
one masked select per prompt task that may be in the batch (they are not banked).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .banks import Cut, TaskBanks
from .context import routing_scope
from .families.base import Delta
from .inject import AdaptedBlock, unwrap
from .layers import LoRALinear

RowFn = Callable[[torch.Tensor], torch.Tensor]


class TaskRouting:
    """Base class: row selection primitives plus the routed block forward shared by both layouts.

    A routing object lives for one forward pass: it carries the shallow-VPT prompt slots that
    persist from block to block.
    """

    names: tuple[str, ...]  # tasks that rows of this batch may belong to (prompts read these)
    members: set[int]  # ids of the modules routed (one model's): other models run as usual

    def __init__(self) -> None:
        self._kept_valid: torch.Tensor | None = None  # (B, K): real kept (shallow) prompt slots
        self._kept_full = True  # statically known: every row's kept slots are all real
        self._kept_tasks: set[str] = set()
        self.members = set()

    def covers(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to the routed model."""
        return id(module) in self.members

    # -- layout-specific primitives -------------------------------------------------------------
    def adapter_delta(self, block: AdaptedBlock) -> Delta:
        """``delta(point, src)``: each row's own AdaptMLP update at ``point`` of ``block``."""
        raise NotImplementedError

    def lora_delta(self, layer: LoRALinear, x: torch.Tensor) -> torch.Tensor | None:
        """Each row's own LoRA update ``B(A(x)) * alpha / r`` (None if no task has one here).

        ``x`` has one row per sample, or ``k`` consecutive rows per sample (LoRA inside
        windowed attention sees Swin's windows, ``B * k`` rows, sample-major).
        """
        raise NotImplementedError

    def rows(self, values: dict[str, torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
        """A ``(B, *shape)`` tensor holding each row's task value (``fill`` for other tasks)."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def block_forward(
        self,
        block: AdaptedBlock,
        x: torch.Tensor,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """``AdaptedBlock.forward`` with each row's own prompts and AdaptMLP.

        ``args``/``kwargs`` are what the model passed to the block (RoPE, a relative-position
        bias); a caller's attention mask or causal flag is refused.
        """
        kwargs = dict(kwargs or {})
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise ValueError(
                "mixed-task batches do not support attn_mask or causal attention; run the tasks "
                "one at a time with set_adapter() for masked inputs"
            )
        names = self.names if block.adapters_enabled else ()
        n = block.num_prefix_tokens
        shallow = {
            t: block.prompts[t] for t in names if t in block.prompts and t in block.keep_prompts
        }
        if shallow:
            prompts, valid, full = self._prompt_rows(shallow, x)
            x = torch.cat([x[:, :n], prompts, x[:, n:]], dim=1)
            kept = self._kept_valid
            self._kept_valid = valid if kept is None else torch.cat([valid, kept], dim=1)
            self._kept_full = self._kept_full and full
            self._kept_tasks |= set(shallow)
        deep = {t: block.prompts[t] for t in names if t in block.prompts and t not in shallow}
        valid, full, temp = self._kept_valid, self._kept_full, 0
        if deep:
            prompts, deep_valid, deep_full = self._prompt_rows(deep, x)
            x = torch.cat([x[:, :n], prompts, x[:, n:]], dim=1)
            temp = prompts.shape[1]
            valid = deep_valid if valid is None else torch.cat([deep_valid, valid], dim=1)
            full = full and deep_full
        if valid is not None and not full:
            if block.family.mask_kwarg is None:
                raise ValueError(
                    f"{block.family.name} attention takes no attention mask, so prompt tasks "
                    "with different prompt counts cannot share a batch; run them one at a time"
                )
            kwargs[block.family.mask_kwarg] = _key_padding_bias(valid, n, x)
        delta = self.adapter_delta(block)
        with block.prompt_scope(x, args, kwargs):
            x = block.residual(x, delta, *args, **kwargs)
        if temp:
            x = torch.cat([x[:, :n], x[:, n + temp :]], dim=1)
        dropped = {t for t in names if t in block.drop_prompts_after} & self._kept_tasks
        if dropped:
            x = self._drop_kept(x, dropped, n)
        return x

    def _prompt_rows(
        self, prompts: dict[str, torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Prompts per row padded to the largest count, which slots are real, and whether all are.

        ``full`` is decided from the configs alone (never from data), so traced graphs stay valid.
        """
        width = max(p.shape[0] for p in prompts.values())
        padded = {
            t: F.pad(p.to(x.dtype), (0, 0, 0, width - p.shape[0])) for t, p in prompts.items()
        }
        fill = x.new_zeros(width, x.shape[-1])
        rows = self.rows(padded, fill)
        counts = {t: torch.tensor(p.shape[0], device=x.device) for t, p in prompts.items()}
        count = self.rows(counts, torch.tensor(0, device=x.device))
        valid = torch.arange(width, device=x.device)[None, :] < count[:, None]
        full = set(prompts) == set(self.names) and all(
            p.shape[0] == width for p in prompts.values()
        )
        return rows, valid, full

    def _drop_kept(self, x: torch.Tensor, dropped: set[str], n: int) -> torch.Tensor:
        """Shallow prompts of ``dropped`` end here: invalidate their slots; remove all when none
        are left (this happens after the last block, where every shallow task drops)."""
        self._kept_tasks -= dropped
        assert self._kept_valid is not None
        if not self._kept_tasks:
            count = self._kept_valid.shape[1]
            self._kept_valid, self._kept_full = None, True
            return torch.cat([x[:, :n], x[:, n + count :]], dim=1)
        true = torch.tensor(True, device=x.device)
        gone = self.rows(dict.fromkeys(dropped, true), torch.tensor(False, device=x.device))
        self._kept_valid = self._kept_valid & ~gone[:, None]
        self._kept_full = False
        return x


class BankRouting(TaskRouting):
    """Row ``i`` runs the task in slot ``index[i]`` of ``banks``; traceable and compilable.

    Args:
        banks: the stacked adapters (current for every task ``index`` may name).
        index: ``(B,)`` int64 slots, the only per-batch input of the adapters and heads.
        names: the tasks rows may belong to, needed only when some of them have VPT prompts
            (prompts are per task, so their selection is unrolled over these); ``()`` otherwise,
            which keeps the pass independent of the mix.
        plan: ``TaskBanks.plan`` of the batch's tasks, when the pass need not serve every mix
            (eager): banks no task of the batch uses are skipped, ranks cut to the batch's
            largest, and a bank only some rows' tasks use runs on those rows. None (compiled,
            traced) computes every bank on every row.
    """

    def __init__(
        self,
        banks: TaskBanks,
        index: torch.Tensor,
        names: Sequence[str] = (),
        plan: dict[int, Cut] | None = None,
    ) -> None:
        super().__init__()
        self.banks, self.index, self.names = banks, index, tuple(names)
        self.plan = plan
        self.members = banks.members

    def adapter_delta(self, block: AdaptedBlock) -> Delta:
        points = self.banks.block_banks(block) if block.adapters_enabled else {}
        index, plan = self.index, self.plan

        def delta(point: str, src: torch.Tensor) -> torch.Tensor | None:
            bank = points.get(point)
            if bank is None or bank.empty:
                return None
            if plan is None:
                return bank(src, index)
            cut = plan.get(id(bank))
            return None if cut is None else bank(src, index, cut)

        return delta

    def lora_delta(self, layer: LoRALinear, x: torch.Tensor) -> torch.Tensor | None:
        if not layer.adapters_enabled:
            return None
        return self.banks.lora_delta(layer, x, self.index, self.plan)

    def rows(self, values: dict[str, torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
        out = fill.expand(self.index.shape[0], *fill.shape)
        for t, v in values.items():
            mask = (self.index == self.banks.slots[t]).view(-1, *[1] * fill.dim())
            out = torch.where(mask, v.to(fill.dtype), out)
        return out


class GroupedRouting(TaskRouting):
    """Rows sorted by task: ``groups`` lists ``(task, start, stop)`` covering the batch in order."""

    def __init__(self, groups: Sequence[tuple[str, int, int]]) -> None:
        super().__init__()
        self.groups = list(groups)
        self.names = tuple(t for t, _, _ in self.groups)

    def bind(self, model: nn.Module) -> None:
        """Route ``model``'s adapted modules (and no other model's)."""
        self.members = {id(m) for m in model.modules() if isinstance(m, (AdaptedBlock, LoRALinear))}

    def apply(self, fns: dict[str, RowFn], src: torch.Tensor) -> torch.Tensor | None:
        """Each row of ``src`` through its task's function, zeros for tasks without one
        (None when no task of this batch has a function)."""
        if not any(t in fns for t in self.names):
            return None
        if len(self.groups) == 1:
            return fns[self.names[0]](src)
        k = src.shape[0] // self.groups[-1][2]  # rows per sample (Swin's windows)
        groups = [(t, a * k, b * k) for t, a, b in self.groups]
        done = {t: fns[t](src[a:b]) for t, a, b in groups if t in fns}
        shape = next(iter(done.values())).shape[1:]
        pieces = [done[t] if t in done else src.new_zeros((b - a, *shape)) for t, a, b in groups]
        return torch.cat(pieces, dim=0)

    def adapter_delta(self, block: AdaptedBlock) -> Delta:
        names = self.names if block.adapters_enabled else ()
        adapters = {t: block.adapters_of(t) for t in names}

        def delta(point: str, src: torch.Tensor) -> torch.Tensor | None:
            fns = {t: a for t, mods in adapters.items() for a in mods if a.reads == point}
            return self.apply(fns, src) if fns else None  # each row its own task's adapter

        return delta

    def lora_delta(self, layer: LoRALinear, x: torch.Tensor) -> torch.Tensor | None:
        if not layer.adapters_enabled:
            return None
        fns = {t: functools.partial(layer.update, t) for t in self.names if layer.has(t)}
        return self.apply(fns, x) if fns else None

    def rows(self, values: dict[str, torch.Tensor], fill: torch.Tensor) -> torch.Tensor:
        pieces = [values.get(t, fill).expand(b - a, *fill.shape) for t, a, b in self.groups]
        return torch.cat(pieces, dim=0)


def _key_padding_bias(valid: torch.Tensor, prefix: int, x: torch.Tensor) -> torch.Tensor:
    """Additive attention bias ``(B, 1, 1, N)``: ``-inf`` on padded prompt slots, else 0.

    Padded slots sit right after the ``prefix`` tokens (where prompts are inserted).
    """
    b, n_tokens = x.shape[0], x.shape[1]
    slots = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
    slots = slots.masked_fill(~valid, float("-inf"))
    before = x.new_zeros(b, prefix)
    after = x.new_zeros(b, n_tokens - prefix - valid.shape[1])
    return torch.cat([before, slots, after], dim=1)[:, None, None, :]


@contextlib.contextmanager
def routed(model: nn.Module, routing: TaskRouting) -> Iterator[nn.Module]:
    """Route every adapted module of ``model`` through ``routing`` for the enclosed passes
    (in this thread or asyncio task only: other callers of the model are not affected)."""
    model = unwrap(model)
    if isinstance(routing, GroupedRouting):
        routing.bind(model)
    with routing_scope(routing):
        yield model
