"""The AdaptFormer paper's comparison, in shape, on real data: one command, about 2 hours on 2 cores.

Backbone: the shared real DINOv2 ViT-S/14 (``../shared/assets``). Data: the shared CIFAR-10,
Fashion-MNIST and Imagenette; a seeded few-shot training subset per class (validation carved
from it), and the FULL official test split for every reported number (CIFAR-10 10,000,
Fashion-MNIST 10,000, Imagenette 1,300 val images). Every run goes through
``adaptformer.training.runner.fit(TrainConfig(...))``, so model selection uses the validation split only
and the test split is scored once, at the end.

Grid (defaults; the Markdown states what was actually run):

- rows: linear probe, full fine-tuning, VPT-deep with 1 and 10 tokens, AdaptFormer with
  bottleneck 1, 4, 16, 64, LoRA rank 32 on ``qkv`` (about AdaptFormer-64's budget) and BitFit;
- recipes: ``paper`` (the reference's SGD recipe: momentum 0.9, blr 0.1, no weight decay, 20%
  warm-up then cosine, BatchNorm head) and ``tuned`` (AdamW, weight decay 0.05 on matrices,
  label smoothing 0.1, 1 warm-up epoch, lr chosen per method from a 3-point sweep by
  validation accuracy);
- ablations of AdaptFormer-64 (tuned recipe): scale 1.0 and learnable vs 0.1, sequential vs
  parallel, adapters in the first or the last half of the blocks vs all;
- seeds: 2 for the main rows and the ablations; the sweep uses seed 0.

The run folders go to ``--work`` (default ``runs/accuracy``); a run whose ``summary.json``
exists is skipped, an interrupted one is resumed from its checkpoint, so the command can be
rerun until everything is done. ``--budget-minutes`` stops starting new runs after that time.
Results: ``accuracy.json``, ``accuracy.md`` and ``accuracy.png`` in ``--out``; with
``--update-docs`` the Markdown also replaces the accuracy section of ``docs/results.md``.

Usage::

    python benchmarks/accuracy.py --checkpoint ../shared/assets/vit_small_patch14_dinov2.imgfocus.safetensors --update-docs
    python benchmarks/accuracy.py --plan      # the grid and its estimated time, nothing trained
    python benchmarks/accuracy.py --smoke     # a tiny grid on tiny splits, about 2 minutes
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import shlex
import shutil
import statistics
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _docs import update_docs  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADAPTFORMER_SHARED", ROOT.parent / "shared"))
BACKBONE = SHARED / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"
MODEL = "vit_small_patch14_dinov2"
_log = logging.getLogger("accuracy")

# --------------------------------------------------------------------------- the grid

# Main rows: TrainConfig fields of each method (the paper's Table 1 rows plus LoRA and BitFit).
ROWS: dict[str, dict[str, Any]] = {
    "linear": {"method": "linear"},
    "full": {"method": "full"},
    "vpt-1": {"method": "vpt", "prompt_tokens": 1},
    "vpt-10": {"method": "vpt", "prompt_tokens": 10},
    "adaptformer-1": {"method": "adaptformer", "bottleneck": 1},
    "adaptformer-4": {"method": "adaptformer", "bottleneck": 4},
    "adaptformer-16": {"method": "adaptformer", "bottleneck": 16},
    "adaptformer-64": {"method": "adaptformer", "bottleneck": 64},
    "lora-32": {"method": "lora", "bottleneck": 32},  # 589,824 params, AdaptFormer-64: 595,200
    "bitfit": {"method": "bitfit"},
}
# The paper's ablations, as changes to AdaptFormer-64 (scale 0.1, parallel, all 12 blocks).
ABLATIONS: dict[str, dict[str, Any]] = {
    "scale 1.0": {"scale": "1.0"},
    "scale learnable": {"scale": "learnable"},
    "sequential": {"position": "sequential"},
    "first half (blocks 0-5)": {"layers": list(range(6))},
    "last half (blocks 6-11)": {"layers": list(range(6, 12))},
}
ABLATION_BASE = "adaptformer-64"
# Learning rates of the tuned recipe's sweep (AdamW, absolute), per method.
SWEEP: dict[str, list[float]] = {
    "linear": [1e-3, 3e-3, 1e-2],
    "full": [1e-5, 3e-5, 1e-4],
    "vpt": [1e-3, 3e-3, 1e-2],
    "adaptformer": [3e-4, 1e-3, 3e-3],
    "lora": [3e-4, 1e-3, 3e-3],
    "bitfit": [3e-4, 1e-3, 3e-3],
}
RECIPES: dict[str, dict[str, Any]] = {
    # the reference's main_image.py (warm-up: 20 of 100 epochs there, the same share here)
    "paper": {
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 0.0,
        "blr": 0.1,
        "min_lr": 0.0,
        "label_smoothing": 0.0,
        "head_batchnorm": True,
        "augment": "paper",
    },
    "tuned": {
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "min_lr": 1e-6,
        "label_smoothing": 0.1,
        "head_batchnorm": False,
        "augment": "paper",
    },
}
DATASET_NAMES = {"cifar10": "CIFAR-10", "fashionmnist": "Fashion-MNIST", "imagenette": "Imagenette"}


@dataclass
class Settings:
    """Sizes of the grid: what fits 2 hours on 2 cores (see the module docstring)."""

    datasets: list[str] = field(default_factory=lambda: ["cifar10", "fashionmnist", "imagenette"])
    img_size: dict[str, int] = field(
        default_factory=lambda: {"cifar10": 28, "fashionmnist": 28, "imagenette": 28}
    )
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    train_per_class: int = 100
    val_fraction: float = 0.1
    epochs: int = 5
    batch_size: int = 64
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    ablation_seeds: list[int] = field(default_factory=lambda: [0, 1])
    ablation_dataset: str = "cifar10"
    sweep_datasets: list[str] = field(default_factory=lambda: ["cifar10"])
    sweep_points: int = 3
    max_steps_per_epoch: int | None = None
    workers: int = 1


def smoke_settings() -> Settings:
    return Settings(
        rows=["linear", "adaptformer-64"],
        img_size={"cifar10": 28, "fashionmnist": 28, "imagenette": 28},
        train_per_class=10,
        val_fraction=0.2,
        epochs=1,
        batch_size=16,
        seeds=[0, 1],
        ablation_seeds=[0],
        sweep_points=2,
        max_steps_per_epoch=2,
        workers=0,
    )


@dataclass(frozen=True)
class Run:
    """One call of ``fit``: where it sits in the grid and its TrainConfig fields."""

    dataset: str
    recipe: str
    row: str
    seed: int
    lr: float | None  # None: the recipe's blr rule (paper)
    kind: str  # main, sweep or ablation
    overrides: tuple[tuple[str, Any], ...]

    @property
    def folder(self) -> str:
        lr = "blr0.1" if self.lr is None else f"lr{self.lr:g}"
        row = self.row.replace(" ", "_").replace("(", "").replace(")", "")
        return f"{self.dataset}/{self.recipe}/{row}/{lr}/seed{self.seed}"


def _family(row: str) -> str:
    return ROWS[row]["method"]


def sweep_grid(row: str, points: int) -> list[float]:
    grid = SWEEP[_family(row)]
    return grid[:points] if points < len(grid) else grid


def plan_runs(s: Settings, chosen_lr: dict[tuple[str, str], float]) -> list[Run]:
    """Every run of the grid, most important first (seed 0 of everything, then more seeds).

    ``chosen_lr`` maps (dataset, row) to the tuned lr once the sweep is done; runs that need an
    lr not chosen yet are left out (a later call, after the sweep, adds them).
    """

    def main(ds: str, recipe: str, row: str, seed: int, lr: float | None, kind: str = "main",
             extra: dict[str, Any] | None = None) -> Run:  # fmt: skip
        fields = {**ROWS[row if row in ROWS else ABLATION_BASE], **(extra or {})}
        frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        return Run(ds, recipe, row, seed, lr, kind, tuple(sorted(frozen.items())))

    def lr_for(ds: str, row: str) -> float | None:
        source = ds if ds in s.sweep_datasets else s.sweep_datasets[0]
        return chosen_lr.get((source, row))

    runs: list[Run] = []
    for ds in s.sweep_datasets:
        for row in s.rows:
            runs += [
                main(ds, "tuned", row, s.seeds[0], lr, "sweep")
                for lr in sweep_grid(row, s.sweep_points)
            ]
    base_lr = lr_for(s.ablation_dataset, ABLATION_BASE) if ABLATION_BASE in s.rows else None
    for seed in dict.fromkeys(s.seeds + s.ablation_seeds):  # each seed: main rows, then ablations
        for ds in s.datasets if seed in s.seeds else []:
            for row in s.rows:
                lr = lr_for(ds, row)
                if lr is not None:
                    runs.append(main(ds, "tuned", row, seed, lr))
                runs.append(main(ds, "paper", row, seed, None))
        if base_lr is not None and seed in s.ablation_seeds:
            for name, extra in ABLATIONS.items():
                runs.append(
                    main(s.ablation_dataset, "tuned", name, seed, base_lr, "ablation", extra)
                )
    unique = list(dict.fromkeys(runs))  # a sweep run at the chosen lr is also the main seed-0 run
    by_folder: dict[str, Run] = {}
    for r in unique:
        by_folder.setdefault(r.folder, r)
    return list(by_folder.values())


# --------------------------------------------------------------------------- data


def prepare_data(cache: Path, smoke: bool) -> dict[str, tuple[str, str]]:
    """(dataset name for TrainConfig, data root) per data set, unpacked once into ``cache``.

    CIFAR-10's training pool is limited to the first 500 images per class (by file name), so
    that every run does not decode all 50,000 files to check them; each seed draws its few-shot
    subset from that pool. The test split is always the full official one, except in the smoke
    mode, which uses tiny folders for all three data sets.
    """
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("cifar10", "imagenette"):
        if not (cache / name).is_dir():
            _log.info("unpacking %s.tar into %s", name, cache)
            with tarfile.open(SHARED / "data" / f"{name}.tar") as tf:
                tf.extractall(cache, filter="data")
    pool = cache / "cifar10-pool500"
    if not (pool / "test").exists():
        for cls in sorted((cache / "cifar10" / "train").iterdir()):
            dest = pool / "train" / cls.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:500]:
                os.link(f, dest / f.name)
        (pool / "test").symlink_to((cache / "cifar10" / "test").resolve())
    data = {
        "cifar10": ("imagefolder", str(pool)),
        "fashionmnist": ("fashionmnist", str(SHARED / "data")),
        "imagenette": ("imagefolder", str(cache / "imagenette")),
    }
    if smoke:
        data = {name: ("imagefolder", str(_tiny_folder(cache, name, data[name]))) for name in data}
    return data


def _tiny_folder(cache: Path, name: str, source: tuple[str, str]) -> Path:
    """20 train and 5 test images per class, for the smoke mode only."""
    dest = cache / f"smoke-{name}"
    if (dest / "test").is_dir():
        return dest
    if name == "fashionmnist":
        from PIL import Image

        raw = SHARED / "data" / "FashionMNIST" / "raw"
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = _idx(raw / f"{prefix}-images-idx3-ubyte.gz")
            labels = _idx(raw / f"{prefix}-labels-idx1-ubyte.gz")
            keep = 20 if split == "train" else 5
            for c in range(10):
                folder = dest / split / f"class{c}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in np.flatnonzero(labels == c)[:keep]:
                    Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
        return dest
    root = Path(source[1])
    test = "test" if (root / "test").exists() else "val"
    for split, keep in (("train", 20), (test, 5)):
        for cls in sorted((root / split).iterdir()):
            folder = dest / ("test" if split != "train" else "train") / cls.name
            folder.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.iterdir())[:keep]:
                shutil.copy(f, folder / f.name)
    return dest


def _idx(path: Path) -> np.ndarray:
    from adaptformer.data.datasets import read_idx_gz

    with gzip.open(path):  # a clear error for a missing file before parsing
        pass
    return read_idx_gz(path)


# --------------------------------------------------------------------------- running


def train_config(run: Run, s: Settings, data: dict[str, tuple[str, str]], checkpoint: str,
                 work: Path) -> Any:  # fmt: skip
    from adaptformer.training.config import TrainConfig

    dataset, root = data[run.dataset]
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in run.overrides}
    recipe = dict(RECIPES[run.recipe])
    warmup = max(0.2 * s.epochs, 0.0) if run.recipe == "paper" else min(1.0, s.epochs / 2)
    if run.lr is not None:
        recipe["lr"] = run.lr
    return TrainConfig(
        model=MODEL,
        checkpoint=checkpoint,
        img_size=s.img_size[run.dataset],
        dataset=dataset,
        data_root=root,
        train_per_class=s.train_per_class,
        val_fraction=s.val_fraction,
        workers=s.workers,
        epochs=s.epochs,
        warmup_epochs=warmup,
        batch_size=s.batch_size,
        seed=run.seed,
        output=str(work / run.folder),
        device="cpu",
        max_steps_per_epoch=s.max_steps_per_epoch,
        divergence_guard=False,  # every swept lr is scored, as when the results were measured
        **recipe,
        **fields,
    )


def execute(run: Run, cfg: Any) -> dict[str, Any] | None:
    """Run (or resume) one fit; the summary, or None if it was already done."""
    from adaptformer.training.run_folder import CHECKPOINT
    from adaptformer.training.runner import fit

    out = Path(cfg.output)
    if (out / "summary.json").is_file():
        return None
    resume = (out / CHECKPOINT).is_file()
    if out.exists() and not resume:
        shutil.rmtree(out)  # started but not one epoch finished: start again
    start = time.time()
    summary = fit(cfg, resume=resume, progress=False)
    summary.pop("run_folder", None)  # the folder is known here; summary.json does not name itself
    summary["seconds"] = time.time() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_summary(work: Path, run: Run) -> dict[str, Any] | None:
    path = work / run.folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def choose_lrs(s: Settings, work: Path) -> dict[tuple[str, str], float]:
    """Per (sweep dataset, row): the swept lr with the best validation top-1.

    Ties go to the lower validation loss, then to the lower lr: the same rule ``fit`` uses to
    pick the epoch.
    """
    chosen = {}
    for ds in s.sweep_datasets:
        for row in s.rows:
            scores = {}
            for lr in sweep_grid(row, s.sweep_points):
                run = Run(ds, "tuned", row, s.seeds[0], lr, "sweep", ())
                summ = read_summary(work, run)
                if summ is not None:
                    scores[lr] = (summ.get("val_top1", -math.inf), -summ.get("val_loss", math.inf))
            if len(scores) == len(sweep_grid(row, s.sweep_points)):
                chosen[(ds, row)] = max(sorted(scores), key=lambda lr: scores[lr])
    return chosen


# --------------------------------------------------------------------------- estimate


def estimate_minutes(s: Settings, runs: list[Run], checkpoint: str) -> tuple[float, dict]:
    """Time of the grid from a quick probe of train and eval throughput on this machine."""
    import torch
    from toolkit import BenchConfig, build_model, make_infer_step, make_train_step

    probe: dict[tuple[str, int], float] = {}
    eval_speed: dict[int, float] = {}
    for size in sorted(set(s.img_size.values())):
        cfg = BenchConfig(model=MODEL, checkpoint=checkpoint, img_size=size,
                          batch_size=s.batch_size)  # fmt: skip
        for row in s.rows + ([ABLATION_BASE] if ABLATION_BASE not in s.rows else []):
            f = ROWS[row]
            spec = {"vpt": f"vpt-{f.get('prompt_tokens', 1)}", "adaptformer": f"adaptformer-{f.get('bottleneck', 64)}",
                    "lora": f"lora-{f.get('bottleneck', 8)}"}.get(f["method"], f["method"])  # fmt: skip
            model = build_model(spec, cfg)
            probe[(row, size)] = s.batch_size / _median_time(make_train_step(model, cfg))
            if size not in eval_speed:  # fit evaluates with the training batch size
                eval_speed[size] = s.batch_size / _median_time(make_infer_step(model, cfg))
            del model
    torch.set_grad_enabled(True)
    tests = {"cifar10": 10_000, "fashionmnist": 10_000, "imagenette": 1_300}
    total = 0.0
    for run in runs:
        size = s.img_size[run.dataset]
        row = run.row if run.row in ROWS else ABLATION_BASE
        n_train = s.train_per_class * 10 * (1 - s.val_fraction)
        steps = n_train // s.batch_size
        if s.max_steps_per_epoch:
            steps = min(steps, s.max_steps_per_epoch)
        train = s.epochs * steps * s.batch_size / probe[(row, size)]
        evals = (
            s.epochs * s.train_per_class * 10 * s.val_fraction + tests[run.dataset]
        ) / eval_speed[size]
        total += train + evals * 1.25 + 6.0  # + data decoding, + building and saving per run
    speeds = {f"{row} @ {size}px": round(v, 1) for (row, size), v in probe.items()}
    speeds |= {f"eval @ {size}px": round(v, 1) for size, v in eval_speed.items()}
    return total / 60, speeds


def _median_time(step: Any, warmup: int = 2, timed: int = 5) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(timed):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --------------------------------------------------------------------------- report


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def collect(s: Settings, work: Path, runs: list[Run]) -> list[dict[str, Any]]:
    records = []
    for run in runs:
        summ = read_summary(work, run)
        if summ is None:
            continue
        summ["data_set"] = summ.pop("dataset")  # the TrainConfig name (imagefolder, ...)
        records.append({
            **summ, "dataset": run.dataset, "recipe": run.recipe, "row": run.row,
            "seed": run.seed, "lr": run.lr, "kind": run.kind, "folder": run.folder,
        })  # fmt: skip
    return records


def _cell(records: list[dict], **match: Any) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def tables(s: Settings, records: list[dict], chosen: dict) -> str:
    parts = []
    for recipe in ("tuned", "paper"):
        head = "| method | trainable params | % of backbone | task file |"
        sep = "|---|---:|---:|---:|"
        for ds in s.datasets:
            head += f" {DATASET_NAMES[ds]} test top-1 |"
            sep += "---:|"
        lines = [
            head + (" lr |" if recipe == "tuned" else ""),
            sep + ("---|" if recipe == "tuned" else ""),
        ]
        for row in s.rows:
            any_run = _cell(records, recipe=recipe, row=row)
            if not any_run:
                continue
            r0 = any_run[0]
            line = (f"| {row} | {r0['trainable_params']:,} | {r0['trainable_percent']:.2f}% "
                    f"| {_size(r0['artifact_bytes'])} |")  # fmt: skip
            for ds in s.datasets:
                lr = _lr_of(s, chosen, ds, row) if recipe == "tuned" else None
                match = {"recipe": recipe, "row": row, "dataset": ds, "kind": "main"}
                if recipe == "tuned":
                    match["lr"] = lr
                vals = [r["test_top1"] for r in _main_runs(records, s, match)]
                line += f" {_mean_sd(vals)} |"
            if recipe == "tuned":
                lrs = sorted({f"{_lr_of(s, chosen, ds, row):g}" for ds in s.datasets
                              if _lr_of(s, chosen, ds, row) is not None})  # fmt: skip
                line += f" {', '.join(lrs) or '-'} |"
            lines.append(line)
        title = {
            "tuned": "Tuned recipe (AdamW; lr per method chosen on validation)",
            "paper": "Paper recipe (SGD, blr 0.1, no weight decay, BatchNorm head)",
        }[recipe]
        parts.append(
            f"#### {title}\n\nTest top-1 %, mean ± sd over seeds {s.seeds}.\n\n" + "\n".join(lines)
        )
    sweep = _cell(records, kind="sweep")
    if sweep:
        lines = ["| dataset | method | lr | val top-1 | test top-1 |", "|---|---|---:|---:|---:|"]
        for r in sorted(sweep, key=lambda r: (r["dataset"], s.rows.index(r["row"]), r["lr"])):
            best = chosen.get((r["dataset"], r["row"])) == r["lr"]
            lines.append(f"| {DATASET_NAMES[r['dataset']]} | {r['row']} | {r['lr']:g}{' (chosen)' if best else ''} "
                         f"| {r['val_top1']:.1f} | {r['test_top1']:.1f} |")  # fmt: skip
        parts.append(
            "#### Learning-rate sweep (seed 0; chosen by val top-1 only)\n\n" + "\n".join(lines)
        )
    abl = _cell(records, kind="ablation")
    if abl:
        ds = s.ablation_dataset
        lr = _lr_of(s, chosen, ds, ABLATION_BASE)
        base = _main_runs(records, s, {"recipe": "tuned", "row": ABLATION_BASE, "dataset": ds,
                                        "kind": "main", "lr": lr})  # fmt: skip
        base = [r for r in base if r["seed"] in s.ablation_seeds]
        lines = ["| AdaptFormer-64 variant | trainable params | test top-1 |", "|---|---:|---:|"]
        if base:
            lines.append(f"| scale 0.1, parallel, all blocks (main row) | {base[0]['trainable_params']:,} "
                         f"| {_mean_sd([r['test_top1'] for r in base])} |")  # fmt: skip
        for name in ABLATIONS:
            rs = _cell(abl, row=name)
            if rs:
                lines.append(
                    f"| {name} | {rs[0]['trainable_params']:,} | {_mean_sd([r['test_top1'] for r in rs])} |"
                )
        parts.append(f"#### Ablations of AdaptFormer-64 ({DATASET_NAMES[ds]}, tuned recipe, lr {lr:g}, "
                     f"seeds {s.ablation_seeds})\n\n" + "\n".join(lines))  # fmt: skip
    return "\n\n".join(parts)


def _main_runs(records: list[dict], s: Settings, match: dict) -> list[dict]:
    kinds = {k: v for k, v in match.items() if k != "kind"}
    return [r for r in _cell(records, **kinds) if r["kind"] in ("main", "sweep") and r["seed"] in s.seeds
            and (r["kind"] == "main" or r["seed"] == s.seeds[0])]  # fmt: skip


def _lr_of(s: Settings, chosen: dict, ds: str, row: str) -> float | None:
    source = ds if ds in s.sweep_datasets else s.sweep_datasets[0]
    return chosen.get((source, row))


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.0f} KiB"


def plot(s: Settings, records: list[dict], chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(s.datasets), figsize=(5 * len(s.datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], s.datasets, strict=True):
        for recipe, marker in (("tuned", "o"), ("paper", "x")):
            for i, row in enumerate(s.rows):
                match = {"recipe": recipe, "row": row, "dataset": ds, "kind": "main"}
                if recipe == "tuned":
                    match["lr"] = _lr_of(s, chosen, ds, row)
                rs = _main_runs(records, s, match)
                if not rs:
                    continue
                y = [r["test_top1"] for r in rs]
                ax.errorbar(rs[0]["trainable_params"], np.mean(y), yerr=np.std(y) if len(y) > 1 else 0,
                            fmt=marker, color=f"C{i}", label=row if recipe == "tuned" else None,
                            capsize=3)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{DATASET_NAMES[ds]} ({s.img_size[ds]} px): o tuned, x paper")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(s: Settings, records: list[dict], chosen: dict, meta: dict) -> str:
    sizes = ", ".join(f"{DATASET_NAMES[d]} {s.img_size[d]} px" for d in s.datasets)
    done = len(records)
    lines = [
        f"Command: `{meta['command']}`  \n"
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, torch "
        f"{meta['machine']['torch']}; finished {meta['machine']['date']}; {done} of {meta['planned']} "
        f"runs done; {meta['minutes']:.0f} min in this invocation, and the runs' own times add up "
        f"to {sum(r.get('seconds', 0) for r in records) / 60:.0f} min (the whole grid, across "
        f"invocations); load average at the end {meta['machine']['load_average']}.",
        *(
            ["**SMOKE RUN: tiny train and test folders, numbers mean nothing.**"]
            if meta["smoke"]
            else []
        ),
        f"Backbone: {MODEL} (the shared DINOv2 ViT-S/14 weights). Inputs: {sizes} (patch 14). "
        f"Training: {s.train_per_class} images per class from the official training split "
        f"(seeded), {100 * s.val_fraction:.0f}% of them held out for validation; {s.epochs} epochs, "
        f"batch {s.batch_size}. Test: the full official test split "
        "(CIFAR-10 10,000, Fashion-MNIST 10,000, Imagenette 1,300 val images), scored once with "
        "the epoch chosen on validation. Task file: the adapter files the run saves.",
        tables(s, records, chosen),
        "![accuracy vs trainable parameters](accuracy.png)",
    ]
    return "\n\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(BACKBONE), help="the backbone file")
    p.add_argument("--work", default=str(ROOT / "runs" / "accuracy"), help="run folders")
    p.add_argument("--data-cache", default=str(ROOT / "runs" / "accuracy-data"),
                   help="where the data archives are unpacked")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--budget-minutes", type=float, default=120.0,
                   help="start no new run after this long (rerun to continue)")  # fmt: skip
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--img-size", type=int, help="input size for every data set (default: 28)")
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--rows", nargs="+", choices=list(ROWS))
    p.add_argument("--datasets", nargs="+", choices=list(DATASET_NAMES))
    p.add_argument("--sweep-datasets", nargs="+", choices=list(DATASET_NAMES),
                   help="data sets whose validation split picks the tuned lr (default: cifar10; "
                   "the others use its choice)")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="a tiny grid on tiny splits (~2 min)")
    p.add_argument("--plan", action="store_true", help="print the grid and its estimated time")
    p.add_argument("--update-docs", action="store_true", help="rewrite docs/results.md's section")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = smoke_settings() if args.smoke else Settings()
    for name in (
        "epochs",
        "batch_size",
        "train_per_class",
        "seeds",
        "rows",
        "datasets",
        "sweep_datasets",
    ):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    if args.img_size is not None:
        s.img_size = dict.fromkeys(s.img_size, args.img_size)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"accuracy.py: backbone {args.checkpoint} not found (pass --checkpoint)")
    work, out = Path(args.work), Path(args.out)
    if args.smoke and args.work == p.get_default("work"):
        work = ROOT / "runs" / "accuracy-smoke"
    if args.smoke and args.out == p.get_default("out"):
        out = work
    planned = plan_runs(s, {key: SWEEP[_family(key[1])][1] for key in
                            ((d, r) for d in s.sweep_datasets for r in s.rows)})  # fmt: skip
    if args.plan:
        minutes, speeds = estimate_minutes(s, planned, args.checkpoint)
        print(json.dumps({"runs": len(planned), "estimated_minutes": round(minutes), "settings": vars(s),
                          "probe_images_per_s": speeds, "load_average": os.getloadavg()}, indent=2))  # fmt: skip
        return 0
    data = prepare_data(Path(args.data_cache), args.smoke)
    start = time.time()
    stopped = False
    for phase in ("sweep", "all"):  # the sweep first: the tuned runs need its choice of lr
        chosen = choose_lrs(s, work)
        for run in plan_runs(s, chosen):
            if phase == "sweep" and run.kind != "sweep":
                continue
            if (time.time() - start) / 60 > args.budget_minutes:
                stopped = True
                break
            cfg = train_config(run, s, data, args.checkpoint, work)
            summary = execute(run, cfg)
            if summary is not None:
                _log.info("%s: test top-1 %.2f (val %.2f) in %.0f s; load %s", run.folder,
                          summary.get("test_top1", math.nan), summary.get("val_top1", math.nan),
                          summary["seconds"], os.getloadavg())  # fmt: skip
        if stopped:
            break
    chosen = choose_lrs(s, work)
    runs = plan_runs(s, chosen)
    records = collect(s, work, runs)
    from toolkit import machine_info

    meta = {
        "command": "python benchmarks/accuracy.py " + " ".join(map(shlex.quote, sys.argv[1:])),
        "machine": machine_info(),
        "planned": len(runs),
        "smoke": args.smoke,
        "minutes": (time.time() - start) / 60,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(
        {"meta": meta, "settings": vars(s), "chosen_lr": {f"{d}/{r}": lr for (d, r), lr in chosen.items()},
         "runs": records}, indent=2) + "\n")  # fmt: skip
    plot(s, records, chosen, out / "accuracy.png")
    markdown = report(s, records, chosen, meta)
    (out / "accuracy.md").write_text(markdown)
    if args.update_docs and not args.smoke:
        update_docs(markdown, ROOT / "docs" / "results.md", "accuracy", images=out)
    print(markdown)
    if stopped:
        print(f"budget of {args.budget_minutes:g} min reached: {len(runs) - len(records)} runs left; "
              "rerun the same command to continue")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
