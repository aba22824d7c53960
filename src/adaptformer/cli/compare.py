"""``adaptformer compare``: finished runs side by side, as a table and one plot."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare finished runs: a table and a plot of val accuracy and loss per epoch",
        description="Read finished run folders (summary.json, metrics.jsonl) and print a table "
        "of method, trainable parameters, task-file size, val/test score, images/s and time; "
        "with --out, also write comparison.md, comparison.json and comparison.png there.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by `train`")
    p.add_argument("--out", help="folder for comparison.md / .json / .png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.compare import comparison_rows, comparison_table, read_run, write_comparison

    records = [read_run(folder) for folder in args.runs]
    if args.out:
        print(write_comparison(records, args.out))
        print(f"comparison.md, comparison.json and comparison.png in {args.out}")
    else:
        print(comparison_table(comparison_rows(records)))
    return 0
