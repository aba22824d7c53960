"""The tasks a server answers: versions in one model, hot add / replace / remove.

Every loaded task version lives in the model as its own adapter, named ``NAME@N`` (``@`` cannot
occur in a registry task name, so it never collides with one). A request takes the versions
current when it arrives and holds them until its rows are answered; replacing or removing a task
only changes which version NEW requests get, and the old adapter is deleted from the model once
its last queued row is done. So no request in flight is dropped or answered by a half-swapped
task.

A version is the first 12 hex digits of the sha256 over every file of the task
(``adapter_config.json`` too: its scale, class names and layers change answers as much as the
weights do): replicas that read the same shared registry report the same version for the same
files.

A task whose method trains the backbone (``full``, ``bitfit``) is refused before anything is
loaded: its file carries backbone tensors, and loading them would change the backbone every
other task shares.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.files import load_adapter
from ..adapters.inject import delete_adapter
from .batcher import Row
from .store import TaskRegistry, class_names, refuse_backbone_methods, task_digest

_log = logging.getLogger(__name__)
ALL = "all"  # the request keyword for every served task


class UnknownTask(KeyError):
    """A request or an admin call names a task this server does not serve."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class TaskVersion:
    """One loaded version of a task.

    Attributes:
        name: the public task name (the registry's).
        adapter: the adapter's name inside the model (``NAME@N``).
        version: sha256 prefix of the weights file.
        method: ``adaptformer``, ``lora``, ``vpt`` or ``linear``.
        classes: one label per output.
        multilabel: probabilities are per-class sigmoids, not a softmax.
        loaded: when this server loaded it (UTC, ISO 8601).
        source: the folder it was read from.
        pending: rows of this version queued or running.
        retired: replaced or removed; deleted from the model when ``pending`` reaches 0.
    """

    name: str
    adapter: str
    version: str
    method: str
    classes: list[str]
    multilabel: bool
    loaded: str
    source: str
    pending: int = 0
    retired: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "method": self.method,
            "num_classes": len(self.classes),
            "multilabel": self.multilabel,
            "loaded": self.loaded,
            "source": self.source,
        }


class Catalog:
    """The served tasks of ``registry`` in ``model``.

    Args:
        registry: the task registry the model was built from (hot adds are written to it).
        model: the registry's backbone, in eval mode on ``device``.
        device: where newly loaded adapters are moved.
    """

    def __init__(self, registry: TaskRegistry, model: nn.Module, device: torch.device) -> None:
        record = registry.backbone
        if record is None:
            raise ValueError(
                f"the task registry {registry.root} is empty: `adaptformer tasks add NAME RUN_DIR` "
                "first"
            )
        self.registry, self.model, self.device = registry, model, device
        self.backbone: dict[str, Any] = record
        self.model_lock = threading.RLock()  # held by every forward pass (see Batcher)
        self._lock = threading.Lock()  # guards the tables below
        self._current: dict[str, TaskVersion] = {}
        self._by_adapter: dict[str, TaskVersion] = {}
        self._seq = itertools.count(1)
        # Registry tasks that could not be loaded at start-up -> why (``/healthz`` shows them).
        self.skipped: dict[str, str] = {}

    @classmethod
    def from_registry(
        cls,
        registry: TaskRegistry,
        names: Sequence[str] | None = None,
        device: torch.device | None = None,
    ) -> Catalog:
        """Build the registry's backbone (its fingerprint checked) and load ``names`` (all).

        A task whose files cannot be loaded is skipped with one warning line and listed in
        :attr:`skipped`, so one broken task does not take every other one offline; a name
        that is not in the registry is still an error.
        """
        device = device or torch.device("cpu")
        model = registry.build_model(names=[], device=device)  # checks the backbone's sha256
        catalog = cls(registry, model, device)
        for name in registry.names() if names is None else names:
            try:
                catalog.put(name)
            except (ValueError, OSError) as e:
                reason = " ".join(str(e).split())
                _log.warning("skipping task %r: %s", name, reason)
                catalog.skipped[name] = reason
        return catalog

    # -- reading ----------------------------------------------------------------------------------
    def list(self) -> list[TaskVersion]:
        with self._lock:
            return [self._current[n] for n in sorted(self._current)]

    def checkout(self, names: Iterable[str], rows_each: int) -> list[TaskVersion]:
        """The current versions of ``names`` (or ``["all"]``), each holding ``rows_each`` rows.

        Call :meth:`release` for rows that never reach the queue.

        Raises:
            UnknownTask: a name that is not served (the message lists those that are).
        """
        names = list(dict.fromkeys(names))
        with self._lock:
            if names == [ALL]:
                names = sorted(self._current)
            unknown = [n for n in names if n not in self._current]
            if unknown or not names:
                raise UnknownTask(
                    f"unknown task(s) {unknown or names}; this server answers "
                    f"{sorted(self._current)} (or '{ALL}')"
                )
            versions = [self._current[n] for n in names]
            for v in versions:
                v.pending += rows_each
        return versions

    def release(self, rows: Sequence[Row]) -> None:
        """Rows done (or abandoned): retired versions without rows left leave the model."""
        done: list[TaskVersion] = []
        with self._lock:
            for r in rows:
                v = self._by_adapter[r.task]
                v.pending -= 1
                if v.retired and v.pending == 0:
                    done.append(v)
        for v in done:
            self._delete(v)

    def release_versions(self, versions: Sequence[TaskVersion], rows_each: int) -> None:
        """Undo a :meth:`checkout` whose rows never reached the queue."""
        self.release([Row(torch.empty(0), v.adapter) for v in versions for _ in range(rows_each)])

    # -- changing ---------------------------------------------------------------------------------
    def put(self, name: str, run: str | Path | None = None) -> TaskVersion:
        """Serve task ``name``: from run folder ``run`` (registered too), else from the registry.

        The new version is loaded into the model next to the old one and checked before
        anything is switched; any error (damaged files, another backbone, a full/bitfit run)
        leaves the old version serving and the registry unchanged.

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
                version = self._load(name, folder, str(folder))
            with self._lock:
                old = self._current.get(name)
                self._current[name] = version
                self._by_adapter[version.adapter] = version
            self.skipped.pop(name, None)
        if old is not None:
            self._retire(old)
        _log.info("serving task %r version %s from %s", name, version.version, version.source)
        return version

    def _put_run(self, name: str, run: Path) -> TaskVersion:
        """Register run folder ``run`` as ``name`` and load it: the registry checks the run
        and stages a copy, the copy is loaded into the model, and only then is the registry
        changed; any error unloads it again and leaves the registry as it was."""
        if not run.is_dir():
            raise FileNotFoundError(f"{run} is not a folder with adapter files")
        loaded: list[TaskVersion] = []

        def load(staged: Path) -> None:
            loaded.append(self._load(name, staged, str(run.resolve())))

        try:
            self.registry.add(name, run, replace=True, check=load)  # its checks are the registry's
        except BaseException:
            for version in loaded:
                self._delete(version)
            raise
        return loaded[0]

    def remove(self, name: str) -> TaskVersion:
        """Stop serving ``name`` (and drop it from the registry); queued rows still finish."""
        with self.registry.locked():
            with self._lock:
                old = self._current.pop(name, None)
            if old is None:
                raise UnknownTask(
                    f"no task {name!r} is served; have {[v.name for v in self.list()]}"
                )
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
    def _load(self, name: str, folder: Path, source: str) -> TaskVersion:
        """Load ``folder`` into the model as a new adapter ``NAME@N`` (checked first: method,
        backbone, files; the model is unchanged on any error)."""
        info = refuse_backbone_methods(folder)  # before anything touches the shared model
        meta = info.get("metadata", {})
        found = meta.get("backbone_sha256")
        if found != self.backbone["backbone_sha256"]:
            raise ValueError(
                f"refusing {folder}: it was trained on backbone sha256 {str(found)[:12]}, this "
                f"server runs {self.backbone['model']} (sha256 "
                f"{self.backbone['backbone_sha256'][:12]})"
            )
        digest = task_digest(folder)[:12]  # regular files only: a FIFO never blocks a PUT
        adapter = f"{name}@{next(self._seq)}"
        with self.model_lock:
            load_adapter(self.model, folder, name=adapter)  # checked; unchanged model on error
            self.model.to(self.device).eval()
        version = TaskVersion(
            name=name,
            adapter=adapter,
            version=digest,
            method=info["config"]["method"],
            classes=class_names(meta, int(info["num_classes"])),
            multilabel=bool(meta.get("multilabel")),
            loaded=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source=source,
        )
        with self._lock:
            self._by_adapter[adapter] = version
        return version

    def _retire(self, version: TaskVersion) -> None:
        with self._lock:
            version.retired = True
            idle = version.pending == 0
        if idle:
            self._delete(version)

    def _delete(self, version: TaskVersion) -> None:
        with self._lock:
            self._by_adapter.pop(version.adapter, None)
        with self.model_lock:
            delete_adapter(self.model, version.adapter)
