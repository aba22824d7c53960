"""``adaptformer train``: fine-tune a backbone on a data set with AdaptFormer or a baseline."""

from __future__ import annotations

import argparse
import json
import sys

from ..training.config import TrainConfig, read_yaml
from .options import add_dataclass_flags, given


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a task (adapter + head) and write a run folder",
        description="Train with a YAML config (--config) and flag overrides; "
        "`torchrun --nproc_per_node=N -m adaptformer train ...` runs DDP. Given only --dataset "
        "and --data-root, a run is sized for a first try: on a CPU 112 px, fp32 and as many "
        "epochs as see about 6,000 training images (minutes on 2 cores), on a GPU 224 px, bf16 "
        "and about 300,000; --img-size, --epochs and --precision choose, and the paper's "
        "recipe (224 px, 100 epochs, SGD) is --config paper_image.",
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output exactly where its last checkpoint stopped",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build the model and data, print the plan (data, parameters, schedule) and stop "
        "without writing anything",
    )
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=run)


# Two options for one thing (the adapter width): a flag of one replaces the other's value
# from --config; both as flags is refused.
_WIDTH = ("bottleneck", "bottleneck_ratio")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = read_yaml(args.config) if args.config else {}
    flags = given(args, TrainConfig)
    named = [name for name in _WIDTH if flags.get(name) is not None]
    if len(named) > 1:
        raise ValueError(
            "--bottleneck and --bottleneck-ratio both set the adapter width: give one of them"
        )
    if named:
        values.update(dict.fromkeys(_WIDTH, None))
    values.update(flags)
    try:
        return TrainConfig.from_dict(values)
    except ValueError as e:
        if not args.config:
            raise
        raise ValueError(f"{e} (options from --config {args.config} and the flags)") from None


def run(args: argparse.Namespace) -> int:
    from ..training.runner import fit

    summary = fit(config_from_args(args), resume=args.resume, dry_run=args.dry_run)
    if summary:
        folder = summary.pop("run_folder")
        print(json.dumps(summary, indent=2))
        # The last line says where the run is (stderr: stdout stays one JSON document).
        print(f"run folder: {folder}", file=sys.stderr)
    return 0
