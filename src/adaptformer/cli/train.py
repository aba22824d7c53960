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
        "`torchrun --nproc_per_node=N -m adaptformer train ...` runs DDP.",
    )
    p.add_argument("--config", help="YAML file of options (flags override it)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output exactly where its last checkpoint stopped",
    )
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = read_yaml(args.config) if args.config else {}
    values.update(given(args, TrainConfig))
    return TrainConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    from ..training.runner import fit

    summary = fit(config_from_args(args), resume=args.resume)
    if summary:
        folder = summary.pop("run_folder")
        print(json.dumps(summary, indent=2))
        # The last line says where the run is (stderr: stdout stays one JSON document).
        print(f"run folder: {folder}", file=sys.stderr)
    return 0
