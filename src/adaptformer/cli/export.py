"""``adaptformer export``: a run (one task) or registry tasks (several) to ONNX or TorchScript."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export an adapted model to ONNX/TorchScript, checked against PyTorch",
        description="One task (--run) exports as image -> logits. Several registry tasks "
        "(--tasks) export as (image, task_index) -> logits padded with -inf, task_index being "
        "the position in --tasks.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by `adaptformer train` (one task)")
    source.add_argument("--tasks", help="comma-separated registry tasks, e.g. a,b,c")
    p.add_argument("--registry", help="registry folder for --tasks (default: the user registry)")
    p.add_argument(
        "--format",
        choices=["onnx", "torchscript"],
        default="onnx",
        help="output format (default: onnx)",
    )
    p.add_argument("--out", help="output file (default: RUN/model.onnx|.pt or ./tasks.onnx|.pt)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |exported - PyTorch| logit difference (default: 1e-4)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.preprocess import eval_recipe
    from ..serving.export import export_model
    from ..serving.store import TaskRegistry
    from ..training.run_folder import TASK, load_run

    if args.run and args.registry:
        raise ValueError("--registry goes with --tasks; --run exports that run's own task")
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    if args.run:
        cfg, model, meta = load_run(args.run)
        names, img_size, stats = [TASK], cfg.img_size, meta
        metadata = {"classes": {TASK: meta.get("classes")}}
        out = args.out or str(Path(args.run) / f"model{suffix}")
    else:
        reg = TaskRegistry(args.registry)
        names = [t for t in args.tasks.split(",") if t]
        if not names:
            raise ValueError("--tasks needs at least one task name, e.g. --tasks a,b")
        model = reg.build_model(names)
        img_size, stats = reg.backbone["img_size"], reg.backbone
        metadata = {"classes": {t: reg.metadata(t).get("classes") for t in names}}
        out = args.out or f"tasks{suffix}"
    metadata |= {k: stats.get(k) for k in ("mean", "std", "interpolation")}
    # Every step and number of the evaluation preprocessing, for code without adaptformer.
    metadata["preprocess"] = eval_recipe(img_size, stats["mean"], stats["std"],
                                         stats["interpolation"])  # fmt: skip
    result = export_model(
        model,
        out,
        args.format,
        tasks=names,
        img_size=img_size,
        verify=not args.no_verify,
        tolerance=args.tolerance,
        metadata=metadata,
    )
    report = {k: v for k, v in result.to_dict().items() if k != "info"}
    print(json.dumps(report))
    return 0
