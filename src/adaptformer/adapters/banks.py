"""Every task's adapters stacked in banks and gathered per row: mixed batches at a fixed cost.

Serving many tasks from one backbone pays only if a batch that mixes tasks costs about what a
batch of one task costs. Running each task's adapter on its own rows (a loop over the tasks
present) launches a few kernels per task per block, so the cost grows with the number of
distinct tasks. Punica (Chen et al., MLSys 2024, https://arxiv.org/abs/2310.18547) and S-LoRA
(Sheng et al., MLSys 2024, https://arxiv.org/abs/2311.03285) serve thousands of LoRA adapters
by stacking their weights and gathering each row's own; the same is done here for the whole
adapter family:

- AdaptMLPs (every point: ``attn``, ``parallel``, ``sequential``, ``post``): per block and point,
  ``down (S, d, r_max)``, ``up (S, r_max, d)`` and biases, zero-padded so different bottlenecks
  stay exact, and a slot of zeros for a task without an adapter there (its update is exactly 0).
  The scale (float, learnable or per channel) and an input LayerNorm's affine are folded into
  the weights; an output LayerNorm keeps a per-task affine. Mixed activations cost one masked
  select per extra activation present in the bank.
- LoRA: ``A (S, d_in, r_max)`` and ``B (S, r_max, rows)`` with ``alpha / r`` folded into ``B``;
  layers that share one update (q, k and v as three Linears) read their rows of ``B``.
- Heads: ``W (S, D, C_max)`` with ``-inf`` bias beyond each task's classes; an eval-mode
  BatchNorm head is folded into its Linear, a head-less task is the identity.

Each row's update is one batched product on weights gathered by its task index
(``index_select`` + ``baddbmm``): a fixed number of kernels per block whatever the number of
tasks, static shapes, and the task-index tensor as the only routing input, so the same code runs
eagerly, under ``torch.jit.trace`` / the ONNX exporter, and under ``torch.compile`` without
recompiling for a new mix. Rows may come in any order (nothing is sorted).

Banks are a cache of the model's task modules, kept per model (:func:`task_banks`) and updated
per task: a task's slot is written the first time a batch asks for it and rewritten only when
its tensors change (their version counters), a removed task's slot is zeroed and reused. Slots
and padded sizes grow by doubling / steps of 8, so adding tasks rarely changes a bank's shape.
Only inference uses banks: they are copies, so gradients would not reach the task parameters.
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .inject import (
    AdaptedBlock,
    AdapterState,
    adapter_state,
    get_head,
    head_width,
    model_blocks,
    unwrap,
)
from .layers import _ACTIVATIONS as ACTIVATIONS  # the AdaptMLP's own table: one definition
from .layers import AdaptMLP, LoRALinear

_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}


def _pick(bank: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Each row's slot of ``bank`` (``index_select`` copies whole contiguous slots, which is
    faster on CPU than advanced indexing ``bank[index]``)."""
    rows = bank.index_select(0, index)
    return rows if rows.dtype == dtype else rows.to(dtype)


def _resized(t: torch.Tensor, shape: Sequence[int], fill: float = 0.0) -> torch.Tensor:
    """A ``shape`` tensor filled with ``fill`` holding ``t`` in its leading corner."""
    out = t.new_full(tuple(shape), fill)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


@dataclass(frozen=True)
class Cut:
    """What an eager pass needs from one bank, known from its tasks (``TaskBanks.plan``): the
    largest rank among them (the padding beyond is zero for every row) and, when only some rows'
    tasks have an adapter there, those rows (the others' update is exactly zero). Compiled and
    traced passes use no cut: their shapes must not depend on the mix."""

    rank: int
    rows: torch.Tensor | None = None


def _rows_of(
    h: torch.Tensor, index: torch.Tensor, cut: Cut | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h`` (``(B, ..., d)``) and ``index`` restricted to the cut's rows."""
    if cut is None or cut.rows is None:
        return h, index
    return h.index_select(0, cut.rows), index.index_select(0, cut.rows)


def _scatter(u: torch.Tensor, batch: int, cut: Cut | None) -> torch.Tensor:
    """``u`` computed on the cut's rows, placed in a ``batch``-row tensor of zeros."""
    if cut is None or cut.rows is None:
        return u
    return u.new_zeros((batch, *u.shape[1:])).index_copy_(0, cut.rows, u)


class AdaptBank:
    """Every task's AdaptMLP at one point of one block: slot ``s`` holds task ``s``'s."""

    def __init__(
        self, dim: int, capacity: int, step: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.dim, self.step, self.rank, self.eps = dim, step, 0, 1e-5

        def zeros(*shape: int, kind: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(shape, device=device, dtype=kind)

        self.down, self.down_b = zeros(capacity, dim, 0), zeros(capacity, 0)
        self.up, self.up_b = zeros(capacity, 0, dim), zeros(capacity, dim)
        self.out_w, self.out_b = zeros(capacity, dim), zeros(capacity, dim)  # LayerNorm "out"
        self.ln_in = zeros(capacity, kind=torch.bool)
        self.ln_out = zeros(capacity, kind=torch.bool)
        self.act = zeros(capacity, kind=torch.long)
        self.kinds: dict[int, tuple[str, str]] = {}  # slot -> (activation, layernorm)
        self._summarize()

    _SLOTTED = ("down", "down_b", "up", "up_b", "out_w", "out_b", "ln_in", "ln_out", "act")
    # Sizes that change as tasks come and go (slots, padded rank): symbolic under torch.compile.
    GROWING: ClassVar[dict[str, tuple[int, ...]]] = {"down": (0, 2), "down_b": (0, 1), "up": (0, 1)}

    def grow(self, capacity: int) -> None:
        for name in self._SLOTTED:
            t = getattr(self, name)
            setattr(self, name, _resized(t, (capacity, *t.shape[1:])))

    def _widen(self, rank: int) -> None:
        rank = _round_up(rank, self.step)
        s, d = self.down.shape[0], self.dim
        self.down = _resized(self.down, (s, d, rank))
        self.down_b = _resized(self.down_b, (s, rank))
        self.up = _resized(self.up, (s, rank, d))
        self.rank = rank

    def clear(self, slot: int) -> None:
        if self.kinds.pop(slot, None) is None:
            return  # never written, or already zero
        for name in self._SLOTTED:
            getattr(self, name)[slot] = 0
        self._summarize()

    def write(self, slot: int, mlp: AdaptMLP) -> None:
        """Put ``mlp`` (eval-mode semantics: no dropout, no drop-path) in ``slot``."""
        self.clear(slot)
        r, d = mlp.down_proj.out_features, self.dim
        if r > self.rank:
            self._widen(r)
        down, down_b = mlp.down_proj.weight.t(), mlp.down_proj.bias
        if mlp.layernorm == "in":  # LN(x) @ W = norm(x) @ (diag(w) W) + b @ W
            ln = mlp.layer_norm
            self.eps = ln.eps
            if ln.bias is not None:
                down_b = down_b + ln.bias @ down
            if ln.weight is not None:
                down = ln.weight[:, None] * down
        scale = mlp.scale.expand(d)  # a float, a learnable scalar or one gain per channel
        self.down[slot, :, :r] = down
        self.down_b[slot, :r] = down_b
        self.up[slot, :r] = mlp.up_proj.weight.t() * scale
        self.up_b[slot] = mlp.up_proj.bias * scale
        if mlp.layernorm == "out":
            ln = mlp.layer_norm
            self.eps = ln.eps
            self.out_w[slot] = ln.weight if ln.weight is not None else 1.0
            self.out_b[slot] = ln.bias if ln.bias is not None else 0.0
        self.ln_in[slot] = mlp.layernorm == "in"
        self.ln_out[slot] = mlp.layernorm == "out"
        self.act[slot] = _ACT_CODE[mlp.activation]
        self.kinds[slot] = (mlp.activation, mlp.layernorm)
        self._summarize()

    def _summarize(self) -> None:
        """What the forward must compute, decided by the tasks in the bank (never by a batch)."""
        kinds = list(self.kinds.values())
        self.activations = tuple(a for a in ACTIVATIONS if any(k[0] == a for k in kinds))
        self.any_ln_in = any(k[1] == "in" for k in kinds)
        self.any_ln_out = any(k[1] == "out" for k in kinds)
        self.empty = not kinds

    def __call__(
        self, x: torch.Tensor, index: torch.Tensor, cut: Cut | None = None
    ) -> torch.Tensor:
        """Each sample's own AdaptMLP update of ``x`` (``(B, ..., d)``, sample-major); ``cut``
        skips what the batch's tasks do not need (eager passes)."""
        shape, dt, batch = x.shape, x.dtype, index.shape[0]
        down, down_b, up = self.down, self.down_b, self.up
        if cut is not None and cut.rank < self.rank:
            down, down_b, up = down[:, :, : cut.rank], down_b[:, : cut.rank], up[:, : cut.rank]
        h, index = _rows_of(x.reshape(batch, -1, self.dim), index, cut)
        if self.any_ln_in:
            normed = F.layer_norm(h, (self.dim,), eps=self.eps)
            h = torch.where(self.ln_in.index_select(0, index)[:, None, None], normed, h)
        z = torch.baddbmm(_pick(down_b, index, dt)[:, None], h, _pick(down, index, dt))
        z = self._activate(z, index)
        u = torch.baddbmm(_pick(self.up_b, index, dt)[:, None], z, _pick(up, index, dt))
        if self.any_ln_out:
            normed = F.layer_norm(u, (self.dim,), eps=self.eps)
            normed = (
                normed * _pick(self.out_w, index, dt)[:, None]
                + _pick(self.out_b, index, dt)[:, None]
            )
            u = torch.where(self.ln_out.index_select(0, index)[:, None, None], normed, u)
        return _scatter(u, batch, cut).reshape(shape)

    def _activate(self, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        first, *others = self.activations
        out = ACTIVATIONS[first](z)
        if others:  # one masked select per further activation present in the bank
            code = self.act.index_select(0, index)[:, None, None]
            for name in others:
                out = torch.where(code == _ACT_CODE[name], ACTIVATIONS[name](z), out)
        return out


class LoRABank:
    """Every task's LoRA update of one (possibly shared q/k/v) attention input projection."""

    def __init__(
        self,
        in_features: int,
        rows: int,
        capacity: int,
        step: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.rows, self.step, self.rank = rows, step, 0
        self.A = torch.zeros(capacity, in_features, 0, device=device, dtype=dtype)
        self.B = torch.zeros(capacity, 0, rows, device=device, dtype=dtype)
        self.held: set[int] = set()
        self.empty = True  # a plain flag: what torch.compile guards on, not the set of slots

    GROWING: ClassVar[dict[str, tuple[int, ...]]] = {"A": (0, 2), "B": (0, 1)}

    def grow(self, capacity: int) -> None:
        self.A = _resized(self.A, (capacity, *self.A.shape[1:]))
        self.B = _resized(self.B, (capacity, *self.B.shape[1:]))

    def clear(self, slot: int) -> None:
        if slot in self.held:
            self.held.discard(slot)
            self.empty = not self.held
            self.A[slot] = 0
            self.B[slot] = 0

    def write(self, slot: int, owner: LoRALinear, name: str) -> None:
        self.clear(slot)
        a, b = owner.lora_A[name].weight, owner.lora_B[name].weight  # (r, d_in), (rows, r)
        r = a.shape[0]
        if r > self.rank:
            self.rank = _round_up(r, self.step)
            self.A = _resized(self.A, (self.A.shape[0], self.A.shape[1], self.rank))
            self.B = _resized(self.B, (self.B.shape[0], self.rank, self.rows))
        self.A[slot, :, :r] = a.t()
        self.B[slot, :r] = (b * owner.lora_scaling[name]).t()  # alpha / r folded in
        self.held.add(slot)
        self.empty = False

    def delta(
        self,
        rows: tuple[int, int],
        x: torch.Tensor,
        index: torch.Tensor,
        cut: Cut | None = None,
    ) -> torch.Tensor:
        """Each sample's own update of output ``rows`` for ``x`` (``(B * k, ..., d_in)``:
        ``k`` consecutive rows per sample, e.g. Swin's windows); ``cut`` as in
        :meth:`AdaptBank.__call__`."""
        start, stop = rows
        a, b, batch = self.A, self.B, index.shape[0]
        if cut is not None and cut.rank < self.rank:
            a, b = a[:, :, : cut.rank], b[:, : cut.rank]
        if (start, stop) != (0, self.rows):
            b = b[:, :, start:stop]
        h, index = _rows_of(x.reshape(batch, -1, x.shape[-1]), index, cut)
        low = torch.bmm(h, _pick(a, index, h.dtype))
        out = _scatter(torch.bmm(low, _pick(b, index, h.dtype)), batch, cut)
        return out.reshape(*x.shape[:-1], stop - start)


def fold_head(head: nn.Module, dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W (C, D), b (C,))`` computing ``head`` in eval mode, or None for another kind of head.

    ``Identity`` (a head-less task: features out) is the identity matrix; MAE's linear-probe
    head ``BatchNorm1d + Linear`` folds the running statistics into the Linear.
    """
    if isinstance(head, nn.Identity):
        return torch.eye(dim), torch.zeros(dim)
    if isinstance(head, nn.Linear):
        bias = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
        return head.weight, bias
    if (
        isinstance(head, nn.Sequential)
        and len(head) == 2
        and isinstance(head[0], nn.BatchNorm1d)
        and isinstance(head[1], nn.Linear)
        and not head[0].training
        and head[0].running_mean is not None
    ):
        bn, linear = head[0], head[1]
        gain = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            gain = gain * bn.weight
        shift = -bn.running_mean * gain + (bn.bias if bn.affine else 0.0)
        bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(1)
        return linear.weight * gain[None, :], bias + linear.weight @ shift
    return None


class HeadBank:
    """Every task's head: ``W (S, D, C_max)``, bias ``-inf`` beyond each task's classes."""

    def __init__(
        self, dim: int, capacity: int, step: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.dim, self.step, self.width = dim, step, 0
        self.W = torch.zeros(capacity, dim, 0, device=device, dtype=dtype)
        self.b = torch.full((capacity, 0), float("-inf"), device=device, dtype=dtype)
        self.fallback: dict[int, nn.Module] = {}  # heads that do not fold: run on every row

    GROWING: ClassVar[dict[str, tuple[int, ...]]] = {"W": (0, 2), "b": (0, 1)}

    def grow(self, capacity: int) -> None:
        self.W = _resized(self.W, (capacity, *self.W.shape[1:]))
        self.b = _resized(self.b, (capacity, self.width), float("-inf"))

    def _widen(self, classes: int) -> None:
        self.width = _round_up(classes, self.step)
        self.W = _resized(self.W, (self.W.shape[0], self.dim, self.width))
        self.b = _resized(self.b, (self.b.shape[0], self.width), float("-inf"))

    def clear(self, slot: int) -> None:
        self.W[slot] = 0
        self.b[slot] = float("-inf")
        self.fallback.pop(slot, None)

    def write(self, slot: int, head: nn.Module, classes: int) -> None:
        self.clear(slot)
        if classes > self.width:
            self._widen(classes)
        folded = fold_head(head, self.dim)
        if folded is None:
            self.fallback[slot] = head
            return
        w, b = folded
        self.W[slot, :, : w.shape[0]] = w.t()
        self.b[slot, : b.shape[0]] = b

    def __call__(
        self, feats: torch.Tensor, index: torch.Tensor, width: int | None = None
    ) -> torch.Tensor:
        """``(B, C_max)`` logits (``(B, width)`` if given: the widest head of the batch), each
        row through its task's head, ``-inf`` padded."""
        dt = feats.dtype
        w, b = self.W, self.b
        if width is not None and width < self.width:
            w, b = w[:, :, :width], b[:, :width]
        w, b = _pick(w, index, dt), _pick(b, index, dt)
        out = torch.baddbmm(b[:, None], feats[:, None], w)[:, 0]
        for slot, head in self.fallback.items():  # fixed by the bank, not by the batch
            y = head(feats)
            y = F.pad(y, (0, out.shape[1] - y.shape[1]), value=float("-inf"))
            out = torch.where((index == slot)[:, None], y, out)
        return out


@dataclass
class _Entry:
    """What a task's slot was built from: the modules (identity) and their tensors' versions."""

    modules: tuple[nn.Module, ...]
    tensors: tuple[torch.Tensor, ...]
    versions: tuple[tuple[int, int], ...]
    uses: dict[int, int]  # id(bank) -> this task's bottleneck / rank there

    def fresh(self) -> bool:
        return _stamp(self.tensors) == self.versions


def _stamp(tensors: Iterable[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """Version counter and storage of each tensor: an in-place change bumps the first, moving
    or replacing the data changes the second (inference-mode tensors keep no version)."""
    return tuple((-1 if t.is_inference() else t._version, t.data_ptr()) for t in tensors)


class TaskBanks:
    """The banks of one model: a slot per task, one bank per adapter point, LoRA layer, heads.

    Args:
        model: a model with adapters.
        names: a fixed list of tasks (slot ``i`` is ``names[i]``, sizes exact, built at once:
            what an export holds); None grows with the model's tasks as batches ask for them.
    """

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        model = unwrap(model)
        self.fixed = list(names) if names is not None else None
        self.step = 1 if self.fixed is not None else 8
        self.builds: collections.Counter[str] = collections.Counter()  # slot writes per task
        self._lock = threading.RLock()
        p = next(model.parameters())
        with torch.inference_mode(False), torch.no_grad():
            self._reset(model, adapter_state(model), p.device, p.dtype)
        if self.fixed is not None:
            unknown = sorted(set(self.fixed) - set(self.state.configs))
            if unknown or not self.fixed:
                raise ValueError(
                    f"no task(s) {unknown}; the model has {sorted(self.state.configs)}"
                )
            for t in self.fixed:
                self._slot(t)
            self.sync(model, self.fixed)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _reset(
        self, model: nn.Module, state: AdapterState, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.state, self.generation = state, -1
        self.layout, self._marked = 0, -1  # bumped when bank tensors are replaced (grown)
        self.device, self.dtype = device, dtype
        self.capacity = len(self.fixed) if self.fixed is not None else 4
        self.slots: dict[str, int] = {}
        self._free: list[int] = []
        self._next = 0
        self.entries: dict[str, _Entry] = {}
        self.blocks = [b for b in model_blocks(model) if isinstance(b, AdaptedBlock)]
        self.points: dict[int, dict[str, AdaptBank]] = {id(b): {} for b in self.blocks}
        self.lora: dict[int, LoRABank] = {}  # id(owner layer) -> its bank
        self.lora_rows: dict[int, tuple[int, tuple[int, int]]] = {}  # id(layer) -> owner, rows
        self.members: set[int] = set()
        self.head = HeadBank(head_width(model), self.capacity, self.step, device, dtype)

    def mark_dynamic(self) -> None:
        """Tell ``torch.compile`` that slot counts, padded ranks and class counts vary, so
        growing banks (more tasks, a larger bottleneck) do not recompile; done once per layout
        (only compiled passes call this: importing dynamo costs seconds)."""
        if self._marked == self.layout:
            return
        from torch._dynamo import maybe_mark_dynamic

        for bank in self._banks():
            for name, t in vars(bank).items():
                if isinstance(t, torch.Tensor):
                    for dim in bank.GROWING.get(name, (0,)):
                        maybe_mark_dynamic(t, dim)
        self._marked = self.layout

    def _banks(self) -> list[AdaptBank | LoRABank | HeadBank]:
        adapt = [bank for points in self.points.values() for bank in points.values()]
        return [*adapt, *self.lora.values(), self.head]

    def _slot(self, name: str) -> int:
        if name in self.slots:
            return self.slots[name]
        if self._free:
            slot = self._free.pop()
        else:
            if self._next == self.capacity:
                self.capacity *= 2
                self.layout += 1
                for bank in self._banks():
                    bank.grow(self.capacity)
            slot, self._next = self._next, self._next + 1
        self.slots[name] = slot
        return slot

    def _drop(self, name: str) -> None:
        slot = self.slots.pop(name)
        for bank in self._banks():
            bank.clear(slot)
        self.entries.pop(name, None)
        self._free.append(slot)

    def _restructure(self, model: nn.Module) -> None:
        """After tasks were added or removed: which modules the banks route, which slots are
        gone, which tasks were replaced under the same name."""
        self.members = {id(b) for b in self.blocks}
        for block in self.blocks:
            for m in block.modules():
                if isinstance(m, LoRALinear):
                    self.members.add(id(m))
                    start, stop = m._rows if m._rows is not None else (0, m.out_features)
                    self.lora_rows[id(m)] = (id(m.owner), (start, stop))
        for name in list(self.slots):
            if name not in self.state.configs:
                if self.fixed is not None:
                    raise ValueError(f"task {name!r} was removed from the model after export began")
                self._drop(name)
            elif name in self.entries and self._modules(model, name) != self.entries[name].modules:
                del self.entries[name]  # deleted and injected again: rebuild when asked for
        self.generation = self.state.generation

    def _modules(self, model: nn.Module, name: str) -> tuple[nn.Module, ...]:
        """Every module task ``name`` reads in the banks, head last."""
        found: list[nn.Module] = []
        for block in self.blocks:
            found += [d[name] for d in (block.attn_adapter, block.adaptmlp) if name in d]
            for m in block.modules():  # the task's own A and B, not the shared layer
                if isinstance(m, LoRALinear) and m.owns(name):
                    found += [m.lora_A[name], m.lora_B[name]]
        return (*found, get_head(model, name))

    # -- keeping the slots current ---------------------------------------------------------------
    def sync(self, model: nn.Module, present: Iterable[str], every: bool = False) -> None:
        """Make the slots of ``present`` tasks current; drop the slots of removed tasks.

        ``every`` also builds every task of the model not built yet: a compiled graph then
        depends on the model's tasks (which activations, LayerNorms, LoRA layers occur), not
        on the mixes seen so far.
        """
        model = unwrap(model)
        # Normal tensors without autograd history, even when called in inference mode: later
        # in-place slot writes must stay legal (inference_mode(False) turns grad on: no_grad after).
        with self._lock, torch.inference_mode(False), torch.no_grad():
            state = adapter_state(model)
            p = next(model.parameters())
            if state is not self.state or (p.device, p.dtype) != (self.device, self.dtype):
                self._reset(model, state, p.device, p.dtype)  # all tasks went, or the model moved
                if self.fixed is not None:
                    for t in self.fixed:
                        self._slot(t)
            if state.generation != self.generation:
                self._restructure(model)
            if every:
                present = [*present, *(t for t in state.configs if t not in self.entries)]
            for name in present:
                entry = self.entries.get(name)
                if entry is None or not entry.fresh():
                    self._build(model, name)

    def _build(self, model: nn.Module, name: str) -> None:
        """Write task ``name``'s slot in every bank from its modules (called under no_grad)."""
        slot = self._slot(name)
        for bank in self._banks():
            bank.clear(slot)
        self.layout += 1  # a new bank, a wider rank or head may come: checked on compiled use
        modules = self._modules(model, name)
        # Versions are read before the values: a write racing with this build (another thread
        # refilling a task's tensors) bumps them after, and the next sync rebuilds the slot.
        tensors = tuple(t for m in modules for t in (*m.parameters(), *m.buffers()))
        stamp = _stamp(tensors)
        uses: dict[int, int] = {}
        for block in self.blocks:
            points = self.points[id(block)]
            for mlp in (d[name] for d in (block.attn_adapter, block.adaptmlp) if name in d):
                if mlp.reads not in points:
                    points[mlp.reads] = AdaptBank(
                        int(mlp.up_proj.out_features), self.capacity, self.step, self.device,
                        self.dtype,
                    )  # fmt: skip
                points[mlp.reads].write(slot, mlp)
                uses[id(points[mlp.reads])] = mlp.down_proj.out_features
            for m in block.modules():
                if isinstance(m, LoRALinear) and m.owns(name):
                    if id(m) not in self.lora:
                        self.lora[id(m)] = LoRABank(
                            m.in_features, m.lora_rows, self.capacity, self.step,
                            self.device, self.dtype,
                        )  # fmt: skip
                    self.lora[id(m)].write(slot, m, name)
                    uses[id(self.lora[id(m)])] = m.lora_A[name].out_features
        head = modules[-1]
        classes = self.state.num_classes[name] or self.head.dim
        self.head.write(slot, head, classes)
        self.entries[name] = _Entry(modules, tensors, stamp, uses)
        self.builds[name] += 1

    # -- what a pass reads -----------------------------------------------------------------------
    def index(self, tasks: Sequence[str]) -> torch.Tensor:
        """The slot of each row's task, as the ``(B,)`` int64 routing input."""
        return torch.tensor([self.slots[t] for t in tasks], dtype=torch.long, device=self.device)

    def block_banks(self, block: nn.Module) -> dict[str, AdaptBank]:
        return self.points.get(id(block), {})

    def plan(self, tasks: Sequence[str]) -> dict[int, Cut]:
        """``id(bank) -> Cut`` for a batch whose rows run ``tasks``: the banks it needs (the
        others add exactly zero to all its rows), the largest rank of each, and the rows whose
        task has an adapter there when not all do."""
        present = list(dict.fromkeys(tasks))
        users: dict[int, list[str]] = {}
        ranks: dict[int, int] = {}
        for t in present:
            for bank, rank in self.entries[t].uses.items():
                users.setdefault(bank, []).append(t)
                ranks[bank] = max(rank, ranks.get(bank, 0))
        rows: dict[frozenset[str], torch.Tensor | None] = {}  # banks of one task set share it
        plan = {}
        for bank, names in users.items():
            key = frozenset(names)
            if key not in rows:
                picked = [i for i, t in enumerate(tasks) if t in key]
                every = len(picked) == len(tasks)
                rows[key] = None if every else torch.tensor(picked, device=self.device)
            plan[bank] = Cut(ranks[bank], rows[key])
        return plan

    def lora_delta(
        self,
        layer: LoRALinear,
        x: torch.Tensor,
        index: torch.Tensor,
        plan: dict[int, Cut] | None = None,
    ) -> torch.Tensor | None:
        owner, rows = self.lora_rows.get(id(layer), (None, (0, 0)))
        bank = self.lora.get(owner) if owner is not None else None
        if bank is None or bank.empty:
            return None
        if plan is None:
            return bank.delta(rows, x, index)
        cut = plan.get(id(bank))
        return None if cut is None else bank.delta(rows, x, index, cut)

    @property
    def nbytes(self) -> int:
        """Bytes the banks hold (the cost of the cache next to the tasks' own modules)."""
        total = 0
        for bank in self._banks():
            total += sum(t.numel() * t.element_size() for t in vars(bank).values()
                         if isinstance(t, torch.Tensor))  # fmt: skip
        return total


_CACHE: weakref.WeakKeyDictionary[nn.Module, TaskBanks] = weakref.WeakKeyDictionary()


def task_banks(model: nn.Module, present: Iterable[str] = (), every: bool = False) -> TaskBanks:
    """The model's cached banks with the slots of ``present`` tasks current (and of every
    task, with ``every``: see :meth:`TaskBanks.sync`).

    Kept beside the model (weakly: dropping the model drops them), never in its state dict.
    """
    model = unwrap(model)
    banks = _CACHE.get(model)
    if banks is None:
        banks = _CACHE[model] = TaskBanks(model)
    banks.sync(model, present, every)
    return banks


def clear_banks(model: nn.Module) -> None:
    """Forget the model's banks (rebuilt on the next mixed batch): only needed after replacing
    a task's Parameter objects by hand (in-place changes and ``load_adapter`` are noticed)."""
    _CACHE.pop(unwrap(model), None)
