"""Which tasks stay in memory when a registry holds more than a server may keep: the budget, the
recency order of the resident tasks, and the choice of what to evict for a task being loaded.

A server started with ``--max-resident-tasks N`` and/or ``--adapter-memory MiB`` keeps at most
that many tasks (or adapter bytes) in its model; the other tasks of its registry stay on disk
and are read on their first request (see :mod:`.catalog`). Each resident task occupies a
**slot**: one adapter inside the model (modules, head, parameters). A task being loaded takes
the room of the least recently used slots that no queued or running row needs (an **idle**
slot), never of one in use.

Slots are reused: when the task being loaded has the same shape (adapter config and class
count) as an evicted one, its weights are copied into that slot's parameters instead of
building new modules, which on ViT-S takes tens of milliseconds under the lock every forward
pass holds (measured in docs/serving.md#paging). So among the older half of the idle slots, one
of the same shape is evicted before an older one of another shape; otherwise the order is
strictly least recently used.

Nothing here locks or touches a model: :class:`Residency` is bookkeeping that the catalog
changes under its own lock, so the policy is tested on its own.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

MIB = 2**20


@dataclass(frozen=True)
class Budget:
    """How much a server keeps resident; 0 leaves that dimension unbounded.

    Attributes:
        max_tasks: tasks (slots) in the model at most (``--max-resident-tasks``).
        max_bytes: bytes of adapter and head tensors in the model at most
            (``--adapter-memory``, given in MiB).
    """

    max_tasks: int = 0
    max_bytes: int = 0

    def __post_init__(self) -> None:
        if self.max_tasks < 0 or self.max_bytes < 0:
            raise ValueError(f"a residency budget cannot be negative: {self}")

    @property
    def bounded(self) -> bool:
        """Tasks are paged (loaded on demand, evicted) rather than all loaded at start."""
        return bool(self.max_tasks or self.max_bytes)

    def describe(self) -> str:
        """The budget as the flags that set it, for error messages."""
        parts = []
        if self.max_tasks:
            parts.append(f"--max-resident-tasks {self.max_tasks}")
        if self.max_bytes:
            parts.append(f"--adapter-memory {self.max_bytes / MIB:g} MiB")
        return ", ".join(parts) or "no budget"

    def never_fits(self, tasks: int, nbytes: int) -> str:
        """Why ``tasks`` tasks of ``nbytes`` bytes together can never be resident at once
        ("" when they can): such a request is refused at once instead of waiting."""
        if self.max_tasks and tasks > self.max_tasks:
            return (
                f"this request names {tasks} tasks, more than this server keeps in memory at "
                f"once (--max-resident-tasks {self.max_tasks}): ask for at most "
                f"{self.max_tasks} tasks per request"
            )
        if self.max_bytes and nbytes > self.max_bytes:
            return (
                f"the tasks of this request need {nbytes / MIB:.2f} MiB of adapter memory, more "
                f"than this server keeps (--adapter-memory {self.max_bytes / MIB:g} MiB): ask "
                "for fewer tasks per request, or raise --adapter-memory"
            )
        return ""


@dataclass(eq=False)
class Slot:
    """One adapter inside the model, holding one task version at a time.

    Attributes:
        adapter: its name inside the model (what rows are routed by).
        shape: the structure its tensors have (config and class count, see :func:`shape_of`);
            a task of the same shape can be copied into it.
        nbytes: bytes of its tensors.
        tensors: its adapter and head tensors keyed as in a task file, sharing storage with
            the model's parameters (copying into them changes the model).
        holder: the task version it serves (the catalog's ``TaskVersion``).
    """

    adapter: str
    shape: str
    nbytes: int
    tensors: dict[str, torch.Tensor] = field(repr=False)
    holder: Any = None


def shape_of(config: dict[str, Any], num_classes: int) -> str:
    """A key equal for two tasks exactly when their adapter and head tensors have the same
    names and shapes on one backbone: the (normalised) config and the class count."""
    import json

    return json.dumps({"config": config, "num_classes": num_classes}, sort_keys=True)


def tensor_bytes(shapes: dict[str, tuple[Sequence[int], bool]], float_size: int) -> int:
    """Bytes a task's tensors take in the model: floating point ones at the model's element
    size ``float_size`` (whatever the file stores), integer ones (BatchNorm counters) 8.

    Args:
        shapes: tensor name -> (shape, is floating point); ``backbone.*`` tensors are not the
            task's own (they overwrite backbone weights) and are left out.
    """
    return sum(
        math.prod(shape) * (float_size if floating else 8)
        for name, (shape, floating) in shapes.items()
        if not name.startswith("backbone.")
    )


class Residency:
    """The resident slots, least recently used first, and the room held by loads in flight.

    Args:
        budget: the limits; unbounded dimensions never evict.
        reuse_window: the share of the idle slots, oldest first, among which one of the loaded
            task's shape is preferred as the victim (0: strict least-recently-used order).
    """

    def __init__(self, budget: Budget, reuse_window: float = 0.5) -> None:
        if not 0 <= reuse_window <= 1:
            raise ValueError(f"reuse_window must lie in [0, 1], not {reuse_window}")
        self.budget = budget
        self.reuse_window = reuse_window
        self._slots: collections.OrderedDict[str, Slot] = collections.OrderedDict()
        self.reserved_tasks = 0  # room held by loads in flight
        self.reserved_bytes = 0
        self.peak_tasks = 0
        self.peak_bytes = 0

    # -- reading ----------------------------------------------------------------------------------
    def slots(self) -> list[Slot]:
        """Resident slots, least recently used first."""
        return list(self._slots.values())

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, slot: Slot) -> bool:
        return self._slots.get(slot.adapter) is slot

    @property
    def resident_bytes(self) -> int:
        return sum(s.nbytes for s in self._slots.values())

    def used(self) -> tuple[int, int]:
        """(tasks, bytes) of the resident slots plus the room reserved by loads in flight."""
        return len(self._slots) + self.reserved_tasks, self.resident_bytes + self.reserved_bytes

    # -- changing ---------------------------------------------------------------------------------
    def add(self, slot: Slot) -> None:
        """A slot became resident: the most recently used one."""
        self._slots[slot.adapter] = slot
        self._slots.move_to_end(slot.adapter)
        self._note_peak()

    def touch(self, slot: Slot) -> None:
        """``slot`` was just used: it becomes the most recently used."""
        if slot in self:
            self._slots.move_to_end(slot.adapter)

    def remove(self, slot: Slot) -> None:
        if slot in self:
            del self._slots[slot.adapter]

    def reserve(self, tasks: int, nbytes: int) -> None:
        self.reserved_tasks += tasks
        self.reserved_bytes += nbytes
        self._note_peak()

    def unreserve(self, tasks: int, nbytes: int) -> None:
        self.reserved_tasks -= tasks
        self.reserved_bytes -= nbytes

    def _note_peak(self) -> None:
        tasks, nbytes = self.used()
        self.peak_tasks = max(self.peak_tasks, tasks)
        self.peak_bytes = max(self.peak_bytes, nbytes)

    # -- choosing ---------------------------------------------------------------------------------
    def victims(
        self,
        needs: Sequence[tuple[int, str]],
        idle: Callable[[Slot], bool],
        keep: Collection[Slot] = (),
    ) -> list[Slot] | None:
        """The slots to evict so that tasks of ``needs`` ``(bytes, shape)`` fit the budget
        beside the rest; ``[]`` if they fit as it is, None if they cannot fit now (too few idle
        slots: the caller waits for rows to finish).

        Args:
            needs: the tasks about to be loaded.
            idle: whether a slot may be evicted (no queued or running row needs it).
            keep: slots the caller needs too (the other tasks of its request): never chosen.
        """
        tasks, nbytes = self.used()
        tasks += len(needs)
        nbytes += sum(b for b, _ in needs)
        candidates = [s for s in self._slots.values() if s not in keep and idle(s)]
        window = candidates[: math.ceil(len(candidates) * self.reuse_window)]
        wanted = [shape for _, shape in needs]  # shapes a same-shaped victim would save
        chosen: list[Slot] = []
        while not self._fits(tasks, nbytes):
            pick = next((s for s in window if s.shape in wanted and s not in chosen), None)
            if pick is not None:
                wanted.remove(pick.shape)
            else:
                pick = next((s for s in candidates if s not in chosen), None)
                if pick is None:
                    return None
            chosen.append(pick)
            tasks -= 1
            nbytes -= pick.nbytes
        return chosen

    def _fits(self, tasks: int, nbytes: int) -> bool:
        b = self.budget
        return (not b.max_tasks or tasks <= b.max_tasks) and (
            not b.max_bytes or nbytes <= b.max_bytes
        )


# Seconds: a page-cache read of a small task up to a cold network disk under load.
LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LoadStats:
    """Loads and evictions since start (the catalog's lock guards it; /metrics reads it).

    Attributes:
        loads: tasks made resident, by how: ``refill`` (copied into an evicted slot of the
            same shape) or ``new`` (modules built).
        failures: loads refused (damaged or changed files).
        evictions: resident tasks evicted to make room.
        buckets: load seconds per bucket of :data:`LOAD_BUCKETS` (not cumulative; the last
            counts the slower ones); ``seconds``: their sum.
    """

    loads: dict[str, int] = field(default_factory=lambda: {"refill": 0, "new": 0})
    failures: int = 0
    evictions: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LOAD_BUCKETS) + 1))
    seconds: float = 0.0

    def observe(self, kind: str, seconds: float) -> None:
        self.loads[kind] += 1
        self.seconds += seconds
        self.buckets[next((i for i, b in enumerate(LOAD_BUCKETS) if seconds <= b), -1)] += 1
