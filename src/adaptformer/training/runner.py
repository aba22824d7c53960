"""A training run from a :class:`TrainConfig`: build, train, select on val, test once, save.

``fit`` builds everything that can fail on bad input before the run folder
(:mod:`adaptformer.training.run_folder`) is created, so a bad command writes nothing; it then
trains epoch by epoch, checkpointing after each, and ``--resume`` continues exactly from the
last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..adapters.files import CONFIG_NAME, WEIGHTS_NAME, adapter_tensors, save_adapter
from ..adapters.inject import inject
from ..adapters.trainable import backbone_fingerprint, mark_trainable
from ..utils import distributed as dist_utils
from ..utils.distributed import resolve_device
from ..utils.errors import TrainingInterrupted
from ..utils.files import atomic_write_text, first_line
from .config import TrainConfig
from .draws import SeededBatches, SeededDraws
from .engine import DivergenceGuard, GlobalBatchSampler, Schedule, train_one_epoch
from .eta import EtaLoader
from .first_try import log_filled, resolve_epochs, resolve_for_device
from .interrupt import DeferredInterrupt
from .modality import Modality, data_stats, modality_of
from .param_groups import describe_lr_scales, fresh_reach_warning, param_groups
from .plots import plot_learning_curve
from .run_folder import (
    CHECKPOINT,
    TASK,
    atomic_torch_save,
    check_output,
    claim_run_folder,
    damaged_checkpoint,
    default_output,
    optimizer_state_problems,
    prepare_resume,
    read_checkpoint,
    state_problems,
)
from .trackers import Trackers, check_available

_log = logging.getLogger(__name__)


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


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Groups per lr multiplier and weight decay (:mod:`.param_groups`); weight decay on
    matrices only."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, cfg.new_params_lr_scale)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


@dataclass
class Run:
    """What one process holds during training."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    info: dist_utils.DistInfo
    model: nn.Module
    data: Any  # the modality's splits: DataSplits (images) or VideoDataSplits
    stats: dict[str, Any]
    fingerprint: str
    modality: Modality  # image or video, chosen once

    def evaluate(self, model: nn.Module, dataset: Any, prefix: str, progress: bool) -> dict:
        """Exact metrics of ``dataset`` with the run's batch size and workers."""
        cfg = self.cfg
        return self.modality.evaluate(model, dataset, cfg, self.device, self.info, prefix,
                                      progress, cfg.batch_size, cfg.workers)  # fmt: skip


def fit(
    cfg: TrainConfig, resume: bool = False, progress: bool | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Train, select on validation, evaluate the test split once; returns ``summary.json``'s
    contents plus ``run_folder`` (the folder written, generated when ``cfg.output`` is empty)
    on the main process, ``{}`` on the other DDP ranks."""
    if resume:
        cfg = prepare_resume(cfg)
    device = resolve_device(cfg.device)
    cfg, filled = resolve_for_device(cfg, device)  # unset size and precision: a first try
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU (loss scaling); use bf16 on CPU")
    info = dist_utils.setup(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    progress = sys.stderr.isatty() and info.is_main if progress is None else progress
    try:
        return _fit(cfg, resume, device, info, progress, dry_run, filled)
    finally:
        dist_utils.teardown()


def _fit(
    cfg: TrainConfig,
    resume: bool,
    device: torch.device,
    info: dist_utils.DistInfo,
    progress: bool,
    dry_run: bool = False,
    filled: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    seed_everything(cfg.seed)
    out = Path(dist_utils.broadcast_object(cfg.output or default_output(cfg)))
    check_output(out, resume)

    # Build everything that can fail on bad input before writing anything.
    modality = modality_of(cfg)
    model = modality.build_backbone(cfg)
    stats = data_stats(model)
    data = modality.build_data(cfg, stats)
    cfg, more = resolve_epochs(cfg, device, len(data.train))  # unset epochs: from the data
    if info.is_main:
        log_filled([*filled, *more], device, len(data.train))
    fingerprint = backbone_fingerprint(model)
    seed_everything(cfg.seed)  # adapter and head init independent of what the data code drew
    try:
        inject(model, cfg.adapter_config(), name=TASK, num_classes=data.num_classes)
    except TypeError as e:  # an architecture AdaptFormer cannot adapt: the user's choice
        raise ValueError(f"--model {cfg.model}: {e}") from e
    counts = mark_trainable(model, cfg.method)  # logs the counts
    if info.is_main:
        check_available(cfg.log_to)  # a missing tracker package fails before anything is written
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    sampler = GlobalBatchSampler(len(data.train), cfg.batch_size, info, cfg.seed)
    if dry_run:  # the plan, checked as far as it can be without writing or training
        world_batch, schedule = plan_schedule(cfg, info)
        steps = loader_steps(cfg, sampler) // cfg.accum_steps
        _log_schedule(cfg, schedule, world_batch, steps, model)
        _log.info("dry run: nothing written; %s would hold the run", out)
        return {}

    with claim_run_folder(out, resume, info.is_main):
        if info.is_main and not resume:
            cfg.save(out / "config.yaml")
        dist_utils.barrier()
        run = Run(cfg, out, device, info, model, data, stats, fingerprint, modality)
        try:
            summary = _train(run, sampler, counts, resume and (out / CHECKPOINT).is_file(),
                             progress)  # fmt: skip
        except KeyboardInterrupt:
            raise TrainingInterrupted(str(out)) from None
    return {**summary, "run_folder": str(out)} if summary else summary


def _train(
    run: Run, sampler: GlobalBatchSampler, counts, resume: bool, progress: bool
) -> dict[str, Any]:
    cfg, info, device, model = run.cfg, run.info, run.device, run.model
    world_batch, schedule = plan_schedule(cfg, info)
    optimizer = make_optimizer(cfg, model, schedule.lr)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    ddp = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if info.enabled
        else model
    )
    if cfg.compile:
        ddp = torch.compile(ddp)

    start_epoch, history, best = 0, [], {"score": None, "loss": None, "epoch": None, "state": None}
    guard = DivergenceGuard(_lower_lr_hint(cfg)) if cfg.divergence_guard else None
    if resume:
        start_epoch, history, best, loss_start = _load_checkpoint(run, optimizer, scaler)
        if guard is not None:
            guard.start = loss_start  # compare with where the run started, not where it is
        _log.info("resuming %s at epoch %d/%d", run.out, start_epoch + 1, cfg.epochs)
    _write_metrics(run, history)
    steps = loader_steps(cfg, sampler)
    steps_per_epoch = steps // cfg.accum_steps
    _log_schedule(cfg, schedule, world_batch, steps_per_epoch, model)

    trackers = Trackers(cfg.log_to if info.is_main else [], run.out, cfg.to_dict())
    # One process: the first Ctrl-C stops before the next step (torchrun handles DDP's).
    with contextlib.closing(trackers):
        with DeferredInterrupt(enabled=not info.enabled) as interrupt:
            for epoch in range(start_epoch, cfg.epochs):
                sampler.set_epoch(epoch)
                if (
                    info.rank
                ):  # rank 0 keeps the single-process stream (checkpointed); see rank_seed
                    seed_everything(dist_utils.rank_seed(cfg.seed, info.rank, epoch))
                loader = DataLoader(
                    SeededDraws(run.data.train),  # augmentation independent of workers and ranks
                    batch_sampler=SeededBatches(sampler, cfg.seed),
                    num_workers=cfg.workers,
                    generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch),
                    pin_memory=device.type == "cuda",
                    collate_fn=run.modality.collate(),
                )
                if epoch == start_epoch and info.is_main:  # say what the run costs a few steps in
                    loader = EtaLoader(loader, steps, cfg.epochs - start_epoch, info.world_size)
                loader = interrupt.steps(loader)  # Ctrl-C takes effect before a step, never inside
                t0 = time.time()
                row: dict[str, Any] = {"epoch": epoch}
                row |= train_one_epoch(
                    ddp, loader, optimizer, schedule, epoch, device, cfg.precision, cfg.accum_steps,
                    cfg.label_smoothing, cfg.clip_grad, scaler, cfg.max_steps_per_epoch, progress, guard,
                    lambda i, loss, lr, base=epoch * steps: trackers.step(base + i, loss, lr),
                )  # fmt: skip
                interrupt.check()
                if run.data.val is not None:
                    row |= run.evaluate(ddp, run.data.val, "val", progress)
                if cfg.test_every_epoch:
                    row |= run.evaluate(ddp, run.data.test, "test", progress)
                row["seconds"] = time.time() - t0
                score, loss = row.get("val_top1", row.get("val_mAP")), row.get("val_loss")
                if improves(score, loss, best):
                    best = {
                        "score": score,
                        "loss": loss,
                        "epoch": epoch,
                        "state": _task_state(model),
                    }
                history.append(row)
                _log.info(
                    "epoch %d/%d: %s",
                    epoch + 1,
                    cfg.epochs,
                    ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)),
                )
                trackers.epoch(epoch + 1, row)
                if info.is_main:
                    _write_metrics(run, history)
                    _save_checkpoint(run, optimizer, scaler, epoch + 1, history, best,
                                     guard.start if guard else None)  # fmt: skip
                dist_utils.barrier()
                interrupt.check()
        # the test score: Ctrl-C here stops at once (the checkpoint holds every epoch)
        summary = _finish(run, counts, history, best, progress)
        trackers.epoch(cfg.epochs, {k: v for k, v in summary.items() if k.startswith("test_")})
    return summary


def plan_schedule(cfg: TrainConfig, info: dist_utils.DistInfo) -> tuple[int, Schedule]:
    """The total batch of one optimizer step and the learning-rate schedule it implies."""
    world_batch = cfg.batch_size * cfg.accum_steps * info.world_size
    lr = cfg.peak_lr(world_batch)
    return world_batch, Schedule(lr, cfg.min_lr, cfg.resolved_warmup_epochs, cfg.epochs)


def loader_steps(cfg: TrainConfig, sampler: GlobalBatchSampler) -> int:
    """Batches per epoch (``--max-steps-per-epoch`` counts optimizer steps)."""
    if cfg.max_steps_per_epoch is None:
        return len(sampler)
    return min(len(sampler), cfg.max_steps_per_epoch * cfg.accum_steps)


def _log_schedule(
    cfg: TrainConfig, schedule: Schedule, world_batch: int, steps_per_epoch: int, model: nn.Module
) -> None:
    """The schedule line, and the warning of a fresh tensor the schedule cannot move."""
    _log.info("%s", describe_schedule(cfg, schedule, world_batch, steps_per_epoch, model))
    warning = fresh_reach_warning(model, cfg.optimizer, cfg.new_params_lr_scale, schedule,
                                  steps_per_epoch, cfg.epochs)  # fmt: skip
    if warning:
        _log.warning("%s", warning)


def describe_schedule(
    cfg: TrainConfig,
    schedule: Schedule,
    world_batch: int,
    steps_per_epoch: int,
    model: nn.Module | None = None,
) -> str:
    """One log line with the resolved schedule, so a run that cannot train is seen at once;
    given the (marked) model, it also names the lr multipliers of its parameter groups."""
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
        + (
            ""
            if model is None
            else "; " + describe_lr_scales(model, cfg.layer_decay, cfg.new_params_lr_scale)
        )
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


def _task_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in adapter_tensors(model, TASK).items()}


def _load_task_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, t in adapter_tensors(model, TASK).items():
            t.copy_(state[k])


def _lower_lr_hint(cfg: TrainConfig) -> str:
    """Which flag sets this run's learning rate, and its value, for the divergence message."""
    if cfg.lr is not None:
        return f"lower --lr (now {cfg.lr:g})"
    default = "" if cfg.blr is not None else f", the {cfg.method} default"
    return f"lower --blr (now {cfg.resolved_blr:g}{default}; try a tenth)"


def _save_checkpoint(
    run: Run, optimizer, scaler, next_epoch: int, history, best, loss_start: float | None
) -> None:
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
            "divergence_start": loss_start,  # the divergence guard's reference loss
            "world_size": run.info.world_size,
        },
        run.out / CHECKPOINT,
    )


def _load_checkpoint(run: Run, optimizer, scaler) -> tuple[int, list, dict, float | None]:
    """Restore training from the run's checkpoint; a damaged one is a one-line ``ValueError``
    and leaves the model as built."""
    path = run.out / CHECKPOINT
    ckpt = read_checkpoint(path)
    _check_saved_world_size(ckpt, run.info.world_size, path)
    expected = adapter_tensors(run.model, TASK)
    states = [("task_state", ckpt["task_state"]), ("best state", ckpt["best"]["state"])]
    problems = [
        f"{label} {problem}"
        for label, state in states
        if state is not None or label == "task_state"
        for problem in state_problems(state, expected)
    ]
    if ckpt["next_epoch"] > run.cfg.epochs:
        problems.append(f"next_epoch {ckpt['next_epoch']} is past --epochs {run.cfg.epochs}")
    if problems:
        raise damaged_checkpoint(path, "; ".join(problems))
    planned = [g["lr_scale"] for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        for group, scale in zip(optimizer.param_groups, planned, strict=True):
            group["lr_scale"] = scale  # the config's (older checkpoints saved none)
        if scaler and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        raise damaged_checkpoint(path, f"optimizer or random state: {first_line(e)}") from None
    problems = optimizer_state_problems(optimizer)
    if problems:
        raise damaged_checkpoint(path, "; ".join(problems))
    _load_task_state(run.model, ckpt["task_state"])
    start = ckpt.get("divergence_start")  # absent in checkpoints of older versions
    if not (isinstance(start, float) and math.isfinite(start) and start > 0):
        start = None  # measured again from the resumed steps
    return ckpt["next_epoch"], ckpt["history"], ckpt["best"], start


def _check_saved_world_size(ckpt: dict[str, Any], world_size: int, path: Path) -> None:
    """The checkpoint's process count must be this run's (checkpoints from before it was
    recorded pass: their count is unknown)."""
    saved = ckpt.get("world_size")
    if saved is None:
        return
    if not isinstance(saved, int) or isinstance(saved, bool) or saved < 1:
        raise damaged_checkpoint(path, f"world_size {saved!r} is not a positive whole number")
    dist_utils.check_world_size(saved, world_size)


def _write_metrics(run: Run, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole, so a resumed run never shows an epoch twice."""
    if not run.info.is_main:
        return
    atomic_write_text(run.out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def _finish(run: Run, counts, history, best, progress: bool) -> dict[str, Any]:
    cfg, model = run.cfg, run.model
    _load_task_state(model, best["state"])
    test = run.evaluate(model, run.data.test, "test", progress)
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
        plot_learning_curve(history, run.out / "learning_curve.png", title=run.out.name,
                            best_epoch=best["epoch"])  # fmt: skip
        _log.info("test: %s", {k: round(v, 3) for k, v in test.items() if isinstance(v, float)})
    return summary
