"""The headline table: the VTAB-1k protocol on the five real tasks of ``vtab-lite.tar``.

Backbone: the shared real DINOv2 ViT-S/14. Tasks: caltech101, flowers102 (natural), eurosat
(specialized), dsprites_loc, dsprites_ori (structured). Each (task, method) goes through
``adaptformer vtab``: train on train800 and score val200 for every point of the lr grid, keep
the best, train on all 1,000 images and score the test list once. Inputs 112 px (8x8 patches),
no augmentation (the VTAB-1k convention), bf16 autocast, batch 32, AdamW with each method's
default learning rate times the grid.

Sections (each resumable; rerun the same command after an interruption):

- ``table``: every method on every task, seed 0; AdaptFormer-64, full fine-tuning and the adapter
  family's presets also seed 1 (every seed-0 run first).
- ``convergence``: AdaptFormer-64 and full fine-tuning on one task with twice the epochs, at the
  learning rate the protocol chose.
- ``precision``: step time of fp32 and bf16 on a real batch, and one final run in fp32 to
  compare its test top-1 with the bf16 one.

Two processes (one thread each) share the tasks, which is faster on 2 cores than one process
with two threads. Results go to ``benchmarks/results/vtab_lite.{json,md,png}``; with
``--update-docs`` the Markdown replaces the VTAB-lite section of ``docs/results.md``.

Usage::

    python benchmarks/vtab_lite.py --checkpoint ../shared/assets/vit_small_patch14_dinov2.imgfocus.safetensors --update-docs
    python benchmarks/vtab_lite.py --plan          # what would run, and the estimated hours
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tarfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _docs import update_docs  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADAPTFORMER_SHARED", ROOT.parent / "shared"))
BACKBONE = SHARED / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"
RESULTS = ROOT / "benchmarks" / "results"

TASKS = ("caltech101", "flowers102", "eurosat", "dsprites_loc", "dsprites_ori")
METHODS = ("linear", "full", "bitfit", "vpt-10", "lora-8", "adaptformer-8", "adaptformer-64",
           "adapter_plus-8", "houlsby-8", "pfeiffer-48")  # fmt: skip
DECIDING = ("adaptformer-64", "full")  # the paper's comparison, also in the convergence check
# The methods the table reports over two seeds: the paper's comparison, and the adapters the
# family's "which adapter wins" statement compares with AdaptFormer-64 (two seeds of one method
# differ by up to 27 points on a dsprites task, more than the gaps between methods).
TWO_SEEDS = (*DECIDING, "lora-8", "adapter_plus-8", "houlsby-8", "pfeiffer-48")
SEEDS = (0, 1)  # their seeds, in the table and in the convergence check
# The learning-rate sweep behind the defaults: the protocol's tuning phase (train800 -> val200)
# on one natural-image and one structured task, every method kind. The grid is multiples of a
# first guess per method (SWEEP_BASE_BLR): x0.3, x1 and x3 for every method, then x9, x27, ...
# for as long as the largest multiple run so far scored best (mean over the two tasks), so that
# no chosen default sits on the edge of what was measured. SWEEP_TOP records how far each
# method had to go.
SWEEP_TASKS = ("eurosat", "dsprites_loc")
SWEEP_METHODS = ("linear", "full", "bitfit", "vpt-10", "lora-8", "adaptformer-64",
                 "adapter_plus-8", "houlsby-8", "pfeiffer-48")  # fmt: skip
SWEEP_BASE_BLR = {"linear": 4e-2, "full": 4e-4, "bitfit": 4e-3, "vpt": 4e-3, "lora": 4e-3,
                  "adaptformer": 1.6e-2, "adapter_plus": 4e-3, "houlsby": 4e-3,
                  "pfeiffer": 4e-3}  # fmt: skip
LR_GRID = (0.3, 1.0, 3.0, 9.0, 27.0)
# The adapter family's presets joined later: x0.3 to x9 of Adapter+'s recipe (AdamW 1e-3 at
# batch 64 = blr 4e-3), x9 run from the start (their scale of 1 against AdaptFormer's 0.1 made a
# higher best likely), extended by the same rule.
SWEEP_TOP = {"linear": 27.0, "full": 3.0, "bitfit": 27.0, "vpt-10": 27.0, "lora-8": 9.0,
             "adaptformer-64": 9.0, "adapter_plus-8": 27.0, "houlsby-8": 9.0,
             "pfeiffer-48": 27.0}  # fmt: skip
SWEEP_GRID = {m: tuple(g for g in LR_GRID if g <= SWEEP_TOP[m]) for m in SWEEP_METHODS}
EPOCHS = 6
CONVERGENCE_TASK = "eurosat"
COMMON = {
    "model": "vit_small_patch14_dinov2",
    "img_size": 112,
    "augment": "none",
    "batch_size": 32,
    "epochs": EPOCHS,
    "precision": "bf16",
    "workers": 0,
}
# Measured images/s of one training process (1 thread, bf16, 112 px) beside a second one on the
# 2-core machine, for --plan only; evaluation runs at about 55 images/s per process.
_SPEED = {"linear": 45, "full": 12, "bitfit": 14, "vpt": 14, "lora": 14, "adaptformer": 18,
          "adapter_plus": 18, "houlsby": 16, "pfeiffer": 18}  # fmt: skip  # family: assumed
_EVAL_SPEED = 55


def _flags(options: dict[str, Any]) -> list[str]:
    """``{"img_size": 112, "tune_only": True}`` -> ``--img-size 112 --tune-only``."""
    out = []
    for k, v in options.items():
        flag = f"--{k.replace('_', '-')}"
        if isinstance(v, bool):
            out += [flag] if v else []
        else:
            out += [flag, *map(str, v if isinstance(v, (list, tuple)) else [v])]
    return out


def vtab_command(data: Path, out: Path, checkpoint: Path, tasks, methods, seeds, grid,
                 **overrides: Any) -> list[str]:  # fmt: skip
    """The ``adaptformer vtab`` command line of one share of the work."""
    return [
        sys.executable, "-m", "adaptformer", "vtab", "--root", str(data), "--output", str(out),
        "--checkpoint", str(checkpoint), "--tasks", *tasks, "--methods", *methods,
        "--seeds", *map(str, seeds), "--lr-grid", *map(str, grid),
        *_flags({**COMMON, **overrides}),
    ]  # fmt: skip


def table_units(data: Path, out: Path, checkpoint: Path, methods,
                seeds: tuple[int, ...] = SEEDS) -> list[list[str]]:  # fmt: skip
    """The table's runs, one (task, method, seed) each: every seed-0 run before any seed-1 run,
    so that a table cut short still has a complete first seed."""
    return [vtab_command(data, out, checkpoint, [t], [m], (s,), (1.0,))
            for s in SEEDS for m in methods for t in TASKS
            if s in seeds and (s == 0 or m in TWO_SEEDS)]  # fmt: skip


def merge_table_rows(
    previous: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The committed rows with those of the (method, seed) pairs measured now replaced, in the
    table's order (methods as in METHODS, seed 0 first): a part of the table (``--methods``,
    ``--seeds``) is run again without rerunning, or losing, the rest."""
    fresh = {(r["method"], r["seed"]) for r in rows}
    merged = [r for r in previous if (r["method"], r["seed"]) not in fresh] + rows
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(merged, key=lambda r: (r["seed"], order.get(r["method"], len(order)),
                                         TASKS.index(r["task"]) if r["task"] in TASKS else 0))  # fmt: skip


def collect(data: Path, out: Path, checkpoint: Path, tasks, methods, seeds, grid,
            tune_only: bool = False, **over: Any) -> list[dict[str, Any]]:  # fmt: skip
    """The result rows of finished runs (the protocol again, with nothing left to train)."""
    from adaptformer.training.config import TrainConfig
    from adaptformer.training.vtab import Protocol, run_protocol

    base = {**COMMON, **over, "checkpoint": str(checkpoint)}
    p = Protocol(Path(data), tuple(tasks), tuple(methods), tuple(seeds), tuple(grid), out, base,
                 tune_only)  # fmt: skip

    def unfinished(cfg: TrainConfig, **_: Any) -> dict[str, Any]:
        raise SystemExit(f"{cfg.output} has not finished; rerun without --report")

    return run_protocol(p, unfinished, report=lambda _: None)


def _kind(spec: str) -> str:
    return spec.split("-")[0]


def sweep_so_far(
    data: Path, out: Path, checkpoint: Path, methods=SWEEP_METHODS
) -> list[dict[str, Any]]:
    """The sweep's finished tuning runs, read from their folders (all of them once it is done)."""
    from adaptformer.training.vtab import GROUPS, Protocol

    rows = []
    for spec in methods:
        base_blr = SWEEP_BASE_BLR[_kind(spec)]
        base = {**COMMON, "checkpoint": str(checkpoint), "blr": base_blr}
        p = Protocol(data, SWEEP_TASKS, (spec,), (0,), SWEEP_GRID[spec], out, base, True)
        for task in SWEEP_TASKS:
            scores = {}
            for mult in SWEEP_GRID[spec]:
                folder = Path(p.config("tune", task, spec, base_blr * mult, 0).output)
                if (folder / "summary.json").is_file():
                    s = json.loads((folder / "summary.json").read_text())
                    scores[f"{base_blr * mult:.3g}"] = s["test_top1"]
            if scores:
                rows.append({"task": task, "group": GROUPS.get(task, "other"), "method": spec,
                             "base_blr": base_blr, "grid": list(SWEEP_GRID[spec]),
                             "val200_top1": scores})  # fmt: skip
    return rows


def ensure_data(dest: Path) -> Path:
    root = dest / "vtab-lite"
    if not (root / TASKS[-1] / "test.txt").is_file():
        tar = SHARED / "data" / "vtab-lite.tar"
        if not tar.is_file():
            raise SystemExit(f"{tar} not found: set ADAPTFORMER_SHARED to the shared folder")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar) as tf:
            tf.extractall(dest, filter="data")
    return root


def step_times(checkpoint: Path, data: Path, steps: int = 6) -> list[dict[str, Any]]:
    """Training images/s of fp32 and bf16 on real eurosat images (2 threads, batch 32)."""
    import torch

    import adaptformer as af
    from adaptformer.training.engine import autocast

    lines = (data / CONVERGENCE_TASK / "train800.txt").read_text().splitlines()[:32]
    from PIL import Image
    from torchvision.transforms.functional import normalize, pil_to_tensor, resize

    x = torch.stack([normalize(resize(pil_to_tensor(Image.open(data / CONVERGENCE_TASK
                     / ln.rsplit(maxsplit=1)[0]).convert("RGB")), [112, 112]).float() / 255,
                     [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) for ln in lines])  # fmt: skip
    y = torch.tensor([int(ln.rsplit(maxsplit=1)[1]) for ln in lines])
    rows = []
    for method in ("adaptformer", "full"):
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = af.create_backbone(COMMON["model"], checkpoint=checkpoint, img_size=112)
            af.inject(model, af.AdapterConfig(method=method), num_classes=10)
            af.mark_trainable(model, method)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
            times = []
            for _ in range(steps + 1):
                t = time.perf_counter()
                with autocast(torch.device("cpu"), precision):
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                times.append(time.perf_counter() - t)
            med = sorted(times[1:])[len(times[1:]) // 2]
            rows.append({"method": method, "precision": precision, "seconds_per_step": med,
                         "images_per_s": len(x) / med})  # fmt: skip
    return rows


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cpu": cpu,
            "cores": os.cpu_count(), "torch": torch.__version__}  # fmt: skip


def _seconds(spec: str, train_images: int, eval_images: int) -> float:
    return train_images / _SPEED[_kind(spec)] + eval_images / _EVAL_SPEED


def sweep_methods_of(methods) -> list[str]:
    """The sweep's rows that choose the defaults of ``methods``' kinds (lora-8 -> lora-8)."""
    kinds = {_kind(m) for m in methods}
    return [m for m in SWEEP_METHODS if _kind(m) in kinds]


def plan(methods=METHODS) -> dict[str, float]:
    """Estimated hours per section on 2 cores (two processes side by side) for ``methods``."""
    test = 2000
    sweep = sum(len(SWEEP_GRID[m]) * _seconds(m, 800 * EPOCHS, 200 * 1)
                for m in sweep_methods_of(methods) for _ in SWEEP_TASKS)  # fmt: skip
    table = sum((2 if m in TWO_SEEDS else 1) * _seconds(m, 1000 * EPOCHS, test)
                for m in methods for _ in TASKS)  # fmt: skip
    conv = len(SEEDS) * sum(_seconds(m, 2000 * EPOCHS, test) for m in DECIDING)
    fp32 = 1.5 * _seconds("adaptformer", 1000 * EPOCHS, test)
    hours = {
        k: v / 3600 / 2
        for k, v in {
            "defaults": sweep,
            "table": table,
            "convergence": conv,
            "precision": fp32,
        }.items()
    }
    # The budget (about 5 hours) is the headline's: the table and its checks. The sweep ran once to
    # choose the defaults and is not needed to reproduce the table.
    headline = sum(v for k, v in hours.items() if k != "defaults")
    return {**hours, "headline": headline, "total": sum(hours.values())}


def run_queue(units: list[list[str]], logs: Path, workers: int = 2) -> None:
    """Run ``adaptformer vtab`` invocations, ``workers`` at a time with one thread each.

    Units are single (task, method) pairs, so the two processes stay busy until the end; each
    unit resumes on its own, so a rerun after an interruption repeats no finished run.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    logs.mkdir(parents=True, exist_ok=True)
    pending, failed, lock = list(units), [], threading.Lock()

    def worker(i: int) -> None:
        while True:
            with lock:
                if not pending:
                    return
                cmd = pending.pop(0)
            with (logs / f"worker{i}.log").open("a") as log:
                log.write("$ " + " ".join(cmd[1:]) + "\n")
                log.flush()
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            if code:
                failed.append(" ".join(cmd[3:]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise SystemExit(f"{len(failed)} unit(s) failed (see {logs}): {failed[0]}")


SECTIONS = ("defaults", "table", "convergence", "precision")
# Published VTAB-1k means (V-PETL Bench, ViT-B/16 IN-21k, 19 tasks): the ordering to compare with.
PUBLISHED = {"linear": 52.9, "full": 65.6, "vpt": 69.4, "lora": 72.3, "adaptformer": 72.3}


def render(result: dict[str, Any], images: Path) -> str:
    """The docs section from whichever sections have finished: table, defaults, checks."""
    from adaptformer.training.vtab import format_table, summarize

    m, c = result["machine"], result["common"]
    rows = result.get("rows", [])
    days = sorted({r["finished"] for r in rows if r.get("finished")})
    when = f"runs finished {days[0]} to {days[-1]}" if len(days) > 1 else (days or [m["date"]])[0]
    # a table completed in parts names every part's command, each one a code span
    command = result.get("command", "python benchmarks/vtab_lite.py --update-docs")
    commands = ", then ".join(f"`{c}`" for c in command.split(", then "))
    lines = [
        f"Command: {commands} "
        f"({when}, {m['cpu']}, "
        f"{m['cores']} cores, torch {m['torch']}, two processes of one thread each). Shared "
        f"DINOv2 ViT-S/14, {c['img_size']} px ({c['img_size'] // 14}x{c['img_size'] // 14} "
        f"patches), no augmentation, batch {c['batch_size']}, {c['epochs']} epochs, AdamW, "
        f"{c['precision']} autocast, each method's default learning rate (below). Every model "
        "trains on all 1,000 images (train800val200) and is scored once on the test list "
        "(last epoch). Test top-1 %; "
        f"{', '.join(dict.fromkeys(r['method'] for r in rows if r['seed']))}: mean ± sd "
        "over seeds 0 and 1, the others seed 0.",
        "",
    ]
    if rows:
        lines += [format_table(rows), "", "![VTAB-lite group means](vtab_lite.png)", ""]
        _plot(summarize(rows), images / "vtab_lite.png")
    else:
        lines += ["*The table has not been run yet.*", ""]
    if result.get("sweep"):
        lines += _defaults_section(result["sweep"], result["lr_grid"])
        done, planned = result.get("sweep_runs"), result.get("sweep_planned")
        if done is not None and done < planned:
            lines += ["", f"*Partial: {done} of the sweep's {planned} runs have finished; a "
                      "dash has not run yet. `--report --partial` wrote this.*"]  # fmt: skip
    by_key = {(r["task"], r["method"], r["seed"]): r for r in rows}
    conv = [
        r for r in result.get("convergence", []) if (r["task"], r["method"], r["seed"]) in by_key
    ]
    if conv:
        lines += _convergence_section(conv, by_key)
    if result.get("step_times"):
        lines += ["", "**fp32 or bf16** (training step, batch 32 of real eurosat images, 112 px, "
                  "one process, 2 threads):", "", "| method | fp32 images/s | bf16 images/s |",
                  "|---|---:|---:|"]  # fmt: skip
        st = result["step_times"]["rows"]
        for meth in dict.fromkeys(r["method"] for r in st):
            v = {r["precision"]: r["images_per_s"] for r in st if r["method"] == meth}
            lines.append(f"| {meth} | {v['fp32']:.1f} | {v['bf16']:.1f} |")
        for r in result.get("fp32", []):
            b = by_key.get((r["task"], r["method"], r["seed"]))
            if b:
                lines += ["", f"Accuracy: {r['method']} on {r['task']} (seed {r['seed']}, same "
                          f"learning rate) scores {r['test_top1']:.1f} in fp32 and "
                          f"{b['test_top1']:.1f} in bf16."]  # fmt: skip
    return "\n".join(lines)


def _convergence_section(conv, by_key) -> list[str]:
    """Test top-1 at the table's epochs and at twice as many, per seed and as the seeds' mean.

    The mean is what the check reads: the table reports these methods as a two-seed mean, and
    one seed's change can be the seed spread (about ±0.7 on eurosat) rather than training.
    """
    out = ["", "**Convergence** (same task, same learning rate, twice the epochs; the check: the "
           "seeds' mean moves by less than 1 point):", "",
           "| method | task | seed | epochs | test top-1 | doubled epochs | test top-1 | change |",
           "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for task, method in dict.fromkeys((r["task"], r["method"]) for r in conv):
        pairs = [(by_key[(r["task"], r["method"], r["seed"])], r) for r in conv
                 if (r["task"], r["method"]) == (task, method)]  # fmt: skip
        for base, r in pairs:
            out.append(f"| {method} | {task} | {r['seed']} | {base['epochs']} | "
                       f"{base['test_top1']:.1f} | {r['epochs']} | {r['test_top1']:.1f} | "
                       f"{r['test_top1'] - base['test_top1']:+.1f} |")  # fmt: skip
        if len(pairs) > 1:
            b = sum(p[0]["test_top1"] for p in pairs) / len(pairs)
            d = sum(p[1]["test_top1"] for p in pairs) / len(pairs)
            out.append(f"| **{method}** | {task} | mean | {pairs[0][0]['epochs']} | {b:.1f} | "
                       f"{pairs[0][1]['epochs']} | {d:.1f} | **{d - b:+.1f}** |")  # fmt: skip
    return out


def _defaults_section(rows, grid) -> list[str]:
    """val200 top-1 per method, task and grid point: where the default learning rates come from.

    Each cell lists the tasks in order ("a / b"); a blank cell is outside that method's grid.
    The best multiple is the one with the highest mean over the tasks (ties: the one nearest x1),
    given once every cell of the row has run; the last column is the default the code uses now,
    so a reader can check that it is the base times the best multiple.
    """
    from adaptformer.training.config import DEFAULT_BLR

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    out = ["**Default learning rates.** The protocol's tuning phase (train800 -> val200, seed 0): "
           f"val200 top-1 on {' / '.join(tasks)} for each multiple of a first-guess base lr "
           "(per 256 images); the grid went on upwards while its largest multiple scored best. "
           "`adaptformer train` "
           "uses the default blr when no `--lr`/`--blr` is given:", "",
           "| method | base blr | " + " | ".join(f"x{g:g}" for g in grid)
           + " | best | default blr |",
           "|---|---:|" + "---:|" * (len(grid) + 2)]  # fmt: skip
    for spec in dict.fromkeys(r["method"] for r in rows):
        by_task = {r["task"]: r for r in rows if r["method"] == spec}
        first = next(iter(by_task.values()))
        base, own = first["base_blr"], first.get("grid", grid)
        cells, means = [], []
        for g in grid:
            if g not in own:
                cells.append("")
                continue
            key = f"{base * g:.3g}"
            vals = [by_task[t]["val200_top1"].get(key) if t in by_task else None for t in tasks]
            cells.append(" / ".join("–" if v is None else f"{v:.1f}" for v in vals))
            means.append(None if None in vals else sum(vals) / len(vals))
        best = f"x{_best_multiple(own, means):g}" if None not in means else ""
        default = DEFAULT_BLR["adamw"].get(spec.split("-")[0])
        out.append(f"| {spec} | {base:g} | " + " | ".join(cells)
                   + f" | {best} | {'' if default is None else f'{default:g}'} |")  # fmt: skip
    return out


def _best_multiple(grid, means) -> float:
    """The multiple with the highest mean; a tie keeps the one nearest the current default
    (x1): there is no evidence to move it."""
    return max(zip(grid, means, strict=True), key=lambda gm: (gm[1], -abs(math.log(gm[0]))))[0]


def _plot(summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["natural", "specialized", "structured", "mean"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(len(summary), 1)
    for i, s in enumerate(summary):
        vals = [s["groups"].get(g, 0.0) for g in groups[:3]] + [s["mean"]]
        ax.bar([j + i * width for j in range(len(groups))], vals, width, label=s["method"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("VTAB-lite (5 VTAB-1k tasks), ViT-S/14 at 112 px")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=BACKBONE)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "vtab-lite",
                    help="run folders and the unpacked data (default: runs/vtab-lite)")  # fmt: skip
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--report", action="store_true", help="only rebuild the results files")
    ap.add_argument(
        "--partial",
        action="store_true",
        help="with --report --sections defaults: report the sweep's finished runs so far",
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                    help="run and report only these methods (default: all)")  # fmt: skip
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), choices=SEEDS,
                    help="table: run and report only these seeds; the committed rows of the "
                    "others stay (e.g. --methods lora-8 --seeds 1 adds one method's second seed)")  # fmt: skip
    ap.add_argument("--plan", action="store_true", help="print the estimated time and stop")
    ap.add_argument("--update-docs", action="store_true")
    args = ap.parse_args()
    if args.plan:
        hours = plan([m for m in METHODS if m in args.methods])
        print(json.dumps({k: round(v, 2) for k, v in hours.items()}), "hours on 2 cores")
        return
    data = ensure_data(args.work / "data")
    ck = args.checkpoint.resolve()
    w = args.work
    methods = [m for m in METHODS if m in args.methods]
    sweep_methods = sweep_methods_of(methods)
    units: list[list[str]] = []
    if "defaults" in args.sections:
        units += [vtab_command(data, w / "sweep", ck, [t], [m], (0,), SWEEP_GRID[m],
                               tune_only=True, blr=SWEEP_BASE_BLR[_kind(m)])
                  for m in sweep_methods for t in SWEEP_TASKS]  # fmt: skip
    if "table" in args.sections:
        units += table_units(data, w / "runs", ck, methods, tuple(args.seeds))
    if "convergence" in args.sections:
        units += [vtab_command(data, w / "convergence", ck, [CONVERGENCE_TASK], [m], SEEDS,
                               (1.0,), epochs=2 * EPOCHS) for m in DECIDING]  # fmt: skip
    if "precision" in args.sections:
        units.append(vtab_command(data, w / "fp32", ck, [CONVERGENCE_TASK], ["adaptformer-64"],
                                  (0,), (1.0,), precision="fp32"))  # fmt: skip
    if not args.report:
        run_queue(units, w / "logs")
    command = "python benchmarks/vtab_lite.py"
    if list(args.sections) != list(SECTIONS):
        command += f" --sections {' '.join(args.sections)}"
    if methods != list(METHODS):
        command += f" --methods {' '.join(methods)}"
    record = RESULTS / "vtab_lite.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    # --report runs nothing: the date and machine stay those of the runs it reports
    here = previous["machine"] if args.report and "machine" in previous else machine()
    result: dict[str, Any] = {"machine": here, "common": COMMON, "lr_grid": LR_GRID}
    if tuple(args.seeds) != SEEDS:
        command += f" --seeds {' '.join(map(str, args.seeds))}"
    if "table" in args.sections:  # the header's command is the one that made the table
        result["command"] = command + " --update-docs"
        if (methods != list(METHODS) or tuple(args.seeds) != SEEDS) and "command" in previous:
            result["command"] = f"{previous['command']}, then {result['command']}"  # a part again
    if "defaults" in args.sections:
        result["sweep"] = sweep_so_far(data, w / "sweep", ck, sweep_methods)
        result["sweep_runs"] = sum(len(r["val200_top1"]) for r in result["sweep"])
        result["sweep_planned"] = len(SWEEP_TASKS) * sum(len(SWEEP_GRID[m]) for m in sweep_methods)
        if result["sweep_runs"] < result["sweep_planned"] and not args.partial:
            raise SystemExit(f"the sweep in {w / 'sweep'} has not finished "
                             f"({result['sweep_runs']} of {result['sweep_planned']} runs); rerun "
                             "without --report, or report it so far with --partial")  # fmt: skip
    if "table" in args.sections:
        rows = (
            collect(data, w / "runs", ck, TASKS, methods, (0,), (1.0,)) if 0 in args.seeds else []
        )
        twice = [m for m in TWO_SEEDS if m in methods]
        if twice and any(s in args.seeds for s in SEEDS[1:]):
            rows += collect(data, w / "runs", ck, TASKS, twice,
                            tuple(s for s in SEEDS[1:] if s in args.seeds), (1.0,))  # fmt: skip
        partial = methods != list(METHODS) or tuple(args.seeds) != SEEDS
        result["rows"] = merge_table_rows(previous.get("rows", []), rows) if partial else rows
    if "convergence" in args.sections:
        result["convergence"] = collect(data, w / "convergence", ck, [CONVERGENCE_TASK],
                                        DECIDING, SEEDS, (1.0,), epochs=2 * EPOCHS)  # fmt: skip
    if "precision" in args.sections:
        result["fp32"] = collect(data, w / "fp32", ck, [CONVERGENCE_TASK], ["adaptformer-64"],
                                 (0,), (1.0,), precision="fp32")  # fmt: skip
        times = RESULTS / "vtab_lite_step_times.json"
        if not args.report or not times.is_file():
            times.write_text(json.dumps({"machine": machine(), "rows": step_times(ck, data)},
                                        indent=2) + "\n")  # fmt: skip
        result["step_times"] = json.loads(times.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    merged = {**previous, **result}
    record.write_text(json.dumps(merged, indent=2) + "\n")
    markdown = render(merged, RESULTS)
    (RESULTS / "vtab_lite.md").write_text(markdown + "\n")
    print(markdown)
    if args.update_docs:
        update_docs(markdown, ROOT / "docs" / "results.md", "vtab-lite", images=RESULTS)


if __name__ == "__main__":
    main()
