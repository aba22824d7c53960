"""A task registry on disk: many small adapter files against one recorded backbone.

AdaptFormer's "scalable" claim (Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535) is
one frozen backbone plus a tiny file per task. An adapter only means something on the exact
weights it was trained with, so the registry records its backbone once (model name and the
sha256 of its weights, as ``adaptformer train`` stores them in each run's metadata) and refuses
any task trained on another one.

Layout::

    ROOT/registry.json                 backbone record + one entry per task (source, date, sha256)
    ROOT/registry.lock                 the lock every change holds (see below)
    ROOT/NAME/adapter_config.json      copied from the run folder
    ROOT/NAME/adapter_model.safetensors

Several writers may share one registry: a server's hot PUT/DELETE threads, ``adaptformer tasks``
in another process, two servers. Every read-modify-write of ``registry.json`` holds one exclusive
lock: a ``threading`` lock per registry folder within a process (POSIX record locks belong to
the process, not the thread) and ``fcntl.lockf`` on ``registry.lock`` between processes (the OS
drops it when a holder dies). A changed folder is staged beside its target, checked, and only
then swapped in: the old folder is moved aside first, the index (written atomically) is the
commit point, and the next writer finishes or undoes whatever a crash interrupted, so a crash at
any point leaves every indexed task complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.config import method_rule
from ..adapters.files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_adapter,
    loadable_problems,
    read_adapter_config,
    read_adapter_files,
)
from ..adapters.trainable import backbone_fingerprint
from ..backbones.create import pretrained_backbone
from ..data.transforms import MAX_IMG_SIZE  # the bound every config shares
from ..utils.files import (
    MAX_TENSOR_BYTES,
    MAX_TEXT_BYTES,
    atomic_write_text,
    is_count,
    open_regular,
    read_json,
    read_yaml_mapping,
    regular_file_size,
)

_log = logging.getLogger(__name__)

ENV = "ADAPTFORMER_TASKS"
INDEX = "registry.json"
LOCK = "registry.lock"
FORMAT = "adaptformer-tasks/1"
TASK_FILES = (CONFIG_NAME, WEIGHTS_NAME)  # every file of a task: all of them change its answers
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # always fullmatch: "$" would accept a trailing newline
# These methods change the backbone's own weights, so their tasks cannot share one backbone.
# Facts of the backbone every task must agree on (normalisation is part of the backbone).
_BACKBONE_KEYS = ("model", "img_size", "mean", "std", "interpolation")


def default_root() -> Path:
    """``$ADAPTFORMER_TASKS`` if set, else ``~/.cache/adaptformer/tasks``."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adaptformer" / "tasks"


@dataclass(frozen=True)
class TaskInfo:
    """One registered task as ``tasks list`` shows it."""

    name: str
    method: str
    num_classes: int
    bytes: int
    source: str
    added: str
    problem: str = ""  # why the task's files cannot be loaded ("" when they can)


class TaskRegistry:
    """Adapter folders that all fit one backbone.

    Args:
        root: the registry folder (created on the first :meth:`add`).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    # -- locking --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, create: bool = False) -> Iterator[None]:
        """Hold the registry's exclusive lock (reentrant within a thread) for the block.

        Every change holds it from reading ``registry.json`` to writing it back, and readers of
        task folders hold it so they never see a folder mid-swap. On the outermost entry,
        whatever a crashed writer left half-done is finished or undone first.

        Args:
            create: create the registry folder (a change is about to write it).
        """
        lock = _root_lock(self.root)
        with lock.thread:
            lock.depth += 1
            try:
                if lock.depth > 1:
                    yield
                    return
                if create:
                    self.root.mkdir(parents=True, exist_ok=True)
                with _process_lock(self.root):
                    if self.root.is_dir():
                        try:
                            self._recover()
                        except OSError as e:  # a read-only registry: read it as it is
                            _log.warning("cannot tidy the registry %s: %s", self.root, e)
                    yield
            finally:
                lock.depth -= 1

    def _recover(self) -> None:
        """Finish or undo what a writer killed mid-change left (the lock is held, so no live
        writer owns these): staged copies go, a folder moved aside comes back unless the
        index already names the folder that replaced it."""
        try:
            index = self._index()
        except ValueError:
            return  # a damaged index is the admin's to fix; touch nothing
        for path in sorted(self.root.iterdir()):
            name, _, kind = path.name.lstrip(".").partition(".")
            if not path.name.startswith(".") or not _NAME.fullmatch(name):
                continue
            if kind.startswith("new-") and path.is_dir() and not path.is_symlink():
                _log.info("removing %s, staged by an interrupted registry change", path)
                shutil.rmtree(path, ignore_errors=True)
            elif kind.startswith("old-") and path.is_dir() and not path.is_symlink():
                self._recover_aside(name, path, index["tasks"].get(name))
            elif path.name.startswith(f".{INDEX}.") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)

    def _recover_aside(self, name: str, aside: Path, entry: dict[str, Any] | None) -> None:
        target = self.root / name
        if entry is not None and target.is_dir():
            recorded = entry.get("sha256")
            try:
                current = task_digest(target)
            except (ValueError, OSError):
                current = None
            if recorded is not None and current != recorded:  # the index still names the old
                _log.warning("task %r: undoing a replace that a crash interrupted", name)
                trash = self.root / f".{name}.new-{secrets.token_hex(4)}"
                target.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
        if entry is not None and not target.exists():
            _log.warning(
                "task %r: restoring its folder, moved aside by an interrupted change", name
            )
            aside.rename(target)
        else:
            shutil.rmtree(aside, ignore_errors=True)
        for left in self.root.glob(f".{name}.new-*"):
            shutil.rmtree(left, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.exists():
            return {"format": FORMAT, "backbone": None, "tasks": {}}
        index = read_json(path, "an adaptformer task registry")
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            found = index.get("format") if isinstance(index, dict) else type(index).__name__
            raise ValueError(f"{path} is not an adaptformer task registry (format {found!r})")
        problems = index_problems(index)
        if problems:
            raise ValueError(f"{path} is damaged: {'; '.join(problems[:3])}; {_REBUILD}")
        return index

    def _folder(self, name: str) -> Path:
        """``ROOT/name``, refused unless it is a plain folder directly inside the registry, so a
        tampered registry.json or a planted link cannot point a removal elsewhere."""
        check_name(name)
        path = self.root / name
        if path.is_symlink() or path.resolve().parent != self.root.resolve():
            raise ValueError(
                f"task folder {path} is a link or lies outside the registry {self.root}; "
                "refusing to use it: remove it by hand if it is yours"
            )
        return path

    @property
    def backbone(self) -> dict[str, Any] | None:
        """The recorded backbone (``model``, ``backbone_sha256``, ``img_size``, ...) or None."""
        return self._index()["backbone"]

    def _require_backbone(self) -> dict[str, Any]:
        record = self.backbone
        if record is None:
            raise ValueError(
                f"the task registry {self.root} is empty: `adaptformer tasks add NAME RUN_DIR` first"
            )
        return record

    def names(self) -> list[str]:
        return sorted(self._index()["tasks"])

    def entries(self) -> dict[str, tuple[Path, dict[str, Any]]]:
        """Every task's folder and index entry (``source``, ``added``, ``sha256``) from one
        read of ``registry.json``: listing 1,000 tasks through :meth:`path` would parse the
        index 1,000 times. Hold :meth:`locked` to keep the folders as listed."""
        return {n: (self._folder(n), dict(e)) for n, e in sorted(self._index()["tasks"].items())}

    def path(self, name: str) -> Path:
        """The adapter folder of task ``name``."""
        folder = self._folder(name)
        if name not in self._index()["tasks"]:
            raise KeyError(
                f"no task {name!r} in the registry {self.root}; have {self.names()} "
                "(add one with `adaptformer tasks add NAME RUN_DIR`)"
            )
        return folder

    def metadata(self, name: str) -> dict[str, Any]:
        """Task ``name``'s saved metadata (``classes``, ``multilabel``, normalisation, ...)."""
        with self.locked():
            return read_adapter_config(self.path(name)).get("metadata", {})

    def list(self) -> list[TaskInfo]:
        """Every task, sorted by name."""
        with self.locked():
            index = self._index()
            return [self._info(n, self._folder(n), e) for n, e in sorted(index["tasks"].items())]

    @staticmethod
    def _info(name: str, folder: Path, entry: dict[str, Any]) -> TaskInfo:
        try:
            return TaskRegistry._checked_info(name, folder, entry)
        except (ValueError, OSError) as e:  # listed with its problem, not a failed listing
            source, added = str(entry.get("source", "?")), str(entry.get("added", "?"))
            return TaskInfo(name, "?", 0, 0, source, added, " ".join(str(e).split()))

    @staticmethod
    def _checked_info(name: str, folder: Path, entry: dict[str, Any]) -> TaskInfo:
        info = read_adapter_config(folder)
        size = sum(regular_file_size(folder / f, MAX_TENSOR_BYTES, f) for f in TASK_FILES)
        return TaskInfo(
            name,
            info["config"]["method"],
            info["num_classes"],
            size,
            str(entry.get("source", "?")),
            str(entry.get("added", "?")),
        )

    # -- changing ---------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        run_dir: str | Path,
        replace: bool = False,
        check: Callable[[Path], None] | None = None,
    ) -> TaskInfo:
        """Copy a run's adapter files in as task ``name``.

        The first task records the backbone; every later one must carry the same weights hash.
        The files are copied to a staging folder inside the registry and every check runs on
        that copy (the bytes that will be served), under the registry's lock; a refused add
        leaves the registry byte-identical.

        Args:
            name: letters, digits, ``-`` and ``_``.
            run_dir: a folder written by ``adaptformer train`` (or by :func:`save_adapter` with
                ``backbone_sha256`` and ``model`` in its metadata).
            replace: overwrite an existing task of that name.
            check: called with the staged folder before anything is committed (a server loads
                the task into its model here); if it raises, nothing is written.

        Raises:
            ValueError: a bad name, an existing task, damaged adapter files, a full/bitfit run,
                adapter tensors loading would refuse, or another backbone.
        """
        self._folder(name)
        run_dir = Path(run_dir)
        check_run(run_dir)  # refused before the registry is touched (or created)
        with self.locked(create=True):
            target = self._folder(name)  # again: no link planted since
            staged = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}.new-"))
            try:
                staged.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide it from other users
                for f in TASK_FILES:
                    _copy_regular(run_dir / f, staged / f)
                _, record = check_run(staged, shown=run_dir)  # the copy is what gets served
                record["checkpoint"] = _checkpoint_of(run_dir)
                index = self._index()
                if name in index["tasks"] and not replace:
                    raise ValueError(
                        f"task {name!r} exists in {self.root}; `adaptformer tasks remove {name}` "
                        "first or pass --replace"
                    )
                _check_backbone(index["backbone"], record, run_dir, self.root)
                if index["backbone"] is None:
                    index["backbone"] = record
                if check is not None:
                    check(staged)
                index["tasks"][name] = {
                    "source": str(run_dir.resolve()),
                    "added": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "sha256": task_digest(staged),
                }
                self._swap_in(name, target, staged, index)
            finally:
                shutil.rmtree(staged, ignore_errors=True)
            _log.info("registered task %r from %s in %s", name, run_dir, self.root)
            return self._checked_info(name, target, index["tasks"][name])

    def _swap_in(self, name: str, target: Path, staged: Path, index: dict[str, Any]) -> None:
        """Put ``staged`` in place of ``target`` and commit ``index``: the old folder is moved
        aside first and deleted only after the index names the new one."""
        aside = self.root / f".{name}.old-{secrets.token_hex(4)}"
        if target.exists():
            os.rename(target, aside)
        try:
            os.rename(staged, target)
            self._write(index)
        except BaseException:  # put everything back: the new folder out, the old one in
            if target.exists():  # only ours can be there: the old one was moved aside
                os.rename(target, staged)
            if aside.exists():
                os.rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)

    def remove(self, name: str) -> None:
        """Delete task ``name``; removing the last task forgets the backbone too."""
        with self.locked():
            path = self.path(name)
            index = self._index()
            del index["tasks"][name]
            if not index["tasks"]:
                index["backbone"] = None
            aside = self.root / f".{name}.old-{secrets.token_hex(4)}"
            if path.exists():
                os.rename(path, aside)
            try:
                self._write(index)
            except BaseException:
                if aside.exists():
                    os.rename(aside, path)
                raise
            shutil.rmtree(aside, ignore_errors=True)

    def _write(self, index: dict[str, Any]) -> None:
        atomic_write_text(self.root / INDEX, json.dumps(index, indent=2) + "\n")

    # -- using ------------------------------------------------------------------------------------
    def load_all(self, model: nn.Module, names: list[str] | None = None) -> nn.Module:
        """Inject every task (or ``names``) into ``model``, after checking it is the backbone.

        Raises:
            ValueError: the registry is empty or ``model``'s backbone weights are not the
                recorded ones.
        """
        record = self._require_backbone()
        names = self.names() if names is None else list(names)
        found = backbone_fingerprint(model)
        if found != record["backbone_sha256"]:
            raise ValueError(
                f"this model's backbone (sha256 {found[:12]}) is not the one the registry "
                f"{self.root} serves ({record['model']}, sha256 {record['backbone_sha256'][:12]})"
            )
        with self.locked():
            paths = [self.path(n) for n in names]  # unknown names fail before any work
            for name, path in zip(names, paths, strict=True):
                refuse_backbone_methods(path)  # never copy a task's backbone into a shared one
                load_adapter(model, path, name=name)
        return model

    def build_model(
        self, names: list[str] | None = None, device: torch.device | None = None
    ) -> nn.Module:
        """The recorded backbone with every task (or ``names``) loaded, in eval mode."""
        record = self._require_backbone()
        model = self._backbone(record)
        self.load_all(model, names)
        return model.to(device or torch.device("cpu")).eval()

    def _backbone(self, record: dict[str, Any]) -> nn.Module:
        """The recorded backbone; its checkpoint (a path in registry.json) is checked to be a
        regular file first, and a pickle holding more than tensors is one line that never
        suggests unpickling it anyway."""
        checkpoint = record.get("checkpoint")
        if checkpoint is not None:
            regular_file_size(checkpoint, MAX_TENSOR_BYTES, "a backbone checkpoint")
        try:
            return pretrained_backbone(record["model"], checkpoint, record["img_size"])
        except ValueError as e:
            if not _is_unsafe_pickle(e):
                raise
            raise ValueError(
                f"the backbone checkpoint {checkpoint} named in {self.root / INDEX} holds "
                "pickled Python objects besides tensors, which adaptformer never unpickles "
                "(unpickling can run code); convert it to .safetensors or point the registry "
                "at a plain state dict"
            ) from None


_REBUILD = "fix or delete registry.json and add the tasks again"


class _RootLock:
    """A registry folder's lock within this process: the thread lock and its holder's depth."""

    def __init__(self) -> None:
        self.thread = threading.RLock()
        self.depth = 0


_ROOT_LOCKS: dict[str, _RootLock] = {}
_ROOT_LOCKS_GUARD = threading.Lock()


def _root_lock(root: Path) -> _RootLock:
    with _ROOT_LOCKS_GUARD:
        return _ROOT_LOCKS.setdefault(os.path.realpath(root), _RootLock())


@contextlib.contextmanager
def _process_lock(root: Path) -> Iterator[None]:
    """``fcntl.lockf`` on ``root/registry.lock`` for the block (no-op where there is no fcntl,
    or for a registry folder we cannot write: nobody can change it through us then)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: threads of one process are still excluded
        yield
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(root / LOCK, flags, 0o666)
    except FileNotFoundError:  # no registry folder yet: nothing to protect
        yield
        return
    except PermissionError:
        _log.debug("%s is read-only: reading it without the lock", root)
        yield
        return
    except OSError as e:  # a link or a folder planted as registry.lock
        raise ValueError(
            f"cannot lock {root / LOCK} ({e.strerror}); it must be a plain file: remove it"
        ) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # blocks until another process releases it
        yield
    finally:
        os.close(fd)  # releases the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_unsafe_pickle(error: BaseException) -> bool:
    import pickle

    cause = error.__cause__
    return isinstance(cause, pickle.UnpicklingError) or "weights_only" in str(error)


def _copy_regular(src: Path, dst: Path) -> None:
    """Copy a task file, refusing FIFOs, devices and oversized files before opening them, and
    flush it to disk (it is renamed into place, and a crash must not leave it empty)."""
    limit = MAX_TEXT_BYTES if src.name == CONFIG_NAME else MAX_TENSOR_BYTES
    with open_regular(src, limit, f"a task's {src.name}") as f, open(dst, "xb") as out:
        shutil.copyfileobj(f, out)
        out.flush()
        os.fsync(out.fileno())


def task_digest(folder: Path) -> str:
    """sha256 over every file of a task (:data:`TASK_FILES`, each name and length-prefixed):
    two tasks answer alike only if this agrees, so it is the task's version."""
    h = hashlib.sha256()
    for f in TASK_FILES:
        path = folder / f
        with open_regular(path, task_file_limit(f), f"a task's {f}") as src:
            size = os.fstat(src.fileno()).st_size
            h.update(f"{f}\0{size}\0".encode())
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def digest_of(files: dict[str, bytes]) -> str:
    """:func:`task_digest` of a task's files already read (``{file name: bytes}``): a server
    paging tasks hashes the very bytes it loads."""
    h = hashlib.sha256()
    for f in TASK_FILES:
        h.update(f"{f}\0{len(files[f])}\0".encode())
        h.update(files[f])
    return h.hexdigest()


def task_file_limit(name: str) -> int:
    """The most bytes task file ``name`` may hold."""
    return MAX_TEXT_BYTES if name == CONFIG_NAME else MAX_TENSOR_BYTES


def refuse_backbone_methods(folder: Path) -> dict[str, Any]:
    """``folder``'s adapter config, refused if its method trains the shared backbone (``full``,
    ``bitfit``): loading it would copy its backbone tensors over every other task's."""
    info = read_adapter_config(folder)
    method = info["config"]["method"]
    if method_rule(method).trains_backbone:
        raise ValueError(
            f"{folder} was trained with --method {method}, which changes the backbone's own "
            "weights, so it cannot share one backbone with other tasks; register adaptformer, "
            "lora, vpt or linear runs"
        )
    return info


def check_run(folder: Path, shown: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run folder's adapter files checked as loading them will check them, without the
    backbone: the method (no full/bitfit), the files on their own (types, sizes, finite and
    bounded values), then the exact tensor set, shapes and kinds that injecting its config
    into a backbone of the recorded width and depth expects. Returns the config and the
    backbone record (checkpoint unset).

    Args:
        shown: the folder named in errors (the run, when ``folder`` is its staged copy).
    """
    shown = shown or folder
    try:
        refuse_backbone_methods(folder)
        info, tensors = read_adapter_files(folder)
        problems = loadable_problems(info, tensors)
    except ValueError as e:
        raise ValueError(str(e).replace(str(folder), str(shown))) from None
    if problems:
        raise ValueError(
            f"adapter in {shown} cannot be loaded: {'; '.join(problems)}; it is damaged or was "
            "written by another tool: save it again with adaptformer"
        )
    return info, _backbone_record(shown, info)


def _checkpoint_of(run_dir: Path) -> str | None:
    """The backbone checkpoint named in the run's config.yaml (resolved), if any."""
    config = run_dir / "config.yaml"
    if not config.exists():
        return None
    checkpoint = read_yaml_mapping(config).get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint:
        return str(Path(checkpoint).expanduser().resolve())
    return None


def index_problems(index: dict[str, Any]) -> list[str]:
    """What is wrong with the types and sizes of a parsed registry.json (empty when fine)."""
    tasks, backbone = index.get("tasks"), index.get("backbone")
    if not isinstance(tasks, dict):
        return ["'tasks' is not a mapping of name: entry"]
    problems = []
    if backbone is None:
        if tasks:
            problems.append("it lists tasks but records no 'backbone'")
    elif not isinstance(backbone, dict):
        problems.append("'backbone' is not a mapping")
    else:
        problems += [f"backbone {p}" for p in _field_problems(backbone, _BACKBONE_FIELDS)]
    for name, entry in tasks.items():
        if not _NAME.fullmatch(name):
            problems.append(f"task {name!r} is not a valid name")
        elif not isinstance(entry, dict):
            problems.append(f"task {name!r} is not a mapping")
        else:
            problems += [f"task {name!r} {p}" for p in _field_problems(entry, _ENTRY_FIELDS)]
    return problems


def _field_problems(
    record: dict[str, Any], fields: dict[str, tuple[str, Callable[[Any], bool], bool]]
) -> list[str]:
    out = []
    for key, (kind, ok, required) in fields.items():
        if key not in record:
            if required:
                out.append(f"lacks {key!r}")
        elif not ok(record[key]):
            out.append(f"{key} must be {kind}, not {_shown(record[key])}")
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _text(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 4096 and "\0" not in v


def _hex64(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


def _three_numbers(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 3
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        and all(math.isfinite(x) for x in v)
    )


# key -> (what it must be, check, required)
_BACKBONE_FIELDS: dict[str, tuple[str, Callable[[Any], bool], bool]] = {
    "model": ("a model name", _text, True),
    "backbone_sha256": ("64 hex digits", _hex64, True),
    "img_size": (f"a whole number 1..{MAX_IMG_SIZE} or null",
                 _optional(lambda v: is_count(v) and 0 < v <= MAX_IMG_SIZE), False),
    "mean": ("3 finite numbers or null", _optional(_three_numbers), False),
    "std": ("3 finite numbers or null", _optional(_three_numbers), False),
    "interpolation": ("a filter name or null", _optional(_text), False),
    "checkpoint": ("a file path or null", _optional(_text), False),
}  # fmt: skip
_ENTRY_FIELDS: dict[str, tuple[str, Callable[[Any], bool], bool]] = {
    "source": ("a folder path", _text, False),
    "added": ("a date", _text, False),
    "sha256": ("64 hex digits", _hex64, False),
}


def class_names(meta: dict[str, Any], width: int) -> list[str]:
    """A task's label names from its metadata, or ``"0"``, ``"1"``, ... when the (untrusted)
    metadata holds no list of exactly ``width`` names."""
    classes = meta.get("classes")
    if isinstance(classes, list) and len(classes) == width:
        return [str(c) for c in classes]
    return [str(i) for i in range(width)]


def check_name(name: str) -> str:
    """``name`` if it is a valid task name (the whole of it: letters, digits, ``-``, ``_``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"task name {name!r} may only hold letters, digits, '-' and '_'")
    return name


def _backbone_record(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """What the run says about its backbone, with the checkpoint path from its config.yaml."""
    meta = info.get("metadata", {})
    if not all(isinstance(meta.get(k), str) and meta[k] for k in ("backbone_sha256", "model")):
        raise ValueError(
            f"{run_dir} records no backbone (metadata 'model' and 'backbone_sha256'); register "
            "folders written by `adaptformer train`, or save_adapter(..., metadata={'model': ..., "
            "'backbone_sha256': backbone_fingerprint(model), ...})"
        )
    record = {k: meta.get(k) for k in _BACKBONE_KEYS}
    record["backbone_sha256"] = meta["backbone_sha256"]
    record["checkpoint"] = None
    problems = _field_problems(record, _BACKBONE_FIELDS)
    if problems:
        raise ValueError(f"{run_dir} records an unusable backbone: {'; '.join(problems)}")
    return record


def _check_backbone(
    recorded: dict[str, Any] | None, record: dict[str, Any], run_dir: Path, root: Path
) -> None:
    if recorded is None:
        return
    size, served = record.get("img_size"), recorded.get("img_size")
    if record["backbone_sha256"] != recorded["backbone_sha256"] and (
        record["model"] == recorded["model"] and None not in (size, served) and size != served
    ):  # the position embeddings are resampled to the input size: the size is the cause
        raise ValueError(
            f"refusing {run_dir}: it was trained at --img-size {size}, but the registry {root} "
            f"serves {recorded['model']} at {served} (the backbone's position embeddings are "
            f"resampled to the input size, so its weights differ): train it again with "
            f"--img-size {served}, or use another --registry for {size}-px tasks"
        )
    if record["backbone_sha256"] != recorded["backbone_sha256"]:
        raise ValueError(
            f"refusing {run_dir}: it was trained on backbone {record['model']} "
            f"(weights sha256 {record['backbone_sha256'][:12]}), but the registry {root} serves "
            f"{recorded['model']} (sha256 {recorded['backbone_sha256'][:12]}); an adapter only "
            "works on the exact weights it was trained with: use another --registry for it"
        )
    differ = [
        k
        for k in ("img_size", "mean", "std", "interpolation")
        if record.get(k) is not None and recorded.get(k) is not None and record[k] != recorded[k]
    ]
    if differ:
        raise ValueError(
            f"refusing {run_dir}: its preprocessing ({', '.join(f'{k}={record[k]}' for k in differ)}) "
            f"differs from the registry's ({', '.join(f'{k}={recorded[k]}' for k in differ)})"
        )
