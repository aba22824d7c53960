"""One training epoch and one evaluation pass: data in, metric dicts out.

Pure of run bookkeeping (folders, checkpoints, logging files): ``runner.py`` wires these.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from ..data.metrics import mean_average_precision, topk_correct
from ..utils.distributed import (
    DistInfo,
    all_gather_cat,
    all_reduce_sum,
    every_rank,
    shard_indices,
)

_log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops before the optimizer applies it."""


class DivergenceError(NonFiniteLossError):
    """The loss rose far above where the run started: the learning rate is too high."""


@dataclass
class DivergenceGuard:
    """Stops a run whose loss climbs far above its start, instead of letting it finish as
    noise (a linear probe at too high a learning rate went 2.4 -> 12.7 -> 23.7 in 10 steps and
    ended at 26% where a tenth of the rate reached 47%).

    The start is the loss of the run's first step, taken before any update: with a fresh head
    it is about ln(classes) whatever the batch, and a too-high learning rate can wreck a run
    within its first few steps, so a later reference would already be inflated. It is kept in
    the checkpoint, so a resumed run compares with the same start. The loss compared is an
    exponential moving average, so one hard batch does not stop a healthy run. ``hint`` says
    which flag to lower.
    """

    hint: str
    factor: float = 3.0
    smoothing: float = 0.8
    start: float | None = None
    _ema: float | None = None

    def check(self, loss: float, epoch: int, step: int, lr: float) -> None:
        if self.start is None:
            self.start = loss
        if self._ema is None:
            self._ema = loss
        self._ema = self.smoothing * self._ema + (1 - self.smoothing) * loss
        if self.start > 0 and self._ema > self.factor * self.start:
            raise DivergenceError(
                f"diverged at epoch {epoch + 1} step {step}: the loss (moving average) reached "
                f"{self._ema:.3g}, over {self.factor:g}x its start {self.start:.3g} (lr {lr:.3g}); "
                f"{self.hint}, or pass --no-divergence-guard; the last good checkpoint is kept"
            )


@dataclass(frozen=True)
class Schedule:
    """Per-step linear warm-up then half-cycle cosine, as in MAE / the reference code."""

    lr: float
    min_lr: float
    warmup_epochs: float
    epochs: int

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.lr * epoch / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-8)
        progress = min((epoch - self.warmup_epochs) / span, 1.0)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class GlobalBatchSampler(Sampler[list[int]]):
    """Seeded shuffled batches of ``batch_size * world`` images; each rank takes its slice.

    With the same seed, N processes with per-rank batch ``b`` see exactly the images one process
    with batch ``N * b`` sees, step for step, so DDP results match single-process ones. The
    order depends only on (seed, epoch), which makes ``--resume`` reproduce an unbroken run.
    The last incomplete global batch is dropped (as MAE does) so every rank steps equally.
    """

    def __init__(self, n: int, batch_size: int, info: DistInfo, seed: int) -> None:
        self.n, self.batch_size, self.info, self.seed = n, batch_size, info, seed
        self.epoch = 0
        if n < batch_size * info.world_size:
            raise ValueError(
                f"the training set has {n} images, fewer than one global batch of "
                f"{batch_size} x {info.world_size} processes: lower --batch-size"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.info.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        step = self.batch_size * self.info.world_size
        lo = self.info.rank * self.batch_size
        for start in range(0, len(self) * step, step):
            yield perm[start + lo : start + lo + self.batch_size]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    if target.dtype.is_floating_point:  # multi-hot targets: multi-label
        return F.binary_cross_entropy_with_logits(logits.float(), target)
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    epoch: int,
    device: torch.device,
    precision: str = "fp32",
    accum_steps: int = 1,
    label_smoothing: float = 0.0,
    clip_grad: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    guard: DivergenceGuard | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> dict[str, float]:
    """Train for one epoch; returns mean loss, last and highest lr, and images/s, over all
    processes. ``guard`` (if given) stops a diverging run; ``on_step`` gets every step's loss.

    A batch of ``None`` (the video collate dropped every clip of it) is skipped by *every* rank
    together: under DDP each step is a set of collectives (the loss check, the gradient
    all-reduce) that all ranks must enter, so a rank stepping alone would hang or pair its
    collectives with another step's.
    """
    model.train()
    steps = len(loader) if max_steps is None else min(len(loader), max_steps * accum_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss_sum, images, lr, lr_peak = torch.zeros((), device=device), 0, 0.0, 0.0
    skipped, pending = 0, False  # pending: gradients accumulated but not yet applied
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}", disable=not progress, leave=False)
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        if i % accum_steps == 0:
            lr = schedule(epoch + i / steps)
            lr_peak = max(lr_peak, lr)
            for group in optimizer.param_groups:  # lr_scale: layer decay, new parameters
                group["lr"] = lr * group.get("lr_scale", 1.0)
        if every_rank(batch is not None, device):  # else every rank skips this step
            x, y = batch
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = model(x)
            loss = _loss(logits, y, label_smoothing)
            # agree across ranks, so every process stops together instead of hanging
            finite = torch.isfinite(loss)
            bad, loss_sum_ranks, ranks = all_reduce_sum(torch.stack([
                (~finite).float(), torch.where(finite, loss.detach().float(), 0.0),
                finite.new_ones((), dtype=torch.float),
            ])).tolist()  # fmt: skip
            if bad > 0:
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch + 1} step {i} (lr {lr:.3g}): lower "
                    "--lr/--blr, use --precision fp32 or --clip-grad; the last good checkpoint "
                    "is kept"
                )
            if guard is not None:
                guard.check(loss_sum_ranks / ranks, epoch, i, lr)  # the same on every rank
            if on_step is not None:  # (batch index in the epoch, mean loss over ranks, lr)
                on_step(i, loss_sum_ranks / ranks, lr)
            (scaler.scale(loss / accum_steps) if scaler else loss / accum_steps).backward()
            pending = True
            loss_sum += loss.detach() * x.shape[0]
            images += x.shape[0]
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        else:
            skipped += 1
        if pending and ((i + 1) % accum_steps == 0 or i + 1 == steps):
            if scaler:
                scaler.unscale_(optimizer)
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(trainable, clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pending = False
        bar.update(1)
    bar.close()
    if skipped:
        _log.warning(
            "epoch %d: skipped %d of %d steps on every process because a process's whole batch "
            "was dropped (unreadable clips)", epoch + 1, skipped, steps,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    # over all ranks: the mean loss of every image, and the whole job's throughput
    totals = all_reduce_sum(
        torch.stack([loss_sum.double(), torch.tensor(images, device=device).double()])
    )
    images = int(totals[1].item())
    return {
        "train_loss": (totals[0] / max(images, 1)).item(),
        "lr": lr,
        "lr_peak": lr_peak,
        "train_images_per_s": images / seconds if seconds > 0 else 0.0,
        "train_images": images,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    info: DistInfo,
    precision: str = "fp32",
    workers: int = 0,
    prefix: str = "val",
    progress: bool = True,
) -> dict[str, float]:
    """Exact metrics over ``dataset``: each rank scores a disjoint shard; counts are summed.

    Single-label data gives ``top1``/``top5`` in percent and ``loss``; multi-hot targets give
    ``mAP`` (mean over classes with a positive example).
    """
    model.eval()
    shard = Subset(dataset, shard_indices(len(dataset), info))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    scores, targets = [], []
    for x, y in tqdm(loader, desc=prefix, disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            logits = model(x).float()
        totals[0] += _loss(logits, y, 0.0).double() * x.shape[0]
        totals[3] += x.shape[0]
        if y.dtype.is_floating_point:
            scores.append(logits)
            targets.append(y)
            continue
        totals[1:3] += topk_correct(logits, y, topk=(1, 5)).to(totals)
    totals = all_reduce_sum(totals)
    n = max(totals[3].item(), 1.0)
    out = {f"{prefix}_loss": totals[0].item() / n, f"{prefix}_images": int(totals[3].item())}
    if scores or targets:
        all_scores = all_gather_cat(torch.cat(scores))
        all_targets = all_gather_cat(torch.cat(targets))
        out[f"{prefix}_mAP"] = 100.0 * mean_average_precision(all_scores, all_targets)
    else:
        out[f"{prefix}_top1"] = 100.0 * totals[1].item() / n
        out[f"{prefix}_top5"] = 100.0 * totals[2].item() / n
    return out
