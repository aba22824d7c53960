"""``adaptformer predict --run DIR FILES...``: top-k labels for image files."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k labels of image files with a trained run")
    p.add_argument("--run", required=True, help="run folder written by `adaptformer train`")
    p.add_argument("files", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default: 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import build_eval_transform
    from ..data.safe import load_image
    from ..runner import load_run, resolve_device

    device = resolve_device(args.device)
    cfg, model, meta = load_run(args.run, device)
    tf = build_eval_transform(cfg.img_size, meta["mean"], meta["std"], meta["interpolation"])
    classes = meta["classes"]
    k = min(args.top_k, len(classes))
    for path in args.files:
        x = tf(load_image(path)).unsqueeze(0).to(device)
        with torch.no_grad():
            logits = model(x)[0].float()
        probs = logits.sigmoid() if meta.get("multilabel") else logits.softmax(0)
        top = probs.topk(k)
        ranked = [
            (classes[i], round(p, 4))
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
        if args.json:
            print(json.dumps({"file": path, "top": ranked}))
        else:
            print(f"{path}: " + ", ".join(f"{c} ({p:.3f})" for c, p in ranked))
    return 0
