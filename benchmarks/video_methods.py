"""Linear probe, full fine-tuning, AdaptFormer and VPT on the motion benchmark, through the CLI.

The shared image backbone (DINOv2 ViT-S/14) is inflated to video by ``adaptformer train``
itself (it logs the inflation), so every row below is one plain ``adaptformer train`` command
that anyone can rerun; this script only generates the data once, runs the commands in turn
(skipping runs whose ``summary.json`` exists, so an interrupted table continues), and writes
``video_methods.{json,md}`` plus the table between the ``video-methods`` markers of
``docs/video.md``.

The data (``adaptformer make-motion-data``) are clips of a real Fashion-MNIST item travelling
around a square; the label is the heading of its first move and every clip's *set* of frames
is independent of the label, so an order-blind model (frame averaging) scores chance, 25%.
The fresh ``time_embed`` of the inflated model trains with every method (without it the
inflated model is order-blind); its 1,536 parameters are counted in "trainable".

Usage::

    python benchmarks/video_methods.py --update-docs
    python benchmarks/video_methods.py --print-commands    # the commands only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
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

# One recipe for everyone (AdamW, cosine, 1 warm-up epoch, 1 clip x 3 crops at test). The
# paper trains full fine-tuning with the same recipe as the adapters (lr 1e-3 here); the row at
# 1e-4 is the smaller lr usually given to a whole pretrained ViT.
COMMON = [
    "--dataset", "video-list", "--img-size", "56", "--num-frames", "8", "--sampling-rate", "1",
    "--tubelet-size", "2", "--no-flip", "--test-clips", "1", "--test-crops", "3",
    "--optimizer", "adamw", "--weight-decay", "0.05", "--warmup-epochs", "1",
    "--batch-size", "16",
]  # fmt: skip
# label -> (run folder, method flags)
METHODS: dict[str, tuple[str, list[str]]] = {
    "linear probe": ("linear", ["--method", "linear", "--lr", "1e-3"]),
    "full fine-tuning, lr 1e-3 (the paper's same recipe)": (
        "full-lr1e-3", ["--method", "full", "--lr", "1e-3"]),
    "full fine-tuning, lr 1e-4": ("full", ["--method", "full", "--lr", "1e-4"]),
    "VPT-10 (deep)": ("vpt10", ["--method", "vpt", "--prompt-tokens", "10", "--lr", "1e-3"]),
    "AdaptFormer-64": ("adaptformer64", ["--method", "adaptformer", "--bottleneck", "64",
                                         "--lr", "1e-3"]),
}  # fmt: skip


def train_command(label: str, args: argparse.Namespace) -> list[str]:
    """The exact ``adaptformer train`` command of one row."""
    return [
        "adaptformer", "train", "--data-root", str(args.data), "--checkpoint", str(args.checkpoint),
        *COMMON, "--epochs", str(args.epochs), "--seed", str(args.seed), *METHODS[label][1],
        "--out", str(args.work / METHODS[label][0]),
    ]  # fmt: skip


def data_command(args: argparse.Namespace) -> list[str]:
    return ["adaptformer", "make-motion-data", "--out", str(args.data),
            "--source-root", str(SHARED / "data"), "--seed", str(args.seed)]  # fmt: skip


def run(label: str, args: argparse.Namespace) -> dict[str, Any]:
    out = ROOT / args.work / METHODS[label][0]
    summary_file = out / "summary.json"
    if not summary_file.is_file():
        cmd = train_command(label, args)
        _log.info("%s: %s", label, shlex.join(cmd))
        start = time.time()
        resume = ["--resume"] if (out / "checkpoint.pt").is_file() else []
        subprocess.run(cmd + resume, check=True, cwd=ROOT)
        (out / "wall_seconds.txt").write_text(f"{time.time() - start:.1f}\n")
    summary = json.loads(summary_file.read_text())
    wall = out / "wall_seconds.txt"
    summary["wall_seconds"] = float(wall.read_text()) if wall.is_file() else None
    return summary


def table(rows: dict[str, dict[str, Any]]) -> str:
    """Accuracy and size per method (wall times are in the JSON: they depend on the load)."""
    lines = [
        "| method | trainable params | % of backbone | val top-1 | test top-1 | task file |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, s in rows.items():
        lines.append(
            f"| {label} | {s['trainable_params']:,} | {s['trainable_percent']:.2f}% | "
            f"{s['val_top1']:.1f} | {s['test_top1']:.1f} | {s['artifact_bytes'] / 2**20:.2f} MiB |"
        )
    return "\n".join(lines)


def report(rows: dict[str, dict[str, Any]], args: argparse.Namespace, meta: dict) -> str:
    commands = "\n".join(shlex.join(train_command(label, args)) for label in rows)
    return (
        f"Command: `{meta['command']}`  \n"
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, torch "
        f"{meta['machine']['torch']}; finished {meta['machine']['date']}; load average at the end "
        f"{meta['machine']['load_average']}.\n\n"
        f"Data: `{shlex.join(meta['data_command'])}` (1,200 / 300 / 300 clips, 8 frames of "
        "64 px, 4 directions, chance 25%). Backbone: the shared DINOv2 ViT-S/14 inflated to "
        f"video (tubelet 2, 56 px: 4 x 4 x 4 = 64 tokens + CLS). {args.epochs} epochs, seed "
        f"{args.seed}; test: 300 clips, 1 clip x 3 crops, scored once with the epoch chosen on "
        "validation.\n\n"
        f"{table(rows)}\n\n"
        "The rows are these commands, run one after the other (each writes its run folder with "
        "`summary.json`, `learning_curve.png` and the task file):\n\n"
        f"```bash\n{commands}\n```\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=BACKBONE, help="the image backbone file")
    p.add_argument("--work", type=Path, default=Path("runs/video-methods"),
                   help="run folders (relative paths: to the repository root)")  # fmt: skip
    p.add_argument("--data", type=Path, help="motion data folder (default: WORK/data)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--print-commands", action="store_true", help="print the commands and stop")
    p.add_argument("--update-docs", action="store_true", help="rewrite docs/video.md's table")
    args = p.parse_args(argv)
    args.data = args.data or args.work / "data"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.print_commands:
        print(shlex.join(data_command(args)))
        for label in args.methods:
            print(shlex.join(train_command(label, args)))
        return 0
    if not (ROOT / args.checkpoint).is_file():
        raise SystemExit(
            f"video_methods.py: backbone {args.checkpoint} not found (pass --checkpoint)"
        )
    if not (ROOT / args.data / "test.csv").is_file():
        subprocess.run(data_command(args), check=True, cwd=ROOT)
    start = time.time()
    rows = {label: run(label, args) for label in args.methods}
    from toolkit import machine_info

    meta = {
        "command": "python benchmarks/video_methods.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "data_command": data_command(args),
        "minutes": (time.time() - start) / 60,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    args.out = ROOT / args.out
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "video_methods.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    markdown = report(rows, args, meta)
    (args.out / "video_methods.md").write_text(markdown)
    if args.update_docs:
        update_docs(markdown, ROOT / "docs" / "video.md", "video-methods")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
