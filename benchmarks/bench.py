"""Training and inference speed, memory and FLOP use, method by method (``python benchmarks/bench.py``).

Every method gets the same backbone, batch, image size and precision. Training steps (forward,
backward, AdamW) and inference forwards are timed round-robin in one process (median after
warm-up; the load average is recorded), peak memory is measured in a fresh process per method,
FLOPs are counted with torch's FlopCounterMode and related to the machine's measured matmul
peak. Without --checkpoint the weights are random, which changes no timing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

DEFAULT_METHODS = (
    "backbone",
    "full",
    "adaptformer-16",
    "adaptformer-64",
    "lora-8",
    "lora-32",
    "peft-lora-8",
    "peft-lora-32",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default="vit_small_patch14_dinov2",
        help="timm architecture or registry name (default: vit_small_patch14_dinov2)",
    )
    p.add_argument("--checkpoint", help="local backbone weights (default: random weights)")
    p.add_argument("--img-size", type=int, default=224, help="input size (default: 224)")
    p.add_argument(
        "--frames", type=int, help="time video clips of this many frames (tubelet 2) instead"
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    p.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="(default: fp32)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help="backbone, full, linear, bitfit, adaptformer-R, lora-R, vpt-N, peft-lora-R "
        f"(default: {' '.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--layers", type=int, nargs="+", help="blocks to adapt (default: all)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations")
    p.add_argument(
        "--skip-frozen-prefix",
        action="store_true",
        help="run the blocks below the first adapted one without autograd",
    )
    p.add_argument("--steps", type=int, default=8, help="timed steps per method (default: 8)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument(
        "--rounds",
        type=int,
        help="round-robin rounds over methods (default: --steps, one step per method a round)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the memory processes")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--out", help="folder for bench.json and bench.md")
    return p


def run(args: argparse.Namespace) -> int:
    from toolkit import (
        BenchCase,
        BenchConfig,
        MethodSpec,
        check_targets,
        format_table,
        format_targets,
        machine_info,
        run_cases,
    )

    if args.steps < 1 or args.warmup < 0 or (args.rounds is not None and args.rounds < 1):
        raise ValueError("--steps and --rounds must be positive and --warmup >= 0")
    for m in args.methods:
        MethodSpec.parse(m)  # a bad name fails before anything is built
    cfg = BenchConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        img_size=args.img_size,
        num_frames=args.frames,
        batch_size=args.batch_size,
        precision=args.precision,
        layers=tuple(args.layers) if args.layers else None,
        grad_checkpointing=args.grad_checkpointing,
        skip_frozen_prefix=args.skip_frozen_prefix,
        device=args.device,
        threads=args.threads,
    )
    machine = machine_info()
    rows = run_cases(
        [BenchCase(m, cfg) for m in args.methods],
        warmup=args.warmup,
        steps=args.steps,
        rounds=args.rounds,
        memory=not args.no_memory,
    )
    targets = check_targets(rows)
    command = "python benchmarks/bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = "\n\n".join(
        [
            f"`{command}` on {machine['cpu']} ({machine['cores']} cores, torch "
            f"{machine['torch']}, {machine['torch_threads']} threads), {machine['date']}, "
            f"load average before {machine['load_average']}",
            format_table(rows),
            format_targets(targets) if targets else "",
        ]
    ).strip()
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {"command": command, "machine": machine, "rows": rows, "targets": targets}
        (out / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
        (out / "bench.md").write_text(text + "\n")
        print(f"\nwritten: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(parser().parse_args()))
