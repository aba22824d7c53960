"""The same DINOv2 through two implementations, trained for real: timm's and Hugging Face's.

The shared DINOv2 ViT-S/14 (timm format) is written as a Hugging Face ``Dinov2Model``
``save_pretrained`` folder (``adaptformer.backbones.hf.save_timm_as_hf``, float16 like the file,
so both paths resample the position grid from the same values). Then VTAB-lite eurosat is
trained through both with ``adaptformer vtab`` (one learning rate, so only the protocol's final
phase runs: train800val200 -> test), with the defaults of the VTAB-lite table
(``benchmarks/vtab_lite.py``: AdaptFormer-64 at its default learning rate, 112 px, batch 32,
6 epochs, no augmentation, bf16 autocast):

- timm: ``--model vit_small_patch14_dinov2 --checkpoint FILE``
- Hugging Face: ``--model hf:FOLDER`` (``backbones.hf.HFVisionBackbone``, the ``hf-dinov2`` spec)

Before training, both backbones' logits on real eurosat images are compared with the same
adapter weights (fp32). The runs go two at a time (one thread each); every unit resumes, so the
same command continues after an interruption. Results: ``benchmarks/results/hf_parity.{json,md}``.

Usage::

    nice -n 19 python benchmarks/hf_parity.py              # seeds 0 and 1
    nice -n 19 python benchmarks/hf_parity.py --seeds 0    # seed 0 only
    python benchmarks/hf_parity.py --report                # rewrite the results from finished runs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vtab_lite import BACKBONE, COMMON, RESULTS, ROOT, _flags, ensure_data, machine, run_queue

TASK = "eurosat"
METHOD = "adaptformer-64"
IMPLEMENTATIONS = ("timm", "hf")


def hf_folder(work: Path) -> Path:
    """The shared backbone as a Hugging Face ``Dinov2Model`` folder (written once)."""
    folder = work / "dinov2_hf"
    if not (folder / "model.safetensors").is_file():
        import torch

        import adaptformer as af
        from adaptformer.backbones.hf import save_timm_as_hf

        timm_518 = af.create_backbone(COMMON["model"], checkpoint=BACKBONE)
        save_timm_as_hf(timm_518, folder, "dinov2", dtype=torch.float16)
    return folder


def command(impl: str, data: Path, out: Path, folder: Path, seed: int) -> list[str]:
    """One ``adaptformer vtab`` unit: one implementation, one seed."""
    source = (
        {"model": COMMON["model"], "checkpoint": str(BACKBONE)}
        if impl == "timm"
        else {"model": f"hf:{folder}"}
    )
    options = {**COMMON, **source}
    return [sys.executable, "-m", "adaptformer", "vtab", "--root", str(data),
            "--output", str(out / impl), "--tasks", TASK, "--methods", METHOD,
            "--seeds", str(seed), "--lr-grid", "1.0", *_flags(options)]  # fmt: skip


def preflight(data: Path, folder: Path, images: int = 16) -> dict[str, Any]:
    """Logits of both backbones on real eurosat test images, same adapter weights, fp32."""
    import torch
    from PIL import Image

    import adaptformer as af
    from adaptformer.backbones.create import pretrained_backbone
    from adaptformer.data.preprocess import model_stats
    from adaptformer.data.transforms import build_eval_transform

    size = COMMON["img_size"]
    timm_model = pretrained_backbone(COMMON["model"], str(BACKBONE), size)
    hf_model = pretrained_backbone(f"hf:{folder}", None, size)
    stats = [model_stats(m) for m in (timm_model, hf_model)]
    assert stats[0] == stats[1], stats  # the same preprocessing on both paths
    tf = build_eval_transform(size, stats[0]["mean"], stats[0]["std"], stats[0]["interpolation"])
    lines = (data / TASK / "test.txt").read_text().splitlines()[:images]
    x = torch.stack([tf(Image.open(data / TASK / ln.rsplit(maxsplit=1)[0]).convert("RGB"))
                     for ln in lines])  # fmt: skip
    torch.manual_seed(0)
    for m in (timm_model, hf_model):
        af.inject(m, af.AdapterConfig(), num_classes=10)
    g = torch.Generator().manual_seed(0)
    theirs = af.adapter_parameters(hf_model, "default")
    with torch.no_grad():
        for k, p in af.adapter_parameters(timm_model, "default").items():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            theirs[k].copy_(p)
        hf_model.head.load_state_dict(timm_model.head.state_dict())
        a, b = timm_model.eval()(x), hf_model.eval()(x)
    return {"images": len(lines), "max_abs_logit_diff": float((a - b).abs().max()),
            "max_abs_logit": float(a.abs().max()), "stats": stats[0]}  # fmt: skip


def collect(out: Path, seeds) -> list[dict[str, Any]]:
    """Finished runs: test top-1 and the per-epoch training loss of each."""
    rows = []
    for impl in IMPLEMENTATIONS:
        for seed in seeds:
            run = out / impl / TASK / METHOD / f"seed{seed}"
            if not (run / "summary.json").is_file():
                continue
            s = json.loads((run / "summary.json").read_text())
            epochs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
            rows.append({"implementation": impl, "seed": seed, "model": s["model"],
                         "test_top1": s["test_top1"], "test_loss": s["test_loss"],
                         "trainable_params": s["trainable_params"],
                         "train_images_per_s": s["train_images_per_s"],
                         "train_loss": [e["train_loss"] for e in epochs]})  # fmt: skip
    return rows


def render(result: dict[str, Any]) -> str:
    m, rows = result["machine"], result["rows"]
    pre = result.get("preflight") or {}
    by = {(r["implementation"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"Command: `{result['command']}` ({m['date']}, {m['cpu']}, {m['cores']} cores, torch "
        f"{m['torch']}). The shared DINOv2 ViT-S/14 through timm (`--model "
        f"{COMMON['model']} --checkpoint ...`) and through Hugging Face `Dinov2Model` "
        "(`--model hf:FOLDER`, the same weights written with `save_pretrained`): VTAB-lite "
        f"{TASK}, {METHOD} at its default learning rate, train800val200 -> test, "
        f"{COMMON['img_size']} px, batch {COMMON['batch_size']}, {COMMON['epochs']} epochs, no "
        f"augmentation, {COMMON['precision']} autocast. Test top-1 %.",
        "",
        "| implementation | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---:|" * len(seeds),
    ]
    for impl in IMPLEMENTATIONS:
        cells = [f"{by[(impl, s)]['test_top1']:.2f}" if (impl, s) in by else "-" for s in seeds]
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    for s in seeds:
        if ("timm", s) in by and ("hf", s) in by:
            a, b = by[("timm", s)]["train_loss"], by[("hf", s)]["train_loss"]
            diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
            lines += ["", f"Seed {s}: largest per-epoch training-loss difference {diff:.2g} "
                      f"(timm last epoch {a[-1]:.4f}, HF {b[-1]:.4f})."]  # fmt: skip
    if pre:
        lines += ["", f"Before training, same adapter weights, fp32: largest logit difference "
                  f"{pre['max_abs_logit_diff']:.2g} on {pre['images']} real {TASK} test images "
                  f"(logits up to {pre['max_abs_logit']:.2g})."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "hf_parity",
                   help="data, the HF folder and the run folders (default: runs/hf_parity)")  # fmt: skip
    p.add_argument("--report", action="store_true", help="only rewrite the results")
    args = p.parse_args()
    data = ensure_data(args.work / "data")
    folder = hf_folder(args.work)
    out = args.work / "runs"
    saved = RESULTS / "hf_parity.json"
    old = json.loads(saved.read_text()) if saved.is_file() else {}
    pre = old.get("preflight") if args.report else None
    if not args.report:
        pre = preflight(data, folder)
        print(json.dumps(pre), flush=True)
        units = [
            command(impl, data, out, folder, s) for s in args.seeds for impl in IMPLEMENTATIONS
        ]
        run_queue(units, args.work / "logs")
    result = {
        "command": "nice -n 19 python benchmarks/hf_parity.py"
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1] else ""),
        "machine": machine(),
        "common": {**COMMON, "task": TASK, "method": METHOD},
        "preflight": pre,
        "rows": collect(out, args.seeds),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "hf_parity.md").write_text(render(result) + "\n")
    print(render(result))


if __name__ == "__main__":
    main()
