"""The tasks a server answers: versions in one model, hot add / replace / remove, and, under a
memory budget, which of them are in memory.

Every task version in memory lives in the model as its own adapter (a :class:`~.paging.Slot`).
A request takes the versions current when it arrives and holds them until its rows are
answered; replacing or removing a task only changes which version NEW requests get, and the
old adapter is deleted from the model once its last row is done. So no request in flight is
dropped or answered by a half-swapped task.

**Paging.** Without a budget every task is loaded at start and stays (adapters named
``NAME@N``). With one (``--max-resident-tasks``, ``--adapter-memory``) start-up only lists the
tasks: each one's ``adapter_config.json`` and the header of its tensor file are read and
checked (method, backbone, shapes, bytes), its version taken from ``registry.json``, and no
weight is read. A request whose task is not in memory loads it (:meth:`Catalog.acquire`):
files read and checked outside every lock, room made by evicting the least recently used
tasks that no queued or running row needs (:mod:`.paging`), then the task copied into an
evicted slot of the same shape or built as a new adapter (``@N``) under the model lock. A
request's rows are queued only once all its tasks are in memory, and they pin them there until
answered. If every resident task is in use, the request waits (``--resident-wait``) for rows
to finish, then gets 503; waiting requests hold no memory, so they cannot deadlock each other.

A version is the first 12 hex digits of the sha256 over every file of the task
(``adapter_config.json`` too: its scale, class names and layers change answers as much as the
weights do): replicas that read the same shared registry report the same version for the same
files. A paged load hashes the bytes it loads and refuses them if they are not the version the
server took in (the task was replaced on disk by another process: an empty PUT takes it in).

A task whose method trains the backbone (``full``, ``bitfit``) is refused before anything is
loaded: its file carries backbone tensors, and loading them would change the backbone every
other task shares.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.inject import delete_adapter
from ..utils.files import first_line
from .batcher import Row
from .loading import TaskFiles, build_slot, peek_task, read_task, refill
from .paging import Budget, LoadStats, Residency, Slot
from .store import TaskRegistry, class_names, task_digest

_log = logging.getLogger(__name__)
ALL = "all"  # the request keyword for every served task
_SHOWN = 20  # task names an error message lists at most


class UnknownTask(KeyError):
    """A request or an admin call names a task this server does not serve."""

    def __str__(self) -> str:
        return str(self.args[0])


class TooManyTasks(ValueError):
    """A request names more tasks (or adapter bytes) than the budget ever holds at once."""


class TaskUnavailable(RuntimeError):
    """A served task cannot be put in memory now: no room (everything resident is in use) or
    its files cannot be loaded. ``retry_after``: seconds worth waiting, None when a retry
    will not help before an admin acts."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(eq=False)
class TaskVersion:
    """One version of a task.

    Attributes:
        name: the public task name (the registry's).
        version: the first 12 hex digits of :attr:`digest`.
        method: ``adaptformer``, ``lora``, ``vpt`` or ``linear``.
        classes: one label per output.
        multilabel: probabilities are per-class sigmoids, not a softmax.
        loaded: when this server took it in (UTC, ISO 8601): loaded, or listed when paged.
        source: the folder it was read from.
        digest: sha256 of its files.
        folder: where a paged version is (re)loaded from (its registry folder).
        shape: its tensors' structure (:func:`~.paging.shape_of`).
        nbytes: bytes its tensors take in the model.
        pending: rows of this version checked out by requests (queued, running, or waiting
            for their tasks to be loaded).
        in_use: rows of it queued or running: while > 0 it is never evicted.
        retired: replaced or removed; deleted from the model when ``pending`` reaches 0.
        slot: its adapter in the model, None while it is not in memory.
        loading: a request is loading it.
    """

    name: str
    version: str
    method: str
    classes: list[str]
    multilabel: bool
    loaded: str
    source: str
    digest: str = ""
    folder: Path | None = None
    shape: str = ""
    nbytes: int = 0
    pending: int = 0
    in_use: int = 0
    retired: bool = False
    slot: Slot | None = None
    loading: bool = False
    problem: str = ""  # why its last load failed (logged once per new reason)

    @property
    def adapter(self) -> str | None:
        """Its adapter's name inside the model (what rows are routed by), if in memory."""
        return self.slot.adapter if self.slot is not None else None

    @property
    def resident(self) -> bool:
        return self.slot is not None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "method": self.method,
            "num_classes": len(self.classes),
            "multilabel": self.multilabel,
            "loaded": self.loaded,
            "resident": self.resident,
            "source": self.source,
        }


@dataclass(frozen=True)
class Residents:
    """What is in memory now, for /metrics and /healthz."""

    tasks: int
    nbytes: int
    loading: int
    peak_tasks: int
    peak_bytes: int
    budget: Budget
    stats: LoadStats


class Catalog:
    """The served tasks of ``registry`` in ``model``.

    Args:
        registry: the task registry the model was built from (hot adds are written to it).
        model: the registry's backbone, in eval mode on ``device``.
        device: where newly loaded adapters are moved.
        budget: what may stay in memory; unbounded (the default) loads every task at start.
        load_threads: task files read at once at most (paged loads).
    """

    def __init__(
        self,
        registry: TaskRegistry,
        model: nn.Module,
        device: torch.device,
        budget: Budget | None = None,
        load_threads: int = 2,
    ) -> None:
        record = registry.backbone
        if record is None:
            raise ValueError(
                f"the task registry {registry.root} is empty: `adaptformer tasks add NAME RUN_DIR` "
                "first"
            )
        if load_threads < 1:
            raise ValueError(f"load_threads must be at least 1, not {load_threads}")
        self.registry, self.model, self.device = registry, model, device
        self.backbone: dict[str, Any] = record
        self.budget = budget or Budget()
        self.model_lock = threading.RLock()  # held by every forward pass (see Batcher)
        self.structure_lock = threading.RLock()  # held by module changes and walks over them
        self._lock = threading.Condition()  # guards the tables; notified when room may free up
        self._current: dict[str, TaskVersion] = {}
        self._by_adapter: dict[str, TaskVersion] = {}  # resident versions by adapter name
        self._seq = itertools.count(1)
        self._reading = threading.BoundedSemaphore(load_threads)
        self.residency = Residency(self.budget)
        self.stats = LoadStats()
        self._float_size = next(
            (p.element_size() for p in model.parameters() if p.is_floating_point()), 4
        )
        # Registry tasks that could not be loaded (or listed) at start-up -> why (``/healthz``).
        self.skipped: dict[str, str] = {}

    @property
    def paged(self) -> bool:
        """Tasks are loaded on demand and evicted under :attr:`budget`."""
        return self.budget.bounded

    @classmethod
    def from_registry(
        cls,
        registry: TaskRegistry,
        names: Sequence[str] | None = None,
        device: torch.device | None = None,
        budget: Budget | None = None,
        load_threads: int = 2,
    ) -> Catalog:
        """Build the registry's backbone (its fingerprint checked) and take ``names`` (all) in:
        loaded, or only listed when ``budget`` is bounded.

        A task whose files cannot be used is skipped with one warning line and listed in
        :attr:`skipped`, so one broken task does not take every other one offline; a name
        that is not in the registry is still an error.
        """
        device = device or torch.device("cpu")
        model = registry.build_model(names=[], device=device)  # checks the backbone's sha256
        catalog = cls(registry, model, device, budget, load_threads)
        if catalog.paged:
            catalog._list(names)
            return catalog
        for name in registry.names() if names is None else names:
            try:
                catalog.put(name)
            except (ValueError, OSError) as e:
                catalog._skip(name, e)
        return catalog

    def _skip(self, name: str, error: BaseException) -> None:
        reason = " ".join(str(error).split())
        _log.warning("skipping task %r: %s", name, reason)
        self.skipped[name] = reason

    def _list(self, names: Sequence[str] | None) -> None:
        """Take the tasks in without reading their weights (paged start-up)."""
        with self.registry.locked():
            entries = self.registry.entries()
            wanted = list(entries) if names is None else list(dict.fromkeys(names))
            unknown = [n for n in wanted if n not in entries]
            if unknown:
                raise UnknownTask(
                    f"no task(s) {unknown[:_SHOWN]} in the registry {self.registry.root}; "
                    "`adaptformer tasks list` shows its tasks"
                )
            for name in wanted:
                folder, entry = entries[name]
                try:
                    version = self._peek(name, folder, entry.get("sha256"))
                except (ValueError, OSError) as e:
                    self._skip(name, e)
                    continue
                with self._lock:
                    self._current[name] = version

    # -- reading ----------------------------------------------------------------------------------
    def list(self) -> list[TaskVersion]:
        with self._lock:
            return [self._current[n] for n in sorted(self._current)]

    def residents(self) -> Residents:
        with self._lock:
            r = self.residency
            return Residents(
                tasks=len(r),
                nbytes=r.resident_bytes,
                loading=r.reserved_tasks,
                peak_tasks=r.peak_tasks,
                peak_bytes=r.peak_bytes,
                budget=self.budget,
                stats=LoadStats(
                    dict(self.stats.loads),
                    self.stats.failures,
                    self.stats.evictions,
                    list(self.stats.buckets),
                    self.stats.seconds,
                ),
            )

    def checkout(self, names: Iterable[str], rows_each: int) -> list[TaskVersion]:
        """The current versions of ``names`` (or ``["all"]``), each holding ``rows_each`` rows.

        Then :meth:`pin` or :meth:`acquire` them before queuing rows; :meth:`release_versions`
        rows that never get there.

        Raises:
            UnknownTask: a name that is not served (the message lists those that are).
            TooManyTasks: more tasks than the budget ever holds at once.
        """
        names = list(dict.fromkeys(names))
        with self._lock:
            if names == [ALL]:
                names = sorted(self._current)
            unknown = [n for n in names if n not in self._current]
            if unknown or not names:
                raise UnknownTask(
                    f"unknown task(s) {(unknown or names)[:_SHOWN]}; this server answers "
                    f"{self._served()} (or '{ALL}')"
                )
            versions = [self._current[n] for n in names]
            if self.paged:
                reason = self.budget.never_fits(len(versions), sum(v.nbytes for v in versions))
                if reason:
                    raise TooManyTasks(reason)
            for v in versions:
                v.pending += rows_each
        return versions

    def _served(self) -> str:
        names = sorted(self._current)
        if len(names) <= _SHOWN:
            return str(names)
        return f"{len(names)} tasks ({', '.join(names[:_SHOWN])}, ...; GET /v1/tasks lists them)"

    def pin(self, versions: Sequence[TaskVersion], rows_each: int) -> bool:
        """Pin checked-out ``versions`` for ``rows_each`` rows each if all are in memory (then
        they stay until :meth:`release`); False, changing nothing, if one is not."""
        with self._lock:
            if not all(v.slot is not None for v in versions):
                return False
            self._pin(versions, rows_each)
            return True

    def _pin(self, versions: Sequence[TaskVersion], rows_each: int) -> None:
        for v in versions:
            v.in_use += rows_each
            assert v.slot is not None
            self.residency.touch(v.slot)

    def acquire(
        self, versions: Sequence[TaskVersion], rows_each: int, timeout: float
    ) -> list[TaskVersion]:
        """Load checked-out ``versions`` that are not in memory, then pin them all (blocks).

        A version replaced or removed while it was out of memory is answered by the task's
        current version (nothing of the request was queued yet). On any error the checkout's
        rows are released before raising.

        Returns:
            The versions pinned, in order: queue their rows, then :meth:`release` them.

        Raises:
            TaskUnavailable: no room within ``timeout`` seconds (every resident task in use),
                or a task's files cannot be loaded.
            UnknownTask: a task was removed while the request waited.
        """
        deadline = time.monotonic() + timeout
        versions = list(versions)
        try:
            while True:
                with self._lock:
                    versions = self._renew(versions, rows_each)
                    cold = [v for v in versions if v.slot is None]
                    if not cold:
                        self._pin(versions, rows_each)
                        return versions
                    mine = [v for v in cold if not v.loading]
                    if not mine:  # others are loading what this request needs
                        if not self._lock.wait(max(0.0, deadline - time.monotonic())):
                            raise self._no_room(versions, timeout)
                        continue
                    for v in mine:
                        v.loading = True
                self._load(mine, versions, deadline, timeout)
        except BaseException:
            self.release_versions(versions, rows_each)
            raise

    def _renew(self, versions: list[TaskVersion], rows_each: int) -> list[TaskVersion]:
        """``versions`` with each retired one that is out of memory (and not being loaded)
        replaced by its task's current version, the checked-out rows moved along."""
        stale = [v for v in versions if v.retired and v.slot is None and not v.loading]
        if not stale:
            return versions
        gone = [v.name for v in stale if v.name not in self._current]
        if gone:
            raise UnknownTask(f"task(s) {gone} stopped being served while this request waited")
        fresh = {v.name: self._current[v.name] for v in stale}
        for v in stale:
            v.pending -= rows_each
            fresh[v.name].pending += rows_each
        return [fresh[v.name] if v in stale else v for v in versions]

    def _no_room(self, versions: Sequence[TaskVersion], timeout: float) -> TaskUnavailable:
        busy = sum(1 for s in self.residency.slots() if s.holder is not None and s.holder.in_use)
        cold = [v.name for v in versions if v.slot is None]
        return TaskUnavailable(
            f"task(s) {cold[:_SHOWN]} could not be loaded within {timeout:g} s "
            f"(--resident-wait): {busy} of the {len(self.residency)} tasks in memory are in use "
            f"by queued requests and loads fill the rest ({self.budget.describe()}); retry",
            retry_after=1,
        )

    def release(self, rows: Sequence[Row]) -> None:
        """Rows done (or abandoned): their tasks may be evicted again, and retired versions
        without rows left leave the model."""
        done: list[TaskVersion] = []
        with self._lock:
            for r in rows:
                v = self._by_adapter[r.task]
                v.pending -= 1
                v.in_use -= 1
                if v.retired and v.pending == 0:
                    done.append(v)
            self._lock.notify_all()
        for v in done:
            self._delete(v)

    def release_versions(
        self, versions: Sequence[TaskVersion], rows_each: int, pinned: bool = False
    ) -> None:
        """Undo a :meth:`checkout` (and the :meth:`pin`, if ``pinned``) whose rows never reached
        the queue."""
        done: list[TaskVersion] = []
        with self._lock:
            for v in versions:
                v.pending -= rows_each
                if pinned:
                    v.in_use -= rows_each
                if v.retired and v.pending == 0:
                    done.append(v)
            self._lock.notify_all()
        for v in done:
            self._delete(v)

    # -- paged loading ----------------------------------------------------------------------------
    def _load(
        self,
        mine: list[TaskVersion],
        wanted: list[TaskVersion],
        deadline: float,
        timeout: float,
    ) -> None:
        """Read ``mine`` (marked loading by the caller), make room beside the rest of
        ``wanted``, and put them in memory; always unmarks them."""
        try:
            read: list[tuple[TaskVersion, TaskFiles, float]] = []
            for v in mine:
                start = time.monotonic()
                files = self._read(v)
                if files is not None:
                    read.append((v, files, time.monotonic() - start))
            if not read:
                return
            needs = [(v.nbytes, files.shape) for v, files, _ in read]
            with self._lock:
                while True:
                    keep = {v.slot for v in wanted if v.slot is not None}
                    victims = self.residency.victims(needs, self._idle, keep)
                    if victims is not None:
                        break
                    if not self._lock.wait(max(0.0, deadline - time.monotonic())):
                        raise self._no_room(wanted, timeout)
                for s in victims:
                    self._evict(s)
                self.residency.reserve(len(needs), sum(b for b, _ in needs))
            self._attach(read, victims)
        finally:
            with self._lock:
                for v in mine:
                    v.loading = False
                self._lock.notify_all()

    @staticmethod
    def _idle(slot: Slot) -> bool:
        return slot.holder is not None and slot.holder.in_use == 0

    def _read(self, v: TaskVersion) -> TaskFiles | None:
        """``v``'s files, checked to be its version; None if ``v`` was retired meanwhile and
        its files are gone or replaced (the request then takes the current version)."""
        assert v.folder is not None
        with self._reading:
            try:
                files = read_task(v.folder)
                if files.digest != v.digest:  # a replace in progress? read what it commits
                    with self.registry.locked():
                        files = read_task(v.folder)
                problem = ""
                if files.digest != v.digest:
                    problem = (
                        f"task {v.name!r} changed on disk since this server took it in (version "
                        f"{v.version}, the files now hold {files.digest[:12]}): an admin's "
                        f"empty PUT /v1/tasks/{v.name} serves the new files"
                    )
            except (ValueError, OSError) as e:
                problem = f"task {v.name!r} could not be loaded from {v.folder}: {first_line(e)}"
        if not problem:
            return files
        with self._lock:
            if v.retired:
                return None
            self.stats.failures += 1
            if problem != v.problem:
                _log.warning("%s", problem)
                v.problem = problem
        raise TaskUnavailable(problem)

    def _attach(
        self, read: list[tuple[TaskVersion, TaskFiles, float]], victims: list[Slot]
    ) -> None:
        """Put the ``read`` tasks into ``victims`` of their shape (copies) or new adapters,
        delete the other victims first, then publish; the room reserved is given back."""
        spare = list(victims)
        plan: list[tuple[TaskVersion, TaskFiles, float, Slot | None]] = []
        for v, files, seconds in read:
            same = next((s for s in spare if s.shape == files.shape), None)
            if same is not None:
                spare.remove(same)
            plan.append((v, files, seconds, same))
        done: list[tuple[TaskVersion, Slot, str, float]] = []
        error: BaseException | None = None
        try:
            self._drop(spare)  # before new modules: the model never holds more than the budget
            for v, files, seconds, slot in plan:
                start = time.monotonic()
                try:
                    if slot is not None:
                        try:
                            refill(slot, files, str(v.folder))
                        except BaseException:
                            self._drop([slot])
                            raise
                        kind = "refill"
                    else:
                        adapter = f"@{next(self._seq)}"
                        slot = build_slot(self.model, adapter, files, self.device,
                                          self.model_lock, self.structure_lock,
                                          str(v.folder))  # fmt: skip
                        kind = "new"
                except Exception as e:  # the others of the request still go in
                    error = error or e
                    continue
                done.append((v, slot, kind, seconds + time.monotonic() - start))
        finally:
            self._publish_loaded(plan, done, error)
        if error is not None:
            names = [v.name for v, _, _, _ in plan if all(v is not d[0] for d in done)]
            raise TaskUnavailable(f"task(s) {names} could not be loaded: {first_line(error)}")

    def _publish_loaded(
        self,
        plan: list[tuple[TaskVersion, TaskFiles, float, Slot | None]],
        done: list[tuple[TaskVersion, Slot, str, float]],
        error: BaseException | None,
    ) -> None:
        """Serve the tasks loaded (those replaced meanwhile leave the model again) and give
        back the room reserved for the whole plan."""
        trash: list[Slot] = []
        with self._lock:
            self.residency.unreserve(len(plan), sum(v.nbytes for v, _, _, _ in plan))
            for v, slot, kind, seconds in done:
                if v.retired and v.pending == 0:  # replaced and nobody waits for it
                    trash.append(slot)
                    continue
                v.nbytes = slot.nbytes
                self._publish(v, slot)
                self.stats.observe(kind, seconds)
                v.problem = ""
            if error is not None:
                self.stats.failures += 1
            self._lock.notify_all()
        self._drop(trash)

    def _publish(self, v: TaskVersion, slot: Slot) -> None:
        """(lock held) ``v`` is served from ``slot`` from now on."""
        v.slot, slot.holder = slot, v
        self._by_adapter[slot.adapter] = v
        self.residency.add(slot)

    def _evict(self, slot: Slot) -> None:
        """(lock held) Take ``slot`` from its idle holder; the caller reuses or drops it."""
        v = slot.holder
        if v is not None:
            v.slot = None
        slot.holder = None
        self._by_adapter.pop(slot.adapter, None)
        self.residency.remove(slot)
        self.stats.evictions += 1

    def _drop(self, slots: Sequence[Slot]) -> None:
        """Delete ``slots`` (nobody's any more) from the model."""
        if slots:
            with self.structure_lock, self.model_lock:
                for s in slots:
                    delete_adapter(self.model, s.adapter)

    # -- changing ---------------------------------------------------------------------------------
    def put(self, name: str, run: str | Path | None = None) -> TaskVersion:
        """Serve task ``name``: from run folder ``run`` (registered too), else from the registry.

        The new version is read and checked (loaded into the model next to the old one, unless
        paged) before anything is switched; any error (damaged files, another backbone, a
        full/bitfit run) leaves the old version serving and the registry unchanged. A paged
        server loads the new version on its next request; the same files as the current
        version change nothing.

        Raises:
            ValueError, FileNotFoundError: the task files cannot be used.
            UnknownTask: no run given and the registry has no task ``name``.
        """
        with self.registry.locked():  # PUTs and DELETEs of one name commit and switch in order
            if run is not None:
                version = self._put_run(name, Path(run))
            else:
                try:
                    folder = self.registry.path(name)
                except KeyError as err:
                    raise UnknownTask(str(err.args[0])) from err
                if not folder.is_dir():
                    raise FileNotFoundError(f"{folder} is not a folder with adapter files")
                version = self._take(name, folder, str(folder))
            with self._lock:
                old = self._current.get(name)
                if self.paged and old is not None and old.digest == version.digest:
                    version = old  # the same bytes: nothing to switch
                else:
                    self._current[name] = version
            self.skipped.pop(name, None)
        if old is not None and old is not version:
            self._retire(old)
        _log.info("serving task %r version %s from %s", name, version.version, version.source)
        return version

    def _put_run(self, name: str, run: Path) -> TaskVersion:
        """Register run folder ``run`` as ``name`` and take it in: the registry checks the run
        and stages a copy, the copy is read (and loaded, unless paged), and only then is the
        registry changed; any error unloads it again and leaves the registry as it was."""
        if not run.is_dir():
            raise FileNotFoundError(f"{run} is not a folder with adapter files")
        taken: list[TaskVersion] = []

        def take(staged: Path) -> None:
            taken.append(self._take(name, staged, str(run.resolve())))

        try:
            self.registry.add(name, run, replace=True, check=take)  # its checks are the registry's
        except BaseException:
            for version in taken:
                self._delete(version)
            raise
        version = taken[0]
        version.folder = self.registry.path(name)  # a paged version is loaded from there
        return version

    def remove(self, name: str) -> TaskVersion:
        """Stop serving ``name`` (and drop it from the registry); queued rows still finish."""
        with self.registry.locked():
            with self._lock:
                old = self._current.pop(name, None)
                served = self._served()
            if old is None:
                raise UnknownTask(f"no task {name!r} is served; have {served}")
            try:
                if name in self.registry.names():
                    self.registry.remove(name)
            except BaseException:  # the registry keeps it: so does the server
                with self._lock:
                    self._current[name] = old
                raise
        self._retire(old)
        _log.info("stopped serving task %r (version %s)", name, old.version)
        return old

    # -- internals --------------------------------------------------------------------------------
    def _peek(self, name: str, folder: Path, digest: Any) -> TaskVersion:
        """A version listed without reading its weights: config and tensor header checked,
        the version from the registry's index (hashed from the files if it has none)."""
        head = peek_task(folder)
        self._check_backbone(head.info, folder)
        if not (isinstance(digest, str) and len(digest) == 64):
            digest = task_digest(folder)  # a registry written before versions were indexed
        return self._version(
            name, head.info, digest, str(folder), folder, head.shape, head.nbytes(self._float_size)
        )

    def _take(self, name: str, folder: Path, source: str) -> TaskVersion:
        """Read and check ``folder`` (outside the model lock) as a version of ``name``; unless
        paged, load it into the model as a new adapter ``NAME@N`` (unchanged model on error)."""
        start = time.monotonic()
        files = read_task(folder)  # refuses full/bitfit before anything touches the model
        self._check_backbone(files.info, folder)
        version = self._version(
            name, files.info, files.digest, source, folder, files.shape,
            files.nbytes(self._float_size),
        )  # fmt: skip
        if not self.paged:
            adapter = f"{name}@{next(self._seq)}"
            slot = build_slot(self.model, adapter, files, self.device, self.model_lock,
                              self.structure_lock, source)  # fmt: skip
            with self._lock:
                version.nbytes = slot.nbytes
                self._publish(version, slot)
                self.stats.observe("new", time.monotonic() - start)
        return version

    def _check_backbone(self, info: dict[str, Any], folder: Path) -> None:
        found = info.get("metadata", {}).get("backbone_sha256")
        if found != self.backbone["backbone_sha256"]:
            raise ValueError(
                f"refusing {folder}: it was trained on backbone sha256 {str(found)[:12]}, this "
                f"server runs {self.backbone['model']} (sha256 "
                f"{self.backbone['backbone_sha256'][:12]})"
            )

    def _version(
        self,
        name: str,
        info: dict[str, Any],
        digest: str,
        source: str,
        folder: Path,
        shape: str,
        nbytes: int,
    ) -> TaskVersion:
        meta = info.get("metadata", {})
        return TaskVersion(
            name=name,
            version=digest[:12],
            method=info["config"]["method"],
            classes=class_names(meta, int(info["num_classes"])),
            multilabel=bool(meta.get("multilabel")),
            loaded=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source=source,
            digest=digest,
            folder=folder,
            shape=shape,
            nbytes=nbytes,
        )

    def _retire(self, version: TaskVersion) -> None:
        with self._lock:
            version.retired = True
            idle = version.pending == 0
        if idle:
            self._delete(version)

    def _delete(self, version: TaskVersion) -> None:
        """Take ``version`` out of the model (if it is in it)."""
        with self._lock:
            slot = version.slot
            if slot is None:
                return
            version.slot, slot.holder = None, None
            self._by_adapter.pop(slot.adapter, None)
            self.residency.remove(slot)
            self._lock.notify_all()
        self._drop([slot])
