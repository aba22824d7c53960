"""A training run from a :class:`TrainConfig`: build, train, select on val, test once, save.

Run folder: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (atomic; ``--resume`` continues exactly from it), ``adapter_config.json`` +
``adapter_model.safetensors`` (the selected epoch's task files), ``learning_curve.png`` and
``summary.json``. Everything that can be wrong with the input is checked before the folder is
created, so a bad command writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..adapters.files import CONFIG_NAME, WEIGHTS_NAME, adapter_tensors, check_tensors, save_adapter
from ..adapters.inject import inject
from ..adapters.trainable import backbone_parameters, mark_trainable
from ..backbones.create import create_backbone
from ..data import DataConfig, DataSplits, build_datasets
from ..utils import distributed as dist_utils
from ..utils.files import atomic_path, atomic_write_text, first_line
from .config import TrainConfig
from .engine import GlobalBatchSampler, Schedule, evaluate, train_one_epoch

_log = logging.getLogger(__name__)
TASK = "default"
CHECKPOINT = "checkpoint.pt"
# Held (flock) by the training that writes a run folder; not part of the run's results.
LOCK = ".adaptformer.lock"
# Options that may differ when resuming (they do not change the computation).
RESUMABLE_OVERRIDES = ("workers", "device", "output")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available on this machine; use --device cpu"
        )
    return device


def backbone_source(cfg: TrainConfig) -> tuple[str, str | None, bool]:
    """(timm architecture, local checkpoint, use timm's hub) for ``--model``/``--checkpoint``.

    A backbone without pretrained weights is refused: adapting random weights is a silent misuse.
    """
    from ..backbones.registry import get_model, resolve_checkpoint

    entry = get_model(cfg.model)
    arch = entry.architecture if entry else cfg.model
    if cfg.checkpoint:
        return arch, cfg.checkpoint, False
    if entry is None and cfg.model not in timm.list_pretrained():
        raise ValueError(
            f"--model {cfg.model!r} has no pretrained weights here: pass --checkpoint PATH, a "
            "registry name (`adaptformer models`) or a timm pretrained tag"
        )
    path = resolve_checkpoint(cfg.model)
    return arch, (str(path) if path else None), path is None


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    arch, checkpoint, hub = backbone_source(cfg)
    return create_backbone(
        arch, checkpoint=checkpoint, img_size=cfg.img_size, num_classes=num_classes, pretrained=hub
    )


def build_backbone(cfg: TrainConfig) -> nn.Module:
    """The features-only backbone of ``cfg``: an image model, or for ``video-list`` a video
    model (VideoMAE, or the image model inflated to video)."""
    if cfg.is_video:
        from .video import build_video_backbone

        return build_video_backbone(cfg, build_model)
    return build_model(cfg, num_classes=0)


def build_task_data(cfg: TrainConfig, stats: dict[str, Any]):
    """The train/val/test splits of ``cfg``'s data set (image or video)."""
    if cfg.is_video:
        from .video import build_video_data

        return build_video_data(cfg, stats)
    return build_data(cfg, stats)


def evaluate_split(
    model: nn.Module,
    dataset,
    cfg: TrainConfig,
    device: torch.device,
    info: dist_utils.DistInfo,
    prefix: str,
    progress: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Exact metrics of ``dataset`` (multi-view per video for video data)."""
    batch_size = batch_size or cfg.batch_size
    workers = cfg.workers if workers is None else workers
    if cfg.is_video:
        from .video import evaluate_videos

        views = cfg.test_clips * cfg.test_crops
        return evaluate_videos(model, dataset, max(1, batch_size // views), device, info,
                               cfg.precision, workers, prefix, progress)  # fmt: skip
    return evaluate(model, dataset, batch_size, device, info, cfg.precision, workers, prefix,
                    progress)  # fmt: skip


def data_stats(model: nn.Module) -> dict[str, Any]:
    """Normalisation and resize filter from the backbone's own timm config."""
    data_cfg = timm.data.resolve_model_data_config(model)
    return {
        "mean": list(data_cfg["mean"]),
        "std": list(data_cfg["std"]),
        "interpolation": data_cfg.get("interpolation", "bicubic"),
    }


def build_data(cfg: TrainConfig, stats: dict[str, Any]) -> DataSplits:
    data_cfg = DataConfig(
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        img_size=cfg.img_size,
        train_per_class=cfg.train_per_class,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        augment=cfg.augment,
        download=cfg.download,
        strict_data=cfg.strict_data,
        test_split=cfg.test_split,
        train_split=cfg.train_split,
    )
    return build_datasets(data_cfg, stats["mean"], stats["std"], stats["interpolation"])


def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 over the backbone's tensors (names, shapes, bytes): which backbone an adapter needs."""
    h = hashlib.sha256()
    for name, p in sorted(backbone_parameters(model).items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain types, so ``weights_only`` loading reads it
    (numpy's key array would need unpickling arbitrary objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill or a full disk
    leaves the old file (see :func:`adaptformer.utils.files.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Weight decay on matrices only (nanoGPT/MAE convention): never on biases, norms, scales."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


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


@dataclass
class Run:
    """What one process holds during training."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    info: dist_utils.DistInfo
    model: nn.Module
    data: DataSplits
    stats: dict[str, Any]
    fingerprint: str


def fit(cfg: TrainConfig, resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Train, select on validation, evaluate the test split once; returns ``summary.json``."""
    if resume:
        cfg = prepare_resume(cfg)
    device = resolve_device(cfg.device)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU (loss scaling); use bf16 on CPU")
    info = dist_utils.setup(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    progress = sys.stderr.isatty() and info.is_main if progress is None else progress
    try:
        return _fit(cfg, resume, device, info, progress)
    finally:
        dist_utils.teardown()


def _fit(
    cfg: TrainConfig,
    resume: bool,
    device: torch.device,
    info: dist_utils.DistInfo,
    progress: bool,
) -> dict[str, Any]:
    seed_everything(cfg.seed)
    out = Path(dist_utils.broadcast_object(cfg.output or default_output(cfg)))
    check_output(out, resume)

    # Build everything that can fail on bad input before writing anything.
    model = build_backbone(cfg)
    stats = data_stats(model)
    data = build_task_data(cfg, stats)
    fingerprint = backbone_fingerprint(model)
    seed_everything(cfg.seed)  # adapter and head init independent of what the data code drew
    try:
        inject(model, cfg.adapter_config(), name=TASK, num_classes=data.num_classes)
    except TypeError as e:  # an architecture AdaptFormer cannot adapt: the user's choice
        raise ValueError(f"--model {cfg.model}: {e}") from e
    counts = mark_trainable(model, cfg.method)  # logs the counts
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    sampler = GlobalBatchSampler(len(data.train), cfg.batch_size, info, cfg.seed)

    with lock_run_folder(out) if info.is_main else contextlib.nullcontext():
        if info.is_main:
            check_output(out, resume)  # again: another run may have filled it meanwhile
            remove_stale_temp_files(out)
            if not resume:
                cfg.save(out / "config.yaml")
        dist_utils.barrier()
        run = Run(cfg, out, device, info, model, data, stats, fingerprint)
        return _train(run, sampler, counts, resume and (out / CHECKPOINT).is_file(), progress)


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


def _train(
    run: Run, sampler: GlobalBatchSampler, counts, resume: bool, progress: bool
) -> dict[str, Any]:
    cfg, info, device, model = run.cfg, run.info, run.device, run.model
    world_batch = cfg.batch_size * cfg.accum_steps * info.world_size
    lr = cfg.peak_lr(world_batch)
    optimizer = make_optimizer(cfg, model, lr)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    schedule = Schedule(lr, cfg.min_lr, cfg.resolved_warmup_epochs, cfg.epochs)
    ddp = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled
        else model
    )

    start_epoch, history, best = 0, [], {"score": None, "loss": None, "epoch": None, "state": None}
    if resume:
        start_epoch, history, best = _load_checkpoint(run, optimizer, scaler)
        _log.info("resuming %s at epoch %d", run.out, start_epoch)
    _write_metrics(run, history)
    steps = (
        len(sampler)
        if cfg.max_steps_per_epoch is None
        else min(len(sampler), cfg.max_steps_per_epoch * cfg.accum_steps)
    )
    _log.info("%s", describe_schedule(cfg, schedule, world_batch, steps // cfg.accum_steps))

    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        loader = DataLoader(
            run.data.train,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch),
            pin_memory=device.type == "cuda",
            collate_fn=_collate(cfg),
        )
        t0 = time.time()
        row: dict[str, Any] = {"epoch": epoch}
        row |= train_one_epoch(
            ddp, loader, optimizer, schedule, epoch, device, cfg.precision, cfg.accum_steps,
            cfg.label_smoothing, cfg.clip_grad, scaler, cfg.max_steps_per_epoch, progress,
        )  # fmt: skip
        if run.data.val is not None:
            row |= evaluate_split(ddp, run.data.val, cfg, device, info, "val", progress)
        if cfg.test_every_epoch:
            row |= evaluate_split(ddp, run.data.test, cfg, device, info, "test", progress)
        row["seconds"] = time.time() - t0
        score, loss = row.get("val_top1", row.get("val_mAP")), row.get("val_loss")
        if improves(score, loss, best):
            best = {"score": score, "loss": loss, "epoch": epoch, "state": _task_state(model)}
        history.append(row)
        _log.info(
            "epoch %d: %s",
            epoch,
            ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)),
        )
        if info.is_main:
            _write_metrics(run, history)
            _save_checkpoint(run, optimizer, scaler, epoch + 1, history, best)
        dist_utils.barrier()
    return _finish(run, counts, history, best, progress)


def describe_schedule(
    cfg: TrainConfig, schedule: Schedule, world_batch: int, steps_per_epoch: int
) -> str:
    """One log line with the resolved schedule, so a run that cannot train is seen at once."""
    total = steps_per_epoch * cfg.epochs
    warmup = round(schedule.warmup_epochs * steps_per_epoch)
    source = (
        "--lr"
        if cfg.lr is not None
        else f"blr {cfg.resolved_blr:g}{'' if cfg.blr is not None else ' (default)'} x total "
        f"batch {world_batch} / 256"
    )
    return (
        f"schedule: {cfg.optimizer}, {total} optimizer steps ({steps_per_epoch} per epoch x "
        f"{cfg.epochs} epochs); linear warm-up over {warmup} steps "
        f"({schedule.warmup_epochs:g} epochs) to peak lr {schedule.lr:.3g} ({source}); "
        f"half-cycle cosine to final lr {schedule(cfg.epochs):.3g}"
    )


def improves(score: float | None, loss: float | None, best: dict[str, Any]) -> bool:
    """Whether an epoch with validation ``score`` (higher is better) and ``loss`` beats ``best``.

    Ties in the score go to the lower validation loss: on a small validation set (100 images)
    top-1 moves in steps of 1%, so ties are common, and keeping the earliest tied epoch kept
    under-trained heads (seen in the accuracy benchmark). Without validation data (score
    None) the last epoch wins.
    """
    if best["score"] is None or score is None or score > best["score"]:
        return True
    if score < best["score"] or loss is None:
        return False
    return best.get("loss") is None or loss < best["loss"]  # old checkpoints have no "loss"


def _collate(cfg: TrainConfig):
    if cfg.is_video:  # drops clips that failed to decode instead of crashing the batch
        from ..data.video.datasets import collate_videos

        return collate_videos
    return None


def _task_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in adapter_tensors(model, TASK).items()}


def _load_task_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, t in adapter_tensors(model, TASK).items():
            t.copy_(state[k])


def _save_checkpoint(run: Run, optimizer, scaler, next_epoch: int, history, best) -> None:
    atomic_torch_save(
        {
            "next_epoch": next_epoch,
            "task_state": _task_state(run.model),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "rng": rng_state(),
            "history": history,
            "best": best,
            "config": run.cfg.to_dict(),
        },
        run.out / CHECKPOINT,
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A run's ``checkpoint.pt``, read without executing code from it.

    Run folders are copied between machines and downloaded, so the file is untrusted:
    ``weights_only=True`` unpickles only tensors and plain containers and refuses anything that
    would import or call code.
    """
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
        raise _damaged_checkpoint(path, "; ".join(problems))
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


def _load_checkpoint(run: Run, optimizer, scaler) -> tuple[int, list, dict]:
    """Restore training from the run's checkpoint; a damaged one is a one-line ``ValueError``
    and leaves the model as built."""
    path = run.out / CHECKPOINT
    ckpt = read_checkpoint(path)
    expected = adapter_tensors(run.model, TASK)
    states = [("task_state", ckpt["task_state"]), ("best state", ckpt["best"]["state"])]
    problems = [
        f"{label} {problem}"
        for label, state in states
        if state is not None or label == "task_state"
        for problem in _state_problems(state, expected)
    ]
    if ckpt["next_epoch"] > run.cfg.epochs:
        problems.append(f"next_epoch {ckpt['next_epoch']} is past --epochs {run.cfg.epochs}")
    if problems:
        raise _damaged_checkpoint(path, "; ".join(problems))
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        raise _damaged_checkpoint(path, f"optimizer or random state: {first_line(e)}") from None
    _load_task_state(run.model, ckpt["task_state"])
    return ckpt["next_epoch"], ckpt["history"], ckpt["best"]


def _state_problems(state: Any, expected: dict[str, torch.Tensor]) -> list[str]:
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        return ["is not a mapping of tensors"]
    return check_tensors(state, expected)


def _damaged_checkpoint(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} is damaged or does not belong to this run ({problem}); start the run again "
        "in a new --output"
    )


def _write_metrics(run: Run, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole, so a resumed run never shows an epoch twice."""
    if not run.info.is_main:
        return
    atomic_write_text(run.out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def _finish(run: Run, counts, history, best, progress: bool) -> dict[str, Any]:
    cfg, model = run.cfg, run.model
    _load_task_state(model, best["state"])
    test = evaluate_split(model, run.data.test, cfg, run.device, run.info, "test", progress)
    summary: dict[str, Any] = {}
    if run.info.is_main:
        metadata = {
            "classes": run.data.classes,
            "multilabel": run.data.multilabel,
            "video": cfg.is_video,
            "model": cfg.model,
            "img_size": cfg.img_size,
            "backbone_sha256": run.fingerprint,
            **run.stats,
        }
        save_adapter(model, run.out, TASK, metadata=metadata)
        artifact = (run.out / WEIGHTS_NAME).stat().st_size + (run.out / CONFIG_NAME).stat().st_size
        best_row = history[best["epoch"]] if best["epoch"] is not None else {}
        speeds = [r["train_images_per_s"] for r in history]
        summary = {
            "method": cfg.method,
            "model": cfg.model,
            "dataset": cfg.dataset,
            "trainable_params": counts.trainable,
            "backbone_params": counts.backbone,
            "trainable_percent": counts.trainable_percent,
            "best_epoch": best["epoch"],
            "val_top1": best_row.get("val_top1"),
            "val_mAP": best_row.get("val_mAP"),
            "val_loss": best_row.get("val_loss"),
            "test_top1": test.get("test_top1"),
            "test_loss": test.get("test_loss"),
            "test_top5": test.get("test_top5"),
            "test_mAP": test.get("test_mAP"),
            "test_images": test["test_images"],
            "train_images_per_s": float(np.median(speeds)) if speeds else None,
            "artifact_bytes": artifact,
            "epochs": cfg.epochs,
            "seed": cfg.seed,
            "data": run.data.summary(),
            "world_size": run.info.world_size,
        }
        summary = {k: v for k, v in summary.items() if v is not None}
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_learning_curve(history, run.out / "learning_curve.png")
        _log.info("test: %s", {k: round(v, 3) for k, v in test.items() if isinstance(v, float)})
    return summary


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
    model = build_backbone(cfg)
    found = backbone_fingerprint(model)
    if meta.get("backbone_sha256") not in (None, found):
        raise ValueError(
            f"the backbone now resolved for --model {cfg.model} (sha256 {found[:12]}) is not the "
            f"one {run_dir} was trained on ({str(meta['backbone_sha256'])[:12]})"
        )
    load_adapter(model, run_dir, name=TASK)
    model.to(device or torch.device("cpu")).eval()
    return cfg, model, meta
