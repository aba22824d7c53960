"""A run folder and its files: what ``adaptformer train`` writes, and reading it back safely.

Files: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (atomic; ``--resume`` continues exactly from it), ``adapter_config.json`` +
``adapter_model.safetensors`` (the selected epoch's task files), ``learning_curve.png``,
``summary.json``, and ``.adaptformer.lock`` (held while a training writes the folder). Every
file read here may come from someone else: checkpoints are read with ``weights_only=True`` and
checked before use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.files import check_tensors
from ..adapters.trainable import backbone_fingerprint
from ..utils.files import MAX_TENSOR_BYTES, atomic_path, first_line, regular_file_size
from .config import TrainConfig
from .modality import modality_of

_log = logging.getLogger(__name__)
TASK = "default"  # the task name of a run's adapter inside its model
CHECKPOINT = "checkpoint.pt"
# Held (flock) by the training that writes a run folder; not part of the run's results.
LOCK = ".adaptformer.lock"
# Options that may differ when resuming (they do not change the computation).
RESUMABLE_OVERRIDES = ("workers", "device", "output")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill or a full disk
    leaves the old file (see :func:`adaptformer.utils.files.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


@contextlib.contextmanager
def lock_run_folder(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on run folder ``out`` (created if missing) while the block runs.

    Two trainings into one folder would overwrite each other's files; the second one gets a
    one-line error instead. The lock (``flock``) is released by the OS when the process ends,
    so a killed run never leaves the folder locked.
    """
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(out / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"run folder {out} is in use by another `adaptformer train`; wait for it to "
                "finish or pass another --output"
            ) from None
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
    """What is wrong with a checkpoint's bookkeeping (epochs, history, best), model aside."""
    epoch, history, best = ckpt["next_epoch"], ckpt["history"], ckpt["best"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return [f"next_epoch {epoch!r} is not a whole number"]
    rows_ok = isinstance(history, list) and all(
        isinstance(r, dict) and {"epoch", "train_loss", "train_images_per_s"} <= set(r)
        for r in history
    )
    if not rows_ok or len(history) != epoch:
        return [f"history is not {epoch} epoch rows"]
    if not isinstance(best, dict) or not {"score", "epoch", "state"} <= set(best):
        return ["best is not a mapping with score, epoch and state"]
    at = best["epoch"]
    if at is not None and not (isinstance(at, int) and 0 <= at < len(history)):
        return [f"best epoch {best['epoch']!r} is not one of the {len(history)} epochs"]
    if epoch and best["state"] is None:
        return ["best has no state after the first epoch"]
    return []


def state_problems(state: Any, expected: dict[str, torch.Tensor]) -> list[str]:
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        return ["is not a mapping of tensors"]
    return check_tensors(state, expected)


def damaged_checkpoint(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} is damaged or does not belong to this run ({problem}); start the run again "
        "in a new --output"
    )


def plot_learning_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation accuracy per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    metric = next((m for m in ("val_top1", "val_mAP") if history and m in history[0]), None)
    if metric:
        ax2 = ax.twinx()
        ax2.plot(epochs, [r[metric] for r in history], "s-", color="tab:orange", label=metric)
        ax2.set_ylabel(f"{metric} (%)")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("learning curve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
