"""Throughput of mixed-task batches: one backbone pass for 8 tasks vs a single task vs a loop.

On the real shared ViT-S/14 (DINOv2 architecture) with 8 random-initialised (non-zero) task
adapters, images/s of the same batch size run as:

- ``single``: one task, the plain model forward (``set_adapter`` + ``model(x)``), the baseline;
- ``single_routed``: the same batch through ``forward_tasks`` (cost of the routing itself);
- ``mixed``: 8 tasks shuffled in one batch through ``forward_tasks`` (one backbone pass);
- ``naive``: the per-task loop a user writes without it (``set_adapter`` + a pass per task).

Each scenario runs at every ``--sizes IMG:BATCH`` (default 224 px x 16 images, two per task,
and 56 px x 8 images, one per task, where fixed per-pass costs dominate). Modes run round-robin
in every repeat (the machine is shared, so load drifts); the median of the repeats is reported,
with the ratios to ``single``. Writes ``multitask.json`` and ``multitask.md`` under ``--out``::

    OMP_NUM_THREADS=1 python benchmarks/multitask.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch

import adaptformer as af

_log = logging.getLogger("benchmarks.multitask")
ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ROOT.parent / "shared" / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"
CLASSES = [10, 100, 37, 102, 10, 200, 47, 397]  # heads of different sizes, as real tasks have

# name -> list of task configs; every scenario has 8 tasks
SCENARIOS: dict[str, list[af.AdapterConfig]] = {
    "adaptformer-64 x 8": [af.AdapterConfig(bottleneck=64)] * 8,
    "mixed methods": [af.AdapterConfig(bottleneck=64)] * 4
    + [af.AdapterConfig(method="lora", bottleneck=8)] * 2
    + [af.AdapterConfig(method="vpt", prompt_tokens=1), af.AdapterConfig(method="linear")],
    # every bottleneck-adapter position in one batch, each preset at its published size
    "adapter family": [
        af.AdapterConfig(method=m) for m in ("adaptformer", "adapter_plus", "houlsby", "pfeiffer")
    ]
    * 2,
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build(checkpoint: Path, img_size: int, configs: list[af.AdapterConfig]) -> torch.nn.Module:
    model = af.create_backbone("vit_small_patch14_dinov2", checkpoint=checkpoint, img_size=img_size)
    for i, (cfg, classes) in enumerate(zip(configs, CLASSES, strict=True)):
        name = f"t{i}"
        af.inject(model, cfg, name=name, num_classes=classes)
        with torch.no_grad():  # non-zero adapters: zero-init ones would be a no-op to skip
            for p in af.adapter_parameters(model, name).values():
                p.normal_(0.0, 0.02)
    return model.eval()


def naive_loop(model: torch.nn.Module, x: torch.Tensor, tasks: list[str]) -> list[torch.Tensor]:
    """What one writes without mixed batches: a backbone pass per task, then reassemble."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(tasks)
    for name in sorted(set(tasks)):
        rows = [i for i, t in enumerate(tasks) if t == name]
        af.set_adapter(model, name)
        for i, logits in zip(rows, model(x[rows]), strict=True):
            out[i] = logits
    return out


def time_modes(modes: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        for fn in modes.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    names = list(modes)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            t0 = time.perf_counter()
            modes[name]()
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def run_scenario(
    args: argparse.Namespace, label: str, configs: list[af.AdapterConfig], img_size: int, b: int
) -> dict:
    torch.manual_seed(0)
    model = build(args.checkpoint, img_size, configs)
    names = [f"t{i}" for i in range(len(configs))]
    tasks = [names[i % len(names)] for i in range(b)]
    random.Random(0).shuffle(tasks)
    x = torch.randn(b, 3, img_size, img_size)

    def single():
        af.set_adapter(model, names[0])
        return model(x)

    modes = {
        "single": single,
        "single_routed": lambda: af.forward_tasks(model, x, [names[0]] * b),
        "mixed": lambda: af.forward_tasks(model, x, tasks),
        "naive": lambda: naive_loop(model, x, tasks),
    }
    with torch.inference_mode():
        mixed = af.forward_tasks(model, x, tasks).per_sample()
        loop = naive_loop(model, x, tasks)
        error = max((m - n).abs().max().item() for m, n in zip(mixed, loop, strict=True))
        _log.info("%s: mixed vs per-task max abs difference %.2e", label, error)
        seconds = time_modes(modes, args.repeats, args.warmup)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    ips = {k: b / v for k, v in median.items()}
    paired = {  # per-repeat ratios: robust to load drifting between repeats
        k: statistics.median(s / t for s, t in zip(seconds["single"], v, strict=True))
        for k, v in seconds.items()
    }
    result = {
        "scenario": label,
        "img_size": img_size,
        "batch_size": b,
        "tasks": [c.method for c in configs],
        "images_per_s": ips,
        "ratio_to_single": {k: ips[k] / ips["single"] for k in ips},
        "paired_ratio_to_single": paired,
        "seconds": seconds,
        "mixed_vs_loop_max_abs_error": error,
    }
    _log.info("%s: %s", label, {k: round(v, 2) for k, v in ips.items()})
    return result


def markdown(report: dict) -> str:
    lines = [
        "# Mixed-task batches: throughput",
        "",
        f"- command: `{report['command']}`",
        f"- machine: {report['machine']['cpu']}, nproc {report['machine']['nproc']}, "
        f"torch threads {report['machine']['torch_threads']} (shared machine)",
        f"- torch {report['torch']}, timm {report['timm']}, {report['date']}",
        f"- backbone: {report['backbone']}, median of {report['repeats']} repeats after "
        f"{report['warmup']} warm-up round(s); images/s, higher is better",
        "",
        "| scenario | px | batch | single | single via forward_tasks | mixed 8 tasks "
        "| naive loop | mixed / single | naive / single | mixed vs loop max err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        ips, ratio = r["images_per_s"], r["ratio_to_single"]
        lines.append(
            f"| {r['scenario']} | {r['img_size']} | {r['batch_size']} "
            f"| {ips['single']:.2f} | {ips['single_routed']:.2f} "
            f"| {ips['mixed']:.2f} | {ips['naive']:.2f} | {ratio['mixed']:.3f} "
            f"(paired {r['paired_ratio_to_single']['mixed']:.3f}) | {ratio['naive']:.3f} "
            f"| {r['mixed_vs_loop_max_abs_error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=BACKBONE, help="ViT-S/14 safetensors")
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["224:16", "56:8"],
        help="IMG_SIZE:BATCH pairs to run (default: 224:16 56:8)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"{args.checkpoint} not found: pass --checkpoint PATH")
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes]
    results = [
        run_scenario(args, s, SCENARIOS[s], img, b) for img, b in sizes for s in args.scenarios
    ]
    report = {
        "command": shlex.join(["python", "benchmarks/multitask.py", *(argv or sys.argv[1:])]),
        "machine": {
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": args.checkpoint.name,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multitask.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "multitask.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
