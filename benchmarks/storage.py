"""Bytes on disk for N tasks: one backbone + N adapter folders vs N fully fine-tuned models.

Every number is the size of real files this script writes into a temporary folder with the
library's own writers (``save_adapter``; a ``full`` task's file holds the whole backbone plus
its head, which is what ``adaptformer train --method full`` saves). The shared backbone is
written once, as fp32 safetensors, like the fine-tuned copies. Rows for N <= ``--max-tasks``
sum the files actually written; the last row scales the measured per-task size and says so::

    python benchmarks/storage.py
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

import adaptformer as af
from adaptformer.adapters.trainable import backbone_parameters

_log = logging.getLogger("benchmarks.storage")
ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ROOT.parent / "shared" / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"
METHODS = {
    "adaptformer-64": af.AdapterConfig(bottleneck=64),
    "lora-8": af.AdapterConfig(method="lora", bottleneck=8),
    "vpt-1 (deep)": af.AdapterConfig(method="vpt", prompt_tokens=1),
    "linear": af.AdapterConfig(method="linear"),
    "full fine-tune": af.AdapterConfig(method="full"),
}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(args: argparse.Namespace, tmp: Path) -> dict:
    model = af.create_backbone("vit_small_patch14_dinov2", checkpoint=args.checkpoint, img_size=224)
    backbone_file = tmp / "backbone.safetensors"
    save_file(
        {k: p.detach().contiguous() for k, p in backbone_parameters(model).items()},
        str(backbone_file),
    )
    backbone = backbone_file.stat().st_size
    backbone_params = sum(p.numel() for p in backbone_parameters(model).values())
    per_task: dict[str, list[int]] = {}
    params: dict[str, int] = {}
    for label, cfg in METHODS.items():
        name = label.split()[0].replace("-", "_")
        af.inject(model, cfg, name=name, num_classes=args.classes)
        params[label] = sum(p.numel() for p in af.adapter_parameters(model, name).values()) + sum(
            p.numel() for p in af.get_head(model, name).parameters()
        )
        if cfg.method == "full":
            params[label] += sum(p.numel() for p in backbone_parameters(model).values())
        sizes = []
        for i in range(args.max_tasks):  # N real folders per method
            folder = af.save_adapter(model, tmp / label / f"task{i}", name)
            sizes.append(folder_bytes(folder))
        per_task[label] = sizes
        af.delete_adapter(model, name)
        _log.info("%s: %d bytes per task", label, sizes[0])
    counts = sorted({1, 2, 4, args.max_tasks})
    table = []
    for n in counts:
        row = {"tasks": n, "measured": True}
        for label, sizes in per_task.items():
            total = sum(sizes[:n])
            row[label] = total if label == "full fine-tune" else backbone + total
        table.append(row)
    extra = {"tasks": args.extrapolate, "measured": False}
    for label, sizes in per_task.items():
        total = sizes[0] * args.extrapolate
        extra[label] = total if label == "full fine-tune" else backbone + total
    table.append(extra)
    return {
        "backbone_bytes": backbone,
        "backbone_params": backbone_params,
        "per_task_bytes": {k: v[0] for k, v in per_task.items()},
        "per_task_params": params,
        "table": table,
    }


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def markdown(report: dict) -> str:
    labels = list(METHODS)
    lines = [
        "# Storage: N tasks on one backbone vs N fully fine-tuned models",
        "",
        f"- command: `{report['command']}`",
        f"- {report['date']}; backbone ViT-S/14 (DINOv2 architecture) at 224 px, "
        f"{report['backbone_params']:,} parameters; {report['classes']}-class heads; "
        "fp32 safetensors throughout",
        f"- shared backbone file, written once: {report['backbone_bytes']:,} bytes "
        f"({mib(report['backbone_bytes'])})",
        "",
        "Per task (adapter folder: `adapter_config.json` + `adapter_model.safetensors`):",
        "",
        "| method | parameters per task | bytes per task |",
        "|---|---|---|",
    ]
    for label in labels:
        lines.append(
            f"| {label} | {report['per_task_params'][label]:,} "
            f"| {report['per_task_bytes'][label]:,} ({mib(report['per_task_bytes'][label])}) |"
        )
    lines += [
        "",
        "Total bytes for N tasks (adapter methods include the one shared backbone file):",
        "",
        "| N | " + " | ".join(labels) + " | full / adaptformer-64 |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for row in report["table"]:
        n = f"{row['tasks']}" + ("" if row["measured"] else " (scaled, not written)")
        ratio = row["full fine-tune"] / row["adaptformer-64"]
        lines.append(
            f"| {n} | " + " | ".join(mib(row[label]) for label in labels) + f" | {ratio:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=BACKBONE, help="ViT-S/14 safetensors")
    p.add_argument("--classes", type=int, default=100, help="classes per task head (default: 100)")
    p.add_argument("--max-tasks", type=int, default=8, help="tasks really written (default: 8)")
    p.add_argument("--extrapolate", type=int, default=100, help="scaled row (default: 100)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"{args.checkpoint} not found: pass --checkpoint PATH")
    with tempfile.TemporaryDirectory(prefix="adaptformer-storage-") as tmp:
        numbers = measure(args, Path(tmp))
    report = {
        "command": shlex.join(["python", "benchmarks/storage.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "classes": args.classes,
        **numbers,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "storage.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "storage.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
