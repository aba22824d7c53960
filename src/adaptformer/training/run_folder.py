"""A run folder and its files: what ``adaptformer train`` writes, and reading it back safely.

Files: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (atomic; ``--resume`` continues exactly from it), ``adapter_config.json`` +
``adapter_model.safetensors`` (the selected epoch's task files), ``learning_curve.png``,
``summary.json``, and ``.adaptformer.lock`` (held while a training writes the folder; it
holds the holder's pid). Every
file read here may come from someone else: checkpoints are read with ``weights_only=True`` and
checked before use.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import reprlib
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.files import check_tensors
from ..adapters.trainable import backbone_fingerprint
from ..utils.distributed import broadcast_object
from ..utils.files import MAX_TENSOR_BYTES, atomic_path, first_line, regular_file_size
from .config import TrainConfig
from .modality import modality_of

_log = logging.getLogger(__name__)
TASK = "default"  # the task name of a run's adapter inside its model
CHECKPOINT = "checkpoint.pt"
# Held (a POSIX record lock) by the training that writes a run folder; not part of the run's results.
LOCK = ".adaptformer.lock"
# Options that may differ when resuming (they do not change the computation).
RESUMABLE_OVERRIDES = ("workers", "device", "output", "divergence_guard")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill or a full disk
    leaves the old file (see :func:`adaptformer.utils.files.atomic_path`).

    torch writes through a Python file object here: given a path, its C++ writer reports a full
    disk as "unexpected pos 704 vs 598" or "basic_ios::clear", which says nothing of the disk;
    a Python file raises ``OSError`` ENOSPC, which ``atomic_path`` turns into its one line.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def default_output(cfg: TrainConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{cfg.dataset}-{cfg.method}-{stamp}")


def prepare_resume(cfg: TrainConfig) -> TrainConfig:
    """The saved config of the run in ``cfg.output``, with only harmless options overridden.

    A run killed before its first checkpoint has only its ``config.yaml``: it restarts from
    scratch. The checkpoint's structure is checked here, before any model is built.
    """
    if not cfg.output:
        raise ValueError("--resume needs --output RUN_DIR (the folder of the run to continue)")
    run = Path(cfg.output)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(
            f"--resume: {run} holds no config.yaml, so it is not a run folder; nothing to resume"
        )
    if (run / CHECKPOINT).is_file():
        read_checkpoint(run / CHECKPOINT)
    elif (run / CHECKPOINT).exists() or (run / CHECKPOINT).is_symlink():
        # a folder, FIFO, device or dangling link: not "no checkpoint yet" (that would silently
        # train again from scratch over whatever the user meant to resume)
        regular_file_size(run / CHECKPOINT, MAX_TENSOR_BYTES, "a checkpoint written by train")
    else:
        _log.warning("%s has no %s yet: starting the run again from scratch", run, CHECKPOINT)
    saved = TrainConfig.load(run / "config.yaml")
    overrides = {k: getattr(cfg, k) for k in RESUMABLE_OVERRIDES}
    return TrainConfig(**{**saved.to_dict(), **overrides})


def check_output(out: Path, resume: bool) -> None:
    """Refuse an ``--output`` that is a file, or (without ``--resume``) a folder with files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file, not a folder: pass a folder path")
    if not resume and out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise ValueError(
            f"run folder {out} is not empty: pass --resume to continue it or another --output"
        )


# Folders this process holds. A POSIX record lock never excludes its own process, so a second
# claim from the same process (a library user calling ``fit`` twice at once) is caught here.
_HELD: set[Path] = set()
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def lock_run_folder(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on run folder ``out`` (created if missing) while the block runs.

    Two trainings into one folder would overwrite each other's files; the second one gets a
    one-line error naming the holder's pid and command line instead. The lock is a POSIX
    record lock (``lockf``), which belongs to this process alone: data-loader workers forked
    while it is held do not inherit it (an ``flock`` would be shared with them and outlive a
    killed trainer until they notice), and the OS drops it the moment the process dies, so a
    run killed with ``kill -9`` can be resumed at once.
    """
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    key = out.resolve()
    with _HELD_GUARD:
        if key in _HELD:
            raise _in_use(out, f"this process, pid {os.getpid()}")
        _HELD.add(key)
    try:
        # One descriptor for the whole hold: closing ANY descriptor of the lock file in this
        # process would release a POSIX lock, so nothing else here opens it.
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise _in_use(out, _holder(out / LOCK)) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)
    finally:
        with _HELD_GUARD:
            _HELD.discard(key)


def _in_use(out: Path, holder: str) -> ValueError:
    return ValueError(
        f"run folder {out} is in use by another `adaptformer train` ({holder}); wait for it to "
        "finish or pass another --output"
    )


def _holder(lock: Path) -> str:
    """``pid N: its command line`` of the process that wrote ``lock`` (it holds the lock now).

    The lock file is tiny and written by us, but the folder may not be: read at most 32 bytes
    of a regular file, and treat anything odd as an unknown holder.
    """
    try:
        if not lock.is_file():
            return "pid unknown"
        with open(lock, "rb") as f:  # another process: its close cannot drop their lock
            pid = int(f.read(32).strip() or b"-1")
    except (OSError, ValueError):
        return "pid unknown"
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()[:300]
        cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = ""
    return f"pid {pid}: {cmd}" if cmd else f"pid {pid}"


@contextlib.contextmanager
def claim_run_folder(out: Path, resume: bool, is_main: bool) -> Iterator[None]:
    """Lock ``out`` on the main rank and check it is still usable, with the same answer on
    every rank: under DDP a refusal seen by rank 0 alone would leave the other ranks waiting
    at the next collective, so rank 0's error is broadcast and every rank raises it."""
    with contextlib.ExitStack() as held:
        problem = None
        if is_main:
            try:
                held.enter_context(lock_run_folder(out))
                check_output(out, resume)  # again: another run may have filled it meanwhile
                remove_stale_temp_files(out)
            except ValueError as e:
                problem = str(e)
        problem = broadcast_object(problem)
        if problem is not None:
            raise ValueError(problem)
        yield


def remove_stale_temp_files(out: Path) -> None:
    """Delete the half-written ``.NAME.*.tmp`` files a killed run left (the lock is held, so
    no other writer owns them)."""
    for tmp in out.glob(".*.tmp"):
        _log.info("removing %s, left by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A run's ``checkpoint.pt``, read without executing code from it.

    Run folders are copied between machines and downloaded, so the file is untrusted:
    ``weights_only=True`` unpickles only tensors and plain containers and refuses anything that
    would import or call code.
    """
    regular_file_size(path, MAX_TENSOR_BYTES, "a training checkpoint")  # a FIFO never blocks it
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, truncated zip, ...: one line, nothing executed
        raise ValueError(
            f"{path} is not a checkpoint this version can read safely ({first_line(e)}); it may "
            "be damaged, tampered with or from an older version: start the run again in a new "
            "--output"
        ) from None
    missing = [k for k in ("next_epoch", "task_state", "optimizer", "rng", "history", "best")
               if not isinstance(ckpt, dict) or k not in ckpt]  # fmt: skip
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing)}; start the run again in a new --output"
        )
    problems = _structure_problems(ckpt)
    if problems:
        raise damaged_checkpoint(path, "; ".join(problems))
    return ckpt


def _structure_problems(ckpt: dict[str, Any]) -> list[str]:
    """What is wrong with a checkpoint's bookkeeping (epochs, history, best, optimizer and scaler
    containers), model aside: the schema of every value the resumed run uses, so a wrong type
    is refused here and cannot crash the run at its first step or after its first epoch."""
    epoch, history, best = ckpt["next_epoch"], ckpt["history"], ckpt["best"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return [f"next_epoch {_short(epoch)} is not a whole number"]
    if not isinstance(history, list) or len(history) != epoch:
        return [f"history is not {epoch} epoch rows"]
    for i, row in enumerate(history):
        problem = _row_problem(row, i)
        if problem:
            return [f"history row {i} {problem}"]
    if not isinstance(best, dict) or not {"score", "epoch", "state"} <= set(best):
        return ["best is not a mapping with score, epoch and state"]
    for key in ("score", "loss"):
        value = best.get(key)
        if value is not None and not (_is_number(value) and math.isfinite(value)):
            return [f"best {key} {_short(value)} is not a finite number"]
    at = best["epoch"]
    if at is not None and not (_is_whole(at) and 0 <= at < len(history)):
        return [f"best epoch {_short(at)} is not one of the {len(history)} epochs"]
    if epoch and best["state"] is None:
        return ["best has no state after the first epoch"]
    return _optimizer_problems(ckpt["optimizer"]) + (
        [] if ckpt.get("scaler") is None or isinstance(ckpt["scaler"], dict)
        else [f"scaler {_short(ckpt['scaler'])} is not a mapping"]
    )  # fmt: skip


def _row_problem(row: Any, index: int) -> str | None:
    """Why one ``history`` row is not ``{"epoch": index, metric: number, ...}``, or None."""
    if not isinstance(row, dict) or not {"epoch", "train_loss", "train_images_per_s"} <= set(row):
        return "is not a mapping with epoch, train_loss and train_images_per_s"
    if row["epoch"] != index or not _is_whole(row["epoch"]):
        return f"has epoch {_short(row['epoch'])}, not {index}"
    wrong = [k for k, v in row.items() if not (isinstance(k, str) and _is_number(v))]
    return f"has values that are not numbers ({', '.join(map(str, wrong[:3]))})" if wrong else None


def _optimizer_problems(optimizer: Any) -> list[str]:
    """The optimizer's ``state_dict`` shape: ``{"state": {index: {name: tensor|number}},
    "param_groups": [{"params": [index, ...], ...}]}`` (sizes are checked after loading, by
    :func:`optimizer_state_problems`, against the parameters)."""
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict):
        return ["optimizer is not a mapping with a state"]
    groups = optimizer.get("param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict)
        and isinstance(g.get("params"), list)
        and all(map(_is_whole, g["params"]))
        for g in groups
    ):
        return ["optimizer param_groups is not a list of groups of parameter indices"]
    for index, entry in optimizer["state"].items():
        if not isinstance(entry, dict):
            return [f"optimizer state of parameter {_short(index)} is {_short(entry)}"]
        for name, value in entry.items():
            if not _is_state_value(value):
                return [f"optimizer state {_short(name)} of parameter {index} is {_short(value)}"]
    return []


def optimizer_state_problems(optimizer: torch.optim.Optimizer) -> list[str]:
    """Loaded optimizer state whose tensors do not match their parameters' shapes.

    ``Optimizer.load_state_dict`` checks the number of parameters, not their sizes: a moment
    of the wrong shape loads, then fails inside the first ``step`` of the resumed run.
    """
    problems = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    problems.append(
                        f"optimizer state {name} has shape {tuple(value.shape)} for a parameter "
                        f"of shape {tuple(p.shape)}"
                    )
    return problems[:3]


def _is_state_value(value: Any) -> bool:
    return value is None or isinstance(value, torch.Tensor) or _is_number(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """``repr`` cut short: values from an untrusted file can be anything, of any size."""
    return reprlib.repr(value)


def state_problems(state: Any, expected: dict[str, torch.Tensor]) -> list[str]:
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        return ["is not a mapping of tensors"]
    return check_tensors(state, expected)


def damaged_checkpoint(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} is damaged or does not belong to this run ({problem}); start the run again "
        "in a new --output"
    )


def load_run(
    run_dir: str | Path, device: torch.device | None = None
) -> tuple[TrainConfig, nn.Module, dict[str, Any]]:
    """Rebuild a finished run's model (backbone + its task files) for eval/predict/export.

    Raises:
        ValueError: the backbone found now is not the one the run was trained on.
    """
    from ..adapters.files import load_adapter, read_adapter_files

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder (no config.yaml); pass --run RUN_DIR"
        )
    cfg = TrainConfig.load(run_dir / "config.yaml")
    meta = read_adapter_files(run_dir)[0]["metadata"]  # damaged files fail before the build
    model = modality_of(cfg).build_backbone(cfg)
    found = backbone_fingerprint(model)
    if meta.get("backbone_sha256") not in (None, found):
        raise ValueError(
            f"the backbone now resolved for --model {cfg.model} (sha256 {found[:12]}) is not the "
            f"one {run_dir} was trained on ({str(meta['backbone_sha256'])[:12]})"
        )
    load_adapter(model, run_dir, name=TASK)
    model.to(device or torch.device("cpu")).eval()
    return cfg, model, meta
