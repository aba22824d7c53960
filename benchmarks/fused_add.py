"""A/B of AdaptMLP's fused residual add against the plain ``out + adapter(x)``, one block.

Profiling the inference forward showed the adapter costing more than its FLOP share. Besides
its two small matmuls it made two extra passes over the whole token stream (``* scale`` and
``+``); :meth:`adaptformer.layers.AdaptMLP.add_to` folds both into the up-projection's
``addmm``. This script times one transformer block of the adapted model (the middle one, on
random tokens of the model's shape) with its adapter and without it (``disable_adapters``),
in alternating pairs, once with each implementation of ``add_to`` in the same process, and
prints the median per-pair overhead with quartiles. ``up`` is set to random values so that
the two paths also have to agree numerically (the maximum difference is printed).

Usage::

    python benchmarks/fused_add.py                    # ViT-S/14, 224 px, batch 32, 300 pairs
    python benchmarks/fused_add.py --pairs 50 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from adaptformer.bench import BenchConfig, _paired_ratios, build_model
from adaptformer.inject import disable_adapters
from adaptformer.layers import AdaptMLP


def plain_add_to(self: AdaptMLP, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The implementation before the fusion: two more passes over ``(tokens, dim)``."""
    return out + self(x)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_small_patch14_dinov2")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--method", default="adaptformer-64")
    p.add_argument("--pairs", type=int, default=300)
    p.add_argument("--rounds", type=int, default=2, help="fused/plain measurements, alternating")
    args = p.parse_args(argv)

    cfg = BenchConfig(model=args.model, img_size=args.img_size, batch_size=args.batch_size)
    model = build_model(args.method, cfg).eval()  # random weights: timing does not depend on them
    for block in model.blocks:
        for adapter in block.adaptmlp.values():
            torch.nn.init.normal_(adapter.up_proj.weight, std=0.02)
            torch.nn.init.normal_(adapter.up_proj.bias, std=0.02)
    block = model.blocks[len(model.blocks) // 2]
    tokens = (cfg.img_size // model.patch_embed.patch_size[0]) ** 2 + 1
    x = torch.randn(cfg.batch_size, tokens, model.embed_dim)
    fused_add_to = AdaptMLP.add_to
    impls = {"fused": fused_add_to, "plain": plain_add_to}

    with torch.inference_mode():
        fused_out = block(x)
        AdaptMLP.add_to = plain_add_to
        plain_out = block(x)
        AdaptMLP.add_to = fused_add_to
    diff = (fused_out - plain_out).abs().max().item()
    print(f"max abs difference fused vs plain: {diff:.3g}", flush=True)

    def on() -> None:
        with torch.inference_mode():
            block(x)

    def off() -> None:
        with disable_adapters(model):
            on()

    for _ in range(20):
        on()
        off()
    results = []
    try:
        for _ in range(args.rounds):
            for name, impl in impls.items():
                AdaptMLP.add_to = impl
                r = _paired_ratios(on, off, args.pairs, torch.device("cpu"))
                q = statistics.quantiles(r, n=4)
                row = {"add_to": name, "overhead": statistics.median(r) - 1,
                       "q25": q[0] - 1, "q75": q[2] - 1, "pairs": args.pairs}  # fmt: skip
                results.append(row)
                print(f"{name}: median {100 * row['overhead']:+.2f}% "
                      f"(q25 {100 * row['q25']:+.2f}, q75 {100 * row['q75']:+.2f})", flush=True)  # fmt: skip
    finally:
        AdaptMLP.add_to = fused_add_to
    print(json.dumps({"config": vars(args), "max_abs_difference": diff, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
