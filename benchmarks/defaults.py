"""Do `adaptformer train`'s default learning rates hold beyond the two tasks that tuned them?

The AdamW defaults (``DEFAULT_BLR``) were chosen on two VTAB-1k tasks (eurosat, dsprites_loc) at
112 px and 6 epochs. Here every method runs at its default, exactly as a user gets it
(``adaptformer train --method M``: no ``--blr``, no ``--lr``, the divergence guard on), through
the real CLI in a subprocess, on four real data sets that took no part in the tuning:

- Imagenette and CIFAR-10 (image folders; 20 training images per class, seeded, a tenth of them
  held out for validation; 20 test images per class);
- flowers102 (natural, 102 classes) and dsprites_ori (structured, 16 classes) from
  ``vtab-lite.tar``, in the VTAB-1k tuning-phase layout: the training pool is ``train800``
  (flowers102: 4 images per class, dsprites_ori: 20 per class, seeded), the test list is
  ``val200``.

Cells: 56 and 112 px, 3 and 10 epochs; batch 32, fp32, the shared DINOv2 ViT-S/14. ``--blr
METHOD=VALUE`` adds runs of one method at other base learning rates on the same cells (the
previous default, candidates), so one table shows what the default replaces.

A run is recorded as diverged when the divergence guard (or the non-finite-loss check) stopped
it; its loss, epoch and step come from the CLI's one-line message. Run folders go to ``--work``
(default ``runs/defaults``); a finished run (``result.json``) is never repeated, so the command
can be rerun until the grid is done; ``--budget-minutes`` stops starting new runs after that.
Results: ``defaults.json`` and ``defaults.md`` in ``--out``; ``--update-docs`` also writes the
section of ``docs/results.md``.

Usage::

    python benchmarks/defaults.py --update-docs          # the grid (about an hour on 2 cores)
    python benchmarks/defaults.py --plan                 # the runs, and a time estimate
    python benchmarks/defaults.py --blr linear=0.36      # also the previous linear default
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _docs import update_docs  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADAPTFORMER_SHARED", ROOT.parent / "shared"))
BACKBONE = SHARED / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"
MODEL = "vit_small_patch14_dinov2"
_log = logging.getLogger("defaults")

METHODS: tuple[str, ...] = ("linear", "full", "bitfit", "vpt", "lora", "adaptformer",
                            "adapter_plus", "houlsby", "pfeiffer")  # fmt: skip


@dataclass(frozen=True)
class DataSpec:
    """How one data set is read: the ``train`` flags, and its few-shot size per class."""

    kind: str  # imagefolder or vtab1k
    train_per_class: int | None
    title: str
    extra: tuple[str, ...] = ()  # flags of this data set's own protocol

    def flags(self, root: Path) -> list[str]:
        if self.kind == "vtab1k":
            flags = ["--dataset", "vtab1k", "--data-root", str(root), "--train-split", "train800",
                     "--test-split", "val200"]  # fmt: skip
        else:
            flags = ["--dataset", "imagefolder", "--data-root", str(root), "--test-split", "test"]
        if self.train_per_class is not None:
            flags += ["--train-per-class", str(self.train_per_class)]
        return [*flags, *self.extra]


# The VTAB-1k tuning phase as benchmarks/vtab_lite.py ran it to choose the defaults: all of
# train800 (no validation carved out), no augmentation, bf16; scored on val200.
_TUNING = ("--val-fraction", "0", "--augment", "none", "--precision", "bf16")
DATASETS: dict[str, DataSpec] = {
    "imagenette": DataSpec("imagefolder", 20, "Imagenette"),
    "cifar10": DataSpec("imagefolder", 20, "CIFAR-10"),
    "flowers102": DataSpec("vtab1k", 4, "flowers102"),
    "dsprites_ori": DataSpec("vtab1k", 20, "dsprites_ori"),
    # the two tasks that tuned the defaults, in the setting that tuned them (a spot check)
    "eurosat": DataSpec("vtab1k", None, "eurosat (tuning task)", _TUNING),
    "dsprites_loc": DataSpec("vtab1k", None, "dsprites_loc (tuning task)", _TUNING),
}
NEW_DATA = ("imagenette", "cifar10", "flowers102", "dsprites_ori")  # none of them tuned a default
# Images per class of the small test folders made from the image-folder data sets.
TEST_PER_CLASS = 20
# CIFAR-10's training pool: the first images per class by file name (the few-shot subset is
# drawn from it), so that a run does not list and check all 50,000 files.
CIFAR_POOL = 100


@dataclass(frozen=True)
class Block:
    """Runs of one input size and epoch count on some data sets, for some methods (None: all)."""

    img_size: int
    epochs: int
    datasets: tuple[str, ...]
    methods: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return f"{self.img_size} px, {self.epochs} ep"


# Every data set at 56 and 112 px, 3 and 10 epochs, every method.
FULL_GRID: tuple[Block, ...] = tuple(Block(px, ep, NEW_DATA) for ep in (3, 10) for px in (56, 112))
# The linear probe on the two tuning tasks as they were tuned (112 px, 6 epochs): does its new
# default lose what the old one won there?
TUNING_CHECK = Block(112, 6, ("eurosat", "dsprites_loc"), ("linear",))
# The full grid is about 140 runs, many hours on a 2-core CPU shared with other work. The cut
# runs, most telling first: every method on two data sets of different kinds at 56 px / 3
# epochs; the linear probe (whose default changed) at every cell of the full grid and on the
# tuning tasks; every method at 112 px on Imagenette (the data set of the reported divergence);
# then the other two data sets and 10 epochs for every method. ``--budget-minutes`` ends it
# wherever the time runs out.
SHORT_GRID: tuple[Block, ...] = (
    Block(56, 3, ("imagenette", "dsprites_ori")),
    Block(112, 3, NEW_DATA, ("linear",)),
    TUNING_CHECK,
    Block(56, 3, ("cifar10", "flowers102"), ("linear",)),
    Block(112, 3, ("imagenette",)),
    Block(56, 10, NEW_DATA, ("linear",)),
    Block(112, 10, NEW_DATA, ("linear",)),
    Block(56, 3, ("cifar10", "flowers102")),
    Block(56, 10, ("dsprites_ori",)),
)
GRIDS: dict[str, tuple[Block, ...]] = {"short": SHORT_GRID, "full": (*FULL_GRID, TUNING_CHECK)}


@dataclass
class Settings:
    """The grid: blocks of (size, epochs, data sets, methods) at the methods' defaults, plus
    extra (method, blr) pairs wherever the method runs."""

    blocks: tuple[Block, ...] = SHORT_GRID
    grid: str = "short"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    extra_blr: dict[str, list[float]] = field(default_factory=dict)
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True)
class Run:
    """One ``adaptformer train`` invocation of the grid."""

    dataset: str
    img_size: int
    epochs: int
    method: str
    blr: float  # resolved: the method's default, or an extra one

    @property
    def folder(self) -> str:
        return f"{self.dataset}/{self.img_size}px-{self.epochs}ep/{self.method}-blr{self.blr:g}"


def default_blr(method: str) -> float:
    from adaptformer.training.config import DEFAULT_BLR

    return DEFAULT_BLR["adamw"][method]


def plan_runs(s: Settings) -> list[Run]:
    """Every run, block by block: each method at its default, then its extra learning rates."""
    runs: list[Run] = []
    for block in s.blocks:
        methods = [m for m in (block.methods or METHODS) if m in s.methods]
        for ds in (d for d in block.datasets if d in s.datasets):
            for m in methods:
                blrs = [default_blr(m), *s.extra_blr.get(m, [])]
                runs += [Run(ds, block.img_size, block.epochs, m, b) for b in blrs]
    return list(dict.fromkeys(runs))  # an extra blr equal to the default, a cell twice: once


def parse_blr(text: str) -> tuple[str, list[float]]:
    """``linear=0.36,0.12`` -> ``("linear", [0.36, 0.12])`` (argparse ``type``)."""
    method, sep, values = text.partition("=")
    if not sep or method not in METHODS:
        raise argparse.ArgumentTypeError(
            f"--blr {text!r}: write METHOD=VALUE[,VALUE...] with METHOD one of {', '.join(METHODS)}"
        )
    try:
        blrs = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        blrs = []
    if not blrs or not all(b > 0 and math.isfinite(b) for b in blrs):
        raise argparse.ArgumentTypeError(f"--blr {text!r}: the values must be positive numbers")
    return method, blrs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(BACKBONE), help="the backbone file")
    p.add_argument("--work", default=str(ROOT / "runs" / "defaults"), help="run folders")
    p.add_argument("--data-cache", default=str(ROOT / "runs" / "defaults-data"),
                   help="where the data archives are unpacked")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--grid", choices=list(GRIDS), default="short",
                   help="short: the cut of the full grid, most telling runs first (default); "
                   "full: every data set and method at 56 and 112 px, 3 and 10 epochs")  # fmt: skip
    p.add_argument("--methods", nargs="+", choices=METHODS, help="default: all")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), help="default: all")
    p.add_argument("--blr", action="append", type=parse_blr, default=[], metavar="METHOD=BLR",
                   help="also run METHOD at these base learning rates (repeatable)")  # fmt: skip
    p.add_argument("--budget-minutes", type=float, default=90.0,
                   help="start no new run after this long (rerun to continue)")  # fmt: skip
    p.add_argument("--plan", action="store_true", help="list the runs and the estimated time")
    p.add_argument("--report", action="store_true", help="only rebuild the results files")
    p.add_argument("--update-docs", action="store_true", help="rewrite docs/results.md's section")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    extra: dict[str, list[float]] = {}
    for method, blrs in args.blr:
        extra.setdefault(method, [])
        extra[method] += [b for b in blrs if b not in extra[method]]
    return Settings(
        blocks=GRIDS[args.grid],
        grid=args.grid,
        methods=list(args.methods or METHODS),
        datasets=list(args.datasets or DATASETS),
        extra_blr=extra,
    )


# --------------------------------------------------------------------------- data


def prepare_data(cache: Path) -> dict[str, Path]:
    """The data root of every data set, unpacked once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("imagenette", "cifar10", "vtab-lite"):
        if not (cache / name).is_dir():
            tar = SHARED / "data" / f"{name}.tar"
            if not tar.is_file():
                raise SystemExit(f"{tar} not found: set ADAPTFORMER_SHARED to the shared folder")
            _log.info("unpacking %s into %s", tar, cache)
            with tarfile.open(tar) as tf:
                tf.extractall(cache, filter="data")
    roots = {
        "imagenette": _small_folder(cache, "imagenette", "val", None),
        "cifar10": _small_folder(cache, "cifar10", "test", CIFAR_POOL),
    }
    for task in ("flowers102", "dsprites_ori", "eurosat", "dsprites_loc"):
        roots[task] = cache / "vtab-lite" / task
    return roots


def _small_folder(cache: Path, name: str, test: str, pool: int | None) -> Path:
    """``<name>-small/{train,test}``: the training images (the first ``pool`` per class by file
    name, or all) and the first ``TEST_PER_CLASS`` of the ``test`` split, as hard links."""
    dest = cache / f"{name}-small"
    done = dest / ".complete"
    if done.is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    for split, keep, source in (("train", pool, "train"), ("test", TEST_PER_CLASS, test)):
        for cls in sorted(p for p in (cache / name / source).iterdir() if p.is_dir()):
            folder = dest / split / cls.name
            folder.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:keep]:
                os.link(f, folder / f.name)
    done.write_text("")
    return dest


# --------------------------------------------------------------------------- running


def train_command(run: Run, root: Path, checkpoint: str, out: Path) -> list[str]:
    """The ``adaptformer train`` command line of one run: the method's defaults, except for
    ``--blr`` when the run's is not the default."""
    spec = DATASETS[run.dataset]
    blr = [] if run.blr == default_blr(run.method) else ["--blr", f"{run.blr:g}"]
    return [sys.executable, "-m", "adaptformer", "train", *spec.flags(root),
            "--img-size", str(run.img_size),
            "--epochs", str(run.epochs), "--method", run.method, *blr,
            "--model", MODEL, "--checkpoint", checkpoint, "--workers", "0",
            "--device", "cpu", "--output", str(out)]  # fmt: skip


_DIVERGED = re.compile(
    r"diverged at epoch (\d+) step (\d+): the loss \(moving average\) reached (\S+), over"
)
_NONFINITE = re.compile(r"loss is (\S+) at epoch (\d+) step (\d+)")


def outcome(returncode: int, last_line: str) -> dict[str, Any]:
    """What stopped a run, from its exit code and the CLI's last stderr line."""
    result: dict[str, Any] = {"returncode": returncode, "guard": None, "message": last_line}
    if returncode == 0:
        return result
    m = _DIVERGED.search(last_line)
    if m:
        result["guard"] = {"kind": "diverged", "epoch": int(m.group(1)), "step": int(m.group(2)),
                           "loss": float(m.group(3))}  # fmt: skip
        return result
    m = _NONFINITE.search(last_line)
    if m:
        result["guard"] = {"kind": "non-finite", "epoch": int(m.group(2)),
                           "step": int(m.group(3)), "loss": float(m.group(1))}  # fmt: skip
    return result


def execute(run: Run, roots: dict[str, Path], checkpoint: str, work: Path) -> dict | None:
    """Run one ``train`` (or nothing, if its ``result.json`` exists); its result."""
    folder = work / run.folder
    if (folder / "result.json").is_file():
        return None
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted run starts again
    folder.mkdir(parents=True)
    cmd = train_command(run, roots[run.dataset], checkpoint, folder / "run")
    start = time.time()
    with (folder / "stderr.log").open("w") as log:
        code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log).returncode
    lines = (folder / "stderr.log").read_text().strip().splitlines()
    result = {"command": shlex.join(["adaptformer", *cmd[3:]]), "seconds": time.time() - start,
              **outcome(code, lines[-1] if lines else "")}  # fmt: skip
    if code != 0 and result["guard"] is None:
        raise SystemExit(f"{run.folder} failed (exit {code}): {result['message']}")
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def record(run: Run, work: Path) -> dict[str, Any] | None:
    """One row of the results: the run's settings, losses and scores, and whether it diverged."""
    folder = work / run.folder
    if not (folder / "result.json").is_file():
        return None
    result = json.loads((folder / "result.json").read_text())
    metrics_file = folder / "run" / "metrics.jsonl"
    epochs = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()] \
        if metrics_file.is_file() else []  # fmt: skip
    summary_file = folder / "run" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    guard = result["guard"]
    return {
        **asdict(run),
        "default": run.blr == default_blr(run.method),
        "train_loss": [e["train_loss"] for e in epochs],
        "final_train_loss": guard["loss"]
        if guard
        else (epochs[-1]["train_loss"] if epochs else None),
        "val_top1": summary.get("val_top1"),
        "best_epoch": summary.get("best_epoch"),
        "test_top1": summary.get("test_top1"),
        "train_images": summary.get("data", {}).get("train"),
        "test_images": summary.get("data", {}).get("test"),
        "diverged": guard is not None,
        "guard": guard,
        "seconds": result["seconds"],
        "command": result["command"],
    }


def collect(runs: Sequence[Run], work: Path) -> list[dict[str, Any]]:
    return [r for r in (record(run, work) for run in runs) if r is not None]


def estimate_minutes(runs: Sequence[Run], records: Sequence[dict[str, Any]]) -> tuple[float, int]:
    """Minutes the unfinished runs will take, from the finished ones (median seconds per epoch
    of the same method and size), and how many unfinished runs have no such measurement yet."""
    done = {(r["dataset"], r["img_size"], r["epochs"], r["method"], r["blr"]) for r in records}
    per_epoch: dict[tuple[str, int], list[float]] = {}
    for r in records:
        if not r["diverged"]:
            per_epoch.setdefault((r["method"], r["img_size"]), []).append(
                r["seconds"] / r["epochs"]
            )
    seconds, unknown = 0.0, 0
    for run in runs:
        if (run.dataset, run.img_size, run.epochs, run.method, run.blr) in done:
            continue
        same = per_epoch.get((run.method, run.img_size))
        if same:
            seconds += statistics.median(same) * run.epochs
        else:
            unknown += 1
    return seconds / 60, unknown


def feature_scale(checkpoint: str, roots: dict[str, Path], sizes: Sequence[int] = (56, 112),
                  images: int = 24) -> list[dict[str, Any]]:  # fmt: skip
    """The size of what a linear head sees: the backbone's pooled features of ``images``
    training images (seeded) per data set and input size, as the CLI's eval transform feeds them.

    AdamW moves every weight by about the learning rate per step whatever the gradient's
    scale, so a head's logits move by about ``lr x sum |x_i|`` (the L1 norm): a learning rate
    suits every data set alike when their features have the same scale.
    """
    import random

    import torch
    from PIL import Image

    from adaptformer.backbones.create import pretrained_backbone
    from adaptformer.data.transforms import build_eval_transform
    from adaptformer.training.modality import data_stats

    rows = []
    for px in sizes:
        model = pretrained_backbone(MODEL, checkpoint, px).eval()
        stats = data_stats(model)
        tf = build_eval_transform(px, stats["mean"], stats["std"], stats["interpolation"])
        for name, root in roots.items():
            folder = root / ("train" if DATASETS[name].kind == "imagefolder" else "images")
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            files = random.Random(0).sample(files, min(images, len(files)))
            x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
            with torch.inference_mode():
                f = model.forward_head(model.forward_features(x), pre_logits=True)
            rows.append({"dataset": name, "img_size": px, "images": len(files), "dim": f.shape[1],
                         "rms": f.pow(2).mean().sqrt().item(),
                         "l1": f.abs().sum(1).mean().item()})  # fmt: skip
    return rows


def feature_table(rows: Sequence[dict[str, Any]]) -> str:
    """Feature scale per data set and size (from :func:`feature_scale`)."""
    lines = ["Scale of the pooled features a linear head sees (RMS of the entries and mean L1 "
             f"norm over {rows[0]['images']} training images, {rows[0]['dim']} dimensions):", "",
             "| data set | px | RMS | L1 norm |", "|---|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {DATASETS[r['dataset']].title} | {r['img_size']} | {r['rms']:.2f} "
                     f"| {r['l1']:.0f} |")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def _cell_text(r: dict[str, Any] | None) -> str:
    if r is None:
        return "–"
    if r["diverged"]:
        g = r["guard"]
        return f"**stop** e{g['epoch']} s{g['step']}"
    return f"{r['test_top1']:.1f}"


def matrix(s: Settings, runs: Sequence[Run], records: Sequence[dict[str, Any]]) -> str:
    """Test top-1 per planned cell (rows: data set, size, epochs) and method at each learning
    rate (columns); **stop** eE sS: the guard stopped the run at epoch E, step S; –: not run."""
    by_key = {(r["dataset"], r["img_size"], r["epochs"], r["method"], r["blr"]): r for r in records}
    rows = list(dict.fromkeys((r.dataset, r.img_size, r.epochs) for r in runs))
    columns = sorted(dict.fromkeys((r.method, r.blr) for r in runs),
                     key=lambda mb: (METHODS.index(mb[0]), mb[1] != default_blr(mb[0]), -mb[1]))  # fmt: skip
    names = [m if b == default_blr(m) else f"{m} blr {b:g}" for m, b in columns]
    lines = ["| data set | px | epochs | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---:|" * len(columns)]  # fmt: skip
    for ds, px, ep in rows:
        cells = [_cell_text(by_key.get((ds, px, ep, m, b))) if Run(ds, px, ep, m, b) in runs
                 else "" for m, b in columns]  # fmt: skip
        lines.append(f"| {DATASETS[ds].title} | {px} | {ep} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def defaults_line(runs: Sequence[Run]) -> str:
    """The default base learning rate of every method in the grid (AdamW, per 256 images)."""
    methods = [m for m in METHODS if any(r.method == m for r in runs)]
    return ", ".join(f"{m} {default_blr(m):g}" for m in methods)


def per_run_table(records: Sequence[dict[str, Any]]) -> str:
    """Every run: what it was, its losses and scores, and whether the guard stopped it."""
    lines = ["| data set | px | epochs | method | blr | train loss per epoch | final train loss | "
             "best val top-1 (epoch) | test top-1 | guard | seconds |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|---|---:|"]  # fmt: skip
    for r in records:
        g = r["guard"]
        guard = f"{g['kind']} at epoch {g['epoch']} step {g['step']}" if g else "no"
        losses = " ".join(f"{v:.2f}" for v in r["train_loss"]) or "–"
        final = "–" if r["final_train_loss"] is None else f"{r['final_train_loss']:.3g}"
        val = "–" if r["val_top1"] is None else f"{r['val_top1']:.1f} ({r['best_epoch'] + 1})"
        test = "–" if r["test_top1"] is None else f"{r['test_top1']:.1f}"
        lines.append(
            f"| {DATASETS[r['dataset']].title} | {r['img_size']} | {r['epochs']} | {r['method']} "
            f"| {r['blr']:g}{' (default)' if r['default'] else ''} | {losses} | {final} | {val} "
            f"| {test} | {guard} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def verdict(records: Sequence[dict[str, Any]]) -> str:
    """One sentence per outcome: which default runs the guard stopped (none, or which)."""
    defaults = [r for r in records if r["default"]]
    stopped = [r for r in defaults if r["diverged"]]
    if not defaults:
        return "No run at a default learning rate has finished yet."
    if not stopped:
        return (f"None of the {len(defaults)} runs at the default learning rates diverged "
                "(the guard never fired).")  # fmt: skip
    names = ", ".join(f"{r['method']} on {DATASETS[r['dataset']].title} at {r['img_size']} px / "
                      f"{r['epochs']} ep" for r in stopped)  # fmt: skip
    return f"The guard stopped {len(stopped)} of {len(defaults)} runs at a default: {names}."


def report(s: Settings, runs: Sequence[Run], records: Sequence[dict[str, Any]],
           meta: dict[str, Any], full: bool = True) -> str:  # fmt: skip
    """The Markdown: command, machine, set-up, the matrix, the verdict, and (``full``) every run."""
    m = meta["machine"]
    setup = (
        f"Command: `{meta['command']}`  \n"
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; finished {m['date']}; "
        f"{len(records)} of {len(runs)} planned runs done; the runs' own times add up to "
        f"{sum(r['seconds'] for r in records) / 60:.0f} min; load average at the end "
        f"{m['load_average']} (the CPU was shared with other work)."
    )
    planned = {r.dataset for r in runs}
    data = "; ".join(
        f"{spec.title} {spec.train_per_class} per class"
        + (" from train800, tested on val200" if spec.kind == "vtab1k" else
           f", tested on {TEST_PER_CLASS} per class")
        for name, spec in DATASETS.items() if name in planned and not spec.extra
    )  # fmt: skip
    tuning = [spec.title.split()[0] for name, spec in DATASETS.items()
              if name in planned and spec.extra]  # fmt: skip
    body = [
        setup,
        f"Every run is `adaptformer train --method M --img-size PX --epochs E` with `train`'s "
        f"defaults for everything else: AdamW at the method's default base learning rate "
        f"({defaults_line(runs)}) unless a column names another, batch {s.batch_size}, warm-up "
        f"over a tenth of the run, `paper` augmentation, fp32, the divergence guard on; backbone "
        f"{MODEL} (the shared DINOv2 ViT-S/14), seed {s.seed}. Training images (seeded few-shot "
        f"subsets, a tenth held out for validation): {data}. Grid `--grid {s.grid}`."
        + (
            f" The tuning tasks ({' and '.join(tuning)}) run as the sweep that chose the "
            "defaults ran them (benchmarks/vtab_lite.py): all of train800, no augmentation, bf16, "
            "the last epoch scored on val200."
            if tuning
            else ""
        ),
        "Test top-1 % (of the epoch chosen on validation); **stop** eE sS: the divergence guard "
        "stopped the run at epoch E, step S (the loss's moving average passed 3x its start); "
        "–: planned, not run yet; blank: not planned.",
        matrix(s, runs, records),
        verdict(records),
    ]
    if meta.get("features"):
        body.append(feature_table(meta["features"]))
    if full:
        body += ["Every run:", per_run_table(records)]
    return "\n\n".join(body) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = settings_from_args(args)
    work, out = Path(args.work), Path(args.out)
    runs = plan_runs(s)
    if args.plan:
        records = collect(runs, work)
        minutes, unknown = estimate_minutes(runs, records)
        for run in runs:
            print(run.folder)
        print(f"{len(runs)} runs, {len(records)} done; the others take about {minutes:.0f} min"
              + (f" plus {unknown} without a measured run of their method and size" if unknown
                 else ""))  # fmt: skip
        return 0
    if not args.report:
        if not Path(args.checkpoint).is_file():
            raise SystemExit(f"defaults.py: backbone {args.checkpoint} not found (--checkpoint)")
        roots = prepare_data(Path(args.data_cache))
        start = time.time()
        for run in runs:
            if (time.time() - start) / 60 > args.budget_minutes:
                print(f"budget of {args.budget_minutes:g} min reached; rerun to continue")
                break
            result = execute(run, roots, args.checkpoint, work)
            if result is not None:
                r = record(run, work)
                _log.info("%s: %s in %.0f s; load %s", run.folder, _cell_text(r),
                          result["seconds"], os.getloadavg())  # fmt: skip
    records = collect(runs, work)
    features_file = work / "features.json"
    if not features_file.is_file() and not args.report:
        rows = feature_scale(args.checkpoint, prepare_data(Path(args.data_cache)))
        features_file.write_text(json.dumps(rows, indent=2) + "\n")
    from toolkit import machine_info

    meta = {
        "command": "python benchmarks/defaults.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "planned": len(runs),
        "features": json.loads(features_file.read_text()) if features_file.is_file() else [],
    }
    out.mkdir(parents=True, exist_ok=True)
    settings = asdict(s)
    (out / "defaults.json").write_text(
        json.dumps({"meta": meta, "settings": settings, "runs": records}, indent=2) + "\n"
    )
    markdown = report(s, runs, records, meta)
    (out / "defaults.md").write_text(markdown)
    if args.update_docs:
        update_docs(report(s, runs, records, meta, full=False), ROOT / "docs" / "results.md",
                    "defaults")  # fmt: skip
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
