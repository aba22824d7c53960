"""``adaptformer predict``: top-k labels for image files, from one run or many registry tasks.

``--run DIR`` answers that run's task. ``--tasks a,b,c`` answers every listed registry task for
each image: the backbone is loaded once and each batch of files takes one backbone pass
(:func:`adaptformer.serving.multitask.forward_all_tasks`).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k labels of image files with a run or registry tasks")
    p.add_argument("--run", help="run folder written by `adaptformer train` (one task)")
    p.add_argument(
        "--tasks", help="comma-separated registry tasks to answer for every image, or all"
    )
    p.add_argument("--registry", help="registry folder for --tasks (default: the user registry)")
    p.add_argument(
        "files", nargs="+", help="image files, or folders (their images, sorted, not recursive)"
    )
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default: 5)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="images per backbone pass with --tasks (default: 16)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.tasks):
        raise ValueError(
            "pass either --run RUN_DIR (that run's task) or --tasks a,b,c (registry tasks)"
        )
    if args.top_k < 1 or args.batch_size < 1:
        raise ValueError("--top-k and --batch-size must be positive integers")
    args.files = image_files(args.files)
    return _run_tasks(args) if args.tasks else _run_one(args)


def image_files(paths: list[str]) -> list[str]:
    """``paths`` with each folder replaced by its image files (by extension, sorted); a folder
    without images is an error rather than a silent empty answer."""
    from pathlib import Path

    from torchvision.datasets.folder import IMG_EXTENSIONS

    files: list[str] = []
    for path in paths:
        if not Path(path).is_dir():
            files.append(path)
            continue
        found = sorted(str(p) for p in Path(path).iterdir()
                       if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))  # fmt: skip
        if not found:
            raise ValueError(f"folder {path} holds no image files ({', '.join(IMG_EXTENSIONS)})")
        files += found
    return files


def _ranked(logits, meta: dict, k: int) -> list[tuple[str, float]]:
    from ..serving.multitask import top_k
    from ..serving.store import class_names

    classes = class_names(meta, logits.shape[-1])
    return [(classes[i], round(p, 4)) for i, p in top_k(logits, k, bool(meta.get("multilabel")))]


def _text(ranked: list[tuple[str, float]]) -> str:
    return ", ".join(f"{c} ({p:.3f})" for c, p in ranked)


def _run_one(args: argparse.Namespace) -> int:
    import torch

    from ..data import build_eval_transform
    from ..data.safe import load_image
    from ..training.run_folder import load_run
    from ..utils.distributed import resolve_device

    device = resolve_device(args.device)
    cfg, model, meta = load_run(args.run, device)
    if meta.get("video"):
        raise ValueError(
            f"{args.run} is a video run; `predict` takes images. Score videos with "
            "`adaptformer eval --run RUN` on a video list"
        )
    tf = build_eval_transform(cfg.img_size, meta["mean"], meta["std"], meta["interpolation"])
    for path in args.files:
        x = tf(load_image(path)).unsqueeze(0).to(device)
        with torch.no_grad():
            logits = model(x)[0]
        ranked = _ranked(logits, meta, args.top_k)
        if args.json:
            print(json.dumps({"file": path, "top": ranked}))
        else:
            print(f"{path}: {_text(ranked)}")
    return 0


def _run_tasks(args: argparse.Namespace) -> int:
    import torch

    from ..data import build_eval_transform
    from ..data.safe import load_image
    from ..serving.multitask import forward_all_tasks
    from ..serving.store import TaskRegistry
    from ..utils.distributed import resolve_device

    reg = TaskRegistry(args.registry)
    names = list(dict.fromkeys(t for t in args.tasks.split(",") if t))
    if names == ["all"]:  # as `serve` takes it
        names = reg.names()
    if not names:
        raise ValueError("--tasks needs at least one task name (or all), e.g. --tasks a,b")
    device = resolve_device(args.device)
    model = reg.build_model(names, device)
    meta = {t: reg.metadata(t) for t in names}
    b = reg.backbone
    tf = build_eval_transform(b["img_size"], b["mean"], b["std"], b["interpolation"])
    for start in range(0, len(args.files), args.batch_size):
        files = args.files[start : start + args.batch_size]
        x = torch.stack([tf(load_image(f)) for f in files]).to(device)
        with torch.no_grad():
            logits = forward_all_tasks(model, x, names)
        for i, path in enumerate(files):
            answers = {t: _ranked(logits[t][i], meta[t], args.top_k) for t in names}
            if args.json:
                print(json.dumps({"file": path, "tasks": answers}))
            else:
                for t, ranked in answers.items():
                    print(f"{path} [{t}]: {_text(ranked)}")
    return 0
