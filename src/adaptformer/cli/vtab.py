"""``adaptformer vtab``: the VTAB-1k protocol (tune on train800/val200, then train800val200/test)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.config import TrainConfig, read_yaml
from .options import add_dataclass_flags, given


def register(sub: argparse._SubParsersAction) -> None:
    from ..training.vtab import PROTOCOL_DEFAULTS, PROTOCOL_FIELDS

    p = sub.add_parser(
        "vtab",
        help="run the VTAB-1k protocol for tasks x methods (resumable) and print the table",
        description="For each task and method: train on train800 and score val200 once per "
        "learning rate of --lr-grid, keep the best, then train on train800val200 and score "
        "test once per seed. Rerun the same command to resume. Other options are `train`'s.",
    )
    p.add_argument("--root", required=True, help="folder with one VTAB-1k task per sub-folder")
    p.add_argument("--tasks", nargs="+", help="task folders (default: every task below --root)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["linear", "adaptformer-64"],
        help="method specs: linear, full, bitfit, adaptformer-R, adapter_plus-R, houlsby-R, "
        "pfeiffer-R (bottleneck R), lora-R (rank R), vpt-N (N prompts); a bare name takes its "
        "own default size (default: linear adaptformer-64)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="final-run seeds (default: 0)")
    p.add_argument(
        "--lr-grid",
        nargs="+",
        type=float,
        default=[0.3, 1.0, 3.0],
        help="multipliers of each method's default base lr (or of --blr) tried on val200 "
        "(default: 0.3 1 3)",
    )
    p.add_argument(
        "--tune-only",
        action="store_true",
        help="only the tuning phase: val200 top-1 per method and learning rate",
    )
    p.add_argument("--output", default="runs/vtab", help="folder of all runs (default: runs/vtab)")
    p.add_argument("--config", help="YAML file of train options (flags override it)")
    add_dataclass_flags(p, TrainConfig, skip=PROTOCOL_FIELDS, defaults=PROTOCOL_DEFAULTS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.vtab import PROTOCOL_FIELDS, Protocol, format_table, run_protocol

    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder of VTAB-1k tasks")
    tasks = args.tasks or sorted(d.name for d in root.iterdir() if (d / "test.txt").is_file())
    if not tasks:
        raise FileNotFoundError(f"--root {root} holds no task folder with a test.txt")
    base = read_yaml(args.config) if args.config else {}
    base.update(given(args, TrainConfig))
    base = {k: v for k, v in base.items() if k not in PROTOCOL_FIELDS}  # the protocol sets them
    protocol = Protocol(
        root=root,
        tasks=tuple(tasks),
        methods=tuple(args.methods),
        seeds=tuple(args.seeds),
        lr_grid=tuple(args.lr_grid),
        output=Path(args.output),
        base=base,
        tune_only=args.tune_only,
    )
    rows = run_protocol(protocol, report=lambda line: print(line, flush=True))
    if args.tune_only:
        print(json.dumps(rows, indent=2))
        return 0
    table = format_table(rows)
    (protocol.output / "table.md").write_text(table + "\n")
    print(table)
    print(f"\nresults: {protocol.output / 'results.json'} (table: {protocol.output / 'table.md'})")
    return 0
