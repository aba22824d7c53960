"""``adaptformer eval --run DIR``: score a finished run on its test split again."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="re-evaluate a run folder on its test split")
    p.add_argument("--run", required=True, help="run folder written by `adaptformer train`")
    p.add_argument("--data-root", help="where the data set is now (default: the run's)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--workers", type=int, default=2, help="data loading workers (default: 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.modality import modality_of
    from ..training.run_folder import load_run
    from ..utils import distributed
    from ..utils.distributed import resolve_device

    device = resolve_device(args.device)
    cfg, model, meta = load_run(args.run, device)
    if args.data_root:
        cfg.data_root = args.data_root
    modality = modality_of(cfg)
    data = modality.build_data(cfg, {k: meta[k] for k in ("mean", "std", "interpolation")})
    metrics = modality.evaluate(model, data.test, cfg, device, distributed.DistInfo(), "test",
                                False, args.batch_size or cfg.batch_size, args.workers)  # fmt: skip
    (Path(args.run) / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0
