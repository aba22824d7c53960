"""``adaptformer tasks add|list|remove``: the registry of tasks that share one backbone."""

from __future__ import annotations

import argparse
import json


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--registry",
        help="registry folder (default: $ADAPTFORMER_TASKS or ~/.cache/adaptformer/tasks)",
    )
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tasks", help="register trained runs as tasks of one shared backbone (add, list, remove)"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = _common()
    add = actions.add_parser("add", parents=[common], help="copy a run's adapter in as task NAME")
    add.add_argument("name", help="task name: letters, digits, '-' and '_'")
    add.add_argument("run_dir", help="run folder written by `adaptformer train`")
    add.add_argument("--replace", action="store_true", help="overwrite an existing task NAME")
    ls = actions.add_parser("list", parents=[common], help="the registered tasks and backbone")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rm = actions.add_parser("remove", parents=[common], help="delete task NAME")
    rm.add_argument("name", help="the task to delete")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serving.store import TaskRegistry

    reg = TaskRegistry(args.registry)
    if args.action == "add":
        info = reg.add(args.name, args.run_dir, replace=args.replace)
        print(
            f"added task {info.name} ({info.method}, {info.num_classes} classes, "
            f"{info.bytes:,} bytes) to {reg.root}"
        )
    elif args.action == "remove":
        reg.remove(args.name)
        print(f"removed task {args.name} from {reg.root}")
    else:
        _print_list(reg, args.json)
    return 0


def _print_list(reg, as_json: bool) -> None:
    tasks = reg.list()
    backbone = reg.backbone
    if as_json:
        rows = [t.__dict__ for t in tasks]
        print(json.dumps({"root": str(reg.root), "backbone": backbone, "tasks": rows}, indent=2))
        return
    if backbone is None:
        print(f"no tasks in {reg.root}")
        return
    print(
        f"{reg.root}: backbone {backbone['model']} "
        f"(sha256 {backbone['backbone_sha256'][:12]}, {backbone['img_size']} px)"
    )
    print(f"{'task':<20} {'method':<12} {'classes':>7} {'bytes':>12}  source")
    for t in tasks:
        if t.problem:  # listed, not hidden: `serve` skips it until it is replaced
            print(f"{t.name:<20} BROKEN: {t.problem}")
            continue
        print(f"{t.name:<20} {t.method:<12} {t.num_classes:>7} {t.bytes:>12,}  {t.source}")
