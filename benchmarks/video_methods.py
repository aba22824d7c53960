"""Every method on the motion benchmark, two seeds each, through the CLI.

The shared image backbone (DINOv2 ViT-S/14) is inflated to video by ``adaptformer train``
itself (it logs the inflation), so every row below is one plain ``adaptformer train`` command
per seed that anyone can rerun; this script only generates the data once, runs the commands in
turn and writes ``video_methods.{json,md}`` plus the table between the ``video-methods``
markers of ``docs/video.md``.

Resumable: a run whose folder holds ``summary.json`` is not run again, an interrupted one is
continued with ``--resume`` (from its last epoch, or from scratch if it died before its first
checkpoint), and the outputs are rewritten after every finished run, so a table that is still
being filled is always on disk (labelled partial). ``--report-only`` writes the table from the
finished runs without training anything.

Every method uses today's defaults (its AdamW base learning rate, a warm-up of a tenth of the
run, ties in validation top-1 broken by the lower validation loss), with the video recipe's
weight decay 0.05 and batch 16. Full fine-tuning appears twice: with the defaults (one learning
rate for the whole model) and with the parameter groups of video fine-tuning recipes, layer-wise
decay (``--layer-decay``) and a multiplier for the head and the inflated model's
zero-initialised ``time_embed`` (``--new-params-lr-scale``), the pair chosen on *validation*
top-1 (seed 0; ties: lower validation loss) among ``--full-grid``. The chosen pair then runs
with the second seed like every other row.

The data (``adaptformer make-motion-data``) are clips of a real Fashion-MNIST item travelling
around a square; the label is the heading of its first move and every clip's *set* of frames
is independent of the label, so an order-blind model (frame averaging) scores chance, 25%.
The fresh ``time_embed`` of the inflated model trains with every method (without it the
inflated model is order-blind); its 1,536 parameters are counted in "trainable".

Usage::

    python benchmarks/video_methods.py --update-docs
    python benchmarks/video_methods.py --print-commands    # the commands only
    python benchmarks/video_methods.py --report-only --update-docs   # table of finished runs
    python benchmarks/video_methods.py --directions 8 --update-docs  # the harder variant

The 8-direction variant (eight headings, chance 12.5%) is a table of its own: its runs go to
``runs/video-methods-8dir``, its outputs to ``video_methods_8dir.{json,md}`` and the
``video-methods-8dir`` markers of ``docs/video.md``, and its full fine-tuning grid is chosen
again on its own validation set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _docs import update_docs  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
# Paths are relative to the repository root (the commands run there), so the commands in the
# docs are exactly the ones that ran.
SHARED = Path("../shared")
BACKBONE = SHARED / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"
_log = logging.getLogger("video_methods")

# One recipe for everyone (AdamW at each method's default learning rate, cosine with the
# default warm-up, 1 clip x 3 crops at test).
COMMON = [
    "--dataset", "video-list", "--img-size", "56", "--num-frames", "8", "--sampling-rate", "1",
    "--tubelet-size", "2", "--no-flip", "--test-clips", "1", "--test-crops", "3",
    "--optimizer", "adamw", "--weight-decay", "0.05", "--batch-size", "16",
]  # fmt: skip
TUNED_FULL = "full fine-tuning, layer decay + new-parameter lr (chosen on val)"
# label -> (run folder, method flags); TUNED_FULL's flags come from the grid
METHODS: dict[str, tuple[str, list[str]]] = {
    "linear probe": ("linear", ["--method", "linear"]),
    "full fine-tuning (defaults)": ("full", ["--method", "full"]),
    TUNED_FULL: ("", []),
    "VPT-10 (deep)": ("vpt10", ["--method", "vpt", "--prompt-tokens", "10"]),
    "LoRA-8": ("lora8", ["--method", "lora", "--bottleneck", "8"]),
    "AdaptFormer-64": ("adaptformer64", ["--method", "adaptformer", "--bottleneck", "64"]),
    "Adapter+ (r 8)": ("adapter_plus", ["--method", "adapter_plus"]),
    "Houlsby (r 8)": ("houlsby", ["--method", "houlsby"]),
    "Pfeiffer (r 48)": ("pfeiffer", ["--method", "pfeiffer"]),
}  # fmt: skip
# (layer decay, new-parameter lr multiplier). Full fine-tuning's default lr at batch 16 is
# 2.5e-5; x1000 gives the head and time_embed the linear probe's own default (2.25e-2).
# The likeliest points first: on a contended CPU a partial table has them.
FULL_GRID = ((0.75, 100.0), (0.75, 1000.0), (0.75, 10.0))
# Run order: the comparison the table exists for first (full fine-tuning both ways and
# AdaptFormer, every seed; the default full fine-tuning last of them: it sat at chance before), then every other method with all its seeds, so a partial table says
# the most it can.
CORE = (TUNED_FULL, "AdaptFormer-64", "full fine-tuning (defaults)")


def grid_flags(point: tuple[float, float]) -> tuple[str, list[str]]:
    decay, scale = point
    return (f"full-ld{decay:g}-new{scale:g}",
            ["--method", "full", "--layer-decay", f"{decay:g}", "--new-params-lr-scale", f"{scale:g}"])  # fmt: skip


def variant(directions: int) -> str:
    """The suffix that keeps a variant's run folders, outputs and docs section apart."""
    return "" if directions == 4 else f"-{directions}dir"


def run_folder(args: argparse.Namespace, folder: str, seed: int) -> Path:
    return args.work / f"seed{seed}" / folder


def train_command(folder: str, flags: list[str], seed: int, args: argparse.Namespace) -> list[str]:
    """The exact ``adaptformer train`` command of one run."""
    return [
        "adaptformer", "train", "--data-root", str(args.data), "--checkpoint", str(args.checkpoint),
        *COMMON, "--epochs", str(args.epochs), "--seed", str(seed), *flags,
        "--out", str(run_folder(args, folder, seed)),
    ]  # fmt: skip


def data_command(args: argparse.Namespace) -> list[str]:
    return ["adaptformer", "make-motion-data", "--out", str(args.data),
            "--source-root", str(SHARED / "data"), "--seed", str(args.data_seed),
            "--directions", str(args.directions)]  # fmt: skip


def read_summary(args: argparse.Namespace, folder: str, seed: int) -> dict[str, Any] | None:
    out = ROOT / run_folder(args, folder, seed)
    if not (out / "summary.json").is_file():
        return None
    summary = json.loads((out / "summary.json").read_text())
    wall = out / "wall_seconds.txt"
    summary["wall_seconds"] = float(wall.read_text()) if wall.is_file() else None
    summary["time_embed_max"] = time_embed_max(out / "adapter_model.safetensors")
    return summary


def time_embed_max(task_file: Path) -> float | None:
    """The largest entry of the kept ``time_embed`` (it starts at zero): how far the run moved
    the only tensor that tells the inflated model's time steps apart."""
    if not task_file.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(task_file), "pt") as f:
        keys = [k for k in f.keys() if k.endswith("time_embed")]  # noqa: SIM118 (no __iter__)
        return float(f.get_tensor(keys[0]).abs().max()) if keys else None


def train(folder: str, flags: list[str], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one command unless its summary exists; continue it if it was interrupted."""
    summary = read_summary(args, folder, seed)
    if summary is not None:
        return summary
    out = ROOT / run_folder(args, folder, seed)
    cmd = train_command(folder, flags, seed, args)
    # A folder with config.yaml is a started run: --resume continues it (from scratch if it
    # died before its first checkpoint); any other leftover would make `train` refuse.
    resume = ["--resume"] if (out / "config.yaml").is_file() else []
    _log.info("seed %d %s: %s%s", seed, folder, shlex.join(cmd), " --resume" if resume else "")
    start = time.time()
    subprocess.run(cmd + resume, check=True, cwd=ROOT)
    wall = out / "wall_seconds.txt"
    previous = float(wall.read_text()) if wall.is_file() else 0.0  # a resumed run adds up
    wall.write_text(f"{previous + time.time() - start:.1f}\n")
    summary = read_summary(args, folder, seed)
    assert summary is not None
    return summary


def chosen_grid_point(grid: dict[str, dict[str, Any] | None]) -> str | None:
    """The grid folder with the best seed-0 validation top-1 (ties: lower validation loss),
    once every point has finished; None before."""
    if not grid or any(s is None for s in grid.values()):
        return None
    return max(grid, key=lambda k: (grid[k]["val_top1"], -grid[k]["val_loss"]))


def plan(args: argparse.Namespace) -> list[tuple[str, str, list[str], int]]:
    """(label, folder, flags, seed) of every run still knowable, in run order. The tuned full
    fine-tuning's other seeds are only known once the grid (first seed) has finished."""
    points = [grid_flags(p) for p in args.full_grid]
    first, others = args.seeds[0], args.seeds[1:]
    core = [m for m in CORE if m in args.methods]
    order = [(m, first) for m in core] + [(m, s) for s in others for m in core]
    order += [(m, s) for m in args.methods if m not in core for s in args.seeds]
    runs: list[tuple[str, str, list[str], int]] = []
    later: list[tuple[str, str, list[str], int]] = []
    for label, seed in order:
        if label != TUNED_FULL:
            runs.append((label, *METHODS[label], seed))
        elif seed == first:  # the likeliest point now, the others once every core row has one seed
            runs.append((f"grid {points[0][0]}", *points[0], seed))
            later = [(f"grid {folder}", folder, flags, seed) for folder, flags in points[1:]]
        else:
            runs += later  # the rest of the grid, before the tuned row's other seeds
            later = []
            best = chosen_grid_point({f: read_summary(args, f, first) for f, _ in points})
            if best is not None:
                runs.append((label, best, dict(points)[best], seed))
    return runs + later


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Every finished run: rows[label][seed] = summary, grid[folder] = seed-0 summary."""
    points = dict(grid_flags(p) for p in args.full_grid)
    grid = {f: read_summary(args, f, args.seeds[0]) for f in points}
    best = chosen_grid_point(grid)
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for label in args.methods:
        folder, flags = (best, points[best]) if label == TUNED_FULL and best else METHODS[label]
        if not folder:  # the tuned full fine-tuning before its grid has finished
            rows[label] = {}
            continue
        seeds = {s: read_summary(args, folder, s) for s in args.seeds}
        rows[label] = {s: v | {"command": shlex.join(train_command(folder, flags, s, args))}
                       for s, v in seeds.items() if v is not None}  # fmt: skip
    return {"rows": rows, "grid": grid, "chosen": best,
            "grid_commands": {f: shlex.join(train_command(f, fl, args.seeds[0], args))
                              for f, fl in points.items()}}  # fmt: skip


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f} (1 seed)"
    return f"{mean:.1f} ± {(max(values) - min(values)) / 2:.1f}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def _per_seed(
    by_seed: dict[int, dict[str, Any]], seeds: tuple[int, ...], key: str, spec: str
) -> str:
    return " / ".join(_fmt(by_seed[k].get(key), spec) if k in by_seed else "-" for k in seeds)


def table(rows: dict[str, dict[int, dict[str, Any]]], seeds: tuple[int, ...]) -> str:
    """Mean test top-1 ± half the range over seeds, each seed's value, and the size."""
    lines = [
        "| method | trainable params | % of backbone | val top-1 | test top-1 | test per seed "
        f"({', '.join(str(s) for s in seeds)}) | max abs time_embed | task file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, by_seed in rows.items():
        if not by_seed:
            lines.append(f"| {label} | | | not run yet | | | | |")
            continue
        s = next(iter(by_seed.values()))
        per_seed = _per_seed(by_seed, seeds, "test_top1", "{:.1f}")
        lines.append(
            f"| {label} | {s['trainable_params']:,} | {s['trainable_percent']:.2f}% | "
            f"{_spread([v['val_top1'] for v in by_seed.values()])} | "
            f"{_spread([v['test_top1'] for v in by_seed.values()])} | {per_seed} | "
            f"{_per_seed(by_seed, seeds, 'time_embed_max', '{:.2g}')} | "
            f"{s['artifact_bytes'] / 2**20:.2f} MiB |"
        )
    return "\n".join(lines)


def grid_table(grid: dict[str, dict[str, Any] | None], chosen: str | None) -> str:
    lines = ["| run (seed 0) | val top-1 | val loss | test top-1 (not used to choose) "
             "| max abs time_embed |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for folder, s in grid.items():
        mark = " (chosen)" if folder == chosen else ""
        if s is None:
            lines.append(f"| {folder} | not run yet | | | |")
        else:
            lines.append(f"| {folder}{mark} | {s['val_top1']:.1f} | {s['val_loss']:.3f} | "
                         f"{s['test_top1']:.1f} | {_fmt(s.get('time_embed_max'), '{:.2g}')} |")  # fmt: skip
    return "\n".join(lines)


def report(results: dict[str, Any], args: argparse.Namespace, meta: dict) -> str:
    rows = results["rows"]
    done = sum(len(v) for v in rows.values()) + sum(
        1 for f, s in results["grid"].items() if s is not None and f != results["chosen"]
    )
    total = len(args.methods) * len(args.seeds) + len(results["grid"]) - 1
    status = (
        f"**Partial table: {done} of {total} runs finished** (the rest still to run; rerun the "
        "command to continue).\n\n"
        if done < total
        else ""
    )
    commands = "\n".join(v["command"] for by_seed in rows.values() for v in by_seed.values())
    grid_commands = "\n".join(results["grid_commands"].values())
    return (
        f"{status}Command: `{meta['command']}`  \n"
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, torch "
        f"{meta['machine']['torch']}; written {meta['machine']['date']}; load average "
        f"{meta['machine']['load_average']} (other jobs shared the CPU: wall times in the JSON "
        "are not speeds).\n\n"
        f"Data: `{shlex.join(meta['data_command'])}` (1,200 / 300 / 300 clips, 8 frames of "
        f"64 px, {args.directions} directions, chance {100 / args.directions:g}%). Backbone: the "
        "shared DINOv2 ViT-S/14 inflated to video (tubelet 2, 56 px: 4 x 4 x 4 = 64 tokens + "
        f"CLS). {args.epochs} epochs; seeds {', '.join(map(str, args.seeds))} (the training "
        "seed: initialisation, order, augmentation; the data are the same); test: 300 clips, 1 "
        "clip x 3 crops, scored once with the epoch chosen on validation. Val and test top-1: "
        "mean ± half the range over the seeds.\n\n"
        f"{table(rows, tuple(args.seeds))}\n\n"
        "Full fine-tuning's layer decay and new-parameter multiplier, chosen on validation "
        "top-1 (seed 0; ties: lower validation loss):\n\n"
        f"{grid_table(results['grid'], results['chosen'])}\n\n"
        "The rows are these commands (each writes its run folder with `summary.json`, "
        "`learning_curve.png` and the task file):\n\n"
        f"```bash\n{commands}\n```\n\nThe grid:\n\n```bash\n{grid_commands}\n```\n"
    )


def write_outputs(args: argparse.Namespace, started: float) -> str:
    from toolkit import machine_info

    results = collect(args)
    meta = {
        "command": "python benchmarks/video_methods.py " + shlex.join(args.argv),
        "machine": machine_info(),
        "data_command": data_command(args),
        "minutes_this_invocation": (time.time() - started) / 60,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    name = "video_methods" + variant(args.directions).replace("-", "_")
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, **results}, indent=2) + "\n")
    markdown = report(results, args, meta)
    (out / f"{name}.md").write_text(markdown)
    if args.update_docs:
        update_docs(
            markdown, ROOT / "docs" / "video.md", "video-methods" + variant(args.directions)
        )
    return markdown


def _grid_point(text: str) -> tuple[float, float]:
    decay, _, scale = text.partition(":")
    return float(decay), float(scale)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=BACKBONE, help="the image backbone file")
    p.add_argument("--work", type=Path,
                   help="run folders, relative to the repository root (default: "
                   "runs/video-methods, runs/video-methods-8dir with --directions 8)")  # fmt: skip
    p.add_argument("--data", type=Path, help="motion data folder (default: WORK/data)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated clips")
    p.add_argument("--directions", type=int, choices=(4, 8), default=4, help="motion classes")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--full-grid", type=_grid_point, nargs="+", default=list(FULL_GRID),
                   metavar="DECAY:SCALE", help="full fine-tuning's (layer decay, new-parameter "
                   "lr multiplier) pairs, chosen on validation")  # fmt: skip
    p.add_argument("--print-commands", action="store_true", help="print the commands and stop")
    p.add_argument("--report-only", action="store_true",
                   help="write the table of the finished runs, train nothing")  # fmt: skip
    p.add_argument("--update-docs", action="store_true", help="rewrite docs/video.md's table")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.work = args.work or Path("runs/video-methods" + variant(args.directions))
    args.data = args.data or args.work / "data"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.print_commands:
        print(shlex.join(data_command(args)))
        for _, folder, flags, seed in plan(args):
            print(shlex.join(train_command(folder, flags, seed, args)))
        return 0
    started = time.time()
    if not args.report_only:
        if not (ROOT / args.checkpoint).is_file():
            raise SystemExit(
                f"video_methods.py: backbone {args.checkpoint} not found (pass --checkpoint)"
            )
        if not (ROOT / args.data / "test.csv").is_file():
            subprocess.run(data_command(args), check=True, cwd=ROOT)
        while True:  # the plan grows once the grid has chosen (the tuned row's second seed)
            todo = [r for r in plan(args) if read_summary(args, r[1], r[3]) is None]
            if not todo:
                break
            _, folder, flags, seed = todo[0]
            train(folder, flags, seed, args)
            write_outputs(args, started)
    print(write_outputs(args, started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
