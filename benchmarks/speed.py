"""Speed and memory of AdaptFormer vs full fine-tuning vs LoRA (ours and PEFT), side by side.

Sections (all use ``benchmarks/toolkit.py``; every method of a section is timed round-robin in
one process, memory is measured in a fresh process per method):

- ``main``: the default methods of ``benchmarks/bench.py`` on one backbone, batch and precision,
  with the issue's targets checked;
- ``overhead``: the adapters' inference overhead over the bare backbone, measured in pairs on
  one model (adapters on / off), which resolves the few percent that separate timings cannot;
- ``options``: gradient checkpointing, and adapters in the last half of the blocks with and
  without running the frozen first half outside autograd (``--skip-frozen-prefix``);
- ``batch``: step time and memory vs batch size;
- ``image``: vs image size (token count 112 -> 224 px);
- ``video``: vs clip length (4 -> 16 frames, tubelet 2) on the backbone inflated to video;
- ``profile``: torch.profiler breakdown of one training step per method;
- ``family``: the adapter family's presets (AdaptFormer, Adapter+, Houlsby, Pfeiffer) side by
  side with LoRA, and each preset's paired inference overhead.

Results: ``speed.json``, ``speed.md``, ``speed_batch.png``, ``speed_tokens.png`` and
``speed_profile.txt`` in ``--out``; with ``--update-docs`` the Markdown also replaces the speed
section of ``docs/results.md``.

Usage::

    python benchmarks/speed.py --checkpoint ../shared/assets/vit_small_patch14_dinov2.imgfocus.safetensors --update-docs
    python benchmarks/speed.py --smoke --out runs/speed-smoke    # tiny settings, a few minutes
    python benchmarks/speed.py --sections overhead --merge ...  # redo one section, keep the rest
    python benchmarks/speed.py --report --update-docs          # rewrite the report from speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _docs import update_docs  # benchmarks/ is on sys.path when a script runs
from bench import DEFAULT_METHODS
from toolkit import (
    BenchCase,
    BenchConfig,
    build_model,
    check_targets,
    format_table,
    format_targets,
    machine_info,
    matmul_peak_flops,
    overhead_target,
    paired_inference_overhead,
    profile_train_step,
    run_cases,
)

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("main", "overhead", "options", "batch", "image", "video", "profile", "family")
_log = logging.getLogger("speed")


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Configurations and methods of every section (smaller with ``--smoke``)."""
    base = BenchConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        img_size=args.img_size,
        batch_size=args.batch_size,
        precision=args.precision,
        threads=args.threads,
    )
    depth_half = tuple(range(6, 12))  # ViT-S/B: 12 blocks
    if args.smoke:
        return {
            "base": base.with_(img_size=56, batch_size=8),
            "methods": ["backbone", "full", "adaptformer-16", "lora-8", "peft-lora-8"],
            "batches": [4, 8, 16],
            "sizes": [28, 56],
            "frames": [2, 4],
            "video_batch": 2,
            "sweep_methods": ["full", "adaptformer-16"],
            "sweep_size": 56,
            "sweep_batch": 8,
            "half": depth_half,
            "option_method": "adaptformer-16",
            "timing": {"warmup": 1, "steps": 2, "rounds": 2},
            "profile_methods": ["full", "adaptformer-16"],
            "overhead_methods": ["adaptformer-16"],
            "family_methods": ["backbone", "adaptformer-16", "adapter_plus-8", "houlsby-8"],
            "pairs": 3,
            "block_pairs": 10,
        }
    return {
        "base": base,
        "methods": list(DEFAULT_METHODS),
        "batches": [8, 16, 32, 64],
        "sizes": [112, 168, 224],
        "frames": [4, 8, 16],
        "video_batch": 4,
        "sweep_methods": ["full", "adaptformer-64", "peft-lora-32"],
        "sweep_size": 112,
        "sweep_batch": 16,
        "half": depth_half,
        "option_method": "adaptformer-64",
        "timing": {"warmup": args.warmup, "steps": args.steps, "rounds": args.rounds},
        "profile_methods": ["full", "adaptformer-64", "peft-lora-32"],
        "overhead_methods": ["adaptformer-16", "adaptformer-64"],
        "family_methods": [
            "backbone",
            "adaptformer-64",
            "adapter_plus-8",
            "houlsby-8",
            "pfeiffer-48",
            "lora-8",
        ],
        "pairs": args.pairs,
        "block_pairs": args.block_pairs,
    }


def section_main(p: dict[str, Any]) -> dict[str, Any]:
    rows = run_cases([BenchCase(m, p["base"]) for m in p["methods"]], **p["timing"])
    return {"rows": rows, "targets": check_targets(rows)}


def section_overhead(p: dict[str, Any]) -> dict[str, Any]:
    rows = [
        paired_inference_overhead(m, p["base"], pairs=p["pairs"], block_pairs=p["block_pairs"])
        for m in p["overhead_methods"]
    ]
    return {"rows": rows, "targets": [overhead_target(r) for r in rows]}


def section_options(p: dict[str, Any]) -> dict[str, Any]:
    base, af = p["base"], p["option_method"]
    half = base.with_(layers=p["half"])
    cases = [
        BenchCase("full", base),
        BenchCase("full", base.with_(grad_checkpointing=True), "full + checkpointing"),
        BenchCase(af, base),
        BenchCase(af, base.with_(grad_checkpointing=True), f"{af} + checkpointing"),
        BenchCase(af, half, f"{af} last half"),
        BenchCase(af, half.with_(skip_frozen_prefix=True), f"{af} last half, no-grad prefix"),
        BenchCase(af, half.with_(skip_frozen_prefix=True, grad_checkpointing=True),
                  f"{af} last half, no-grad prefix + checkpointing"),
    ]  # fmt: skip
    return {"rows": run_cases(cases, **p["timing"])}


def _sweep(p: dict[str, Any], key: str, configs: dict[Any, BenchConfig]) -> dict[str, Any]:
    points = []
    for value, cfg in configs.items():
        _log.info("%s = %s", key, value)
        rows = run_cases([BenchCase(m, cfg) for m in p["sweep_methods"]], **p["timing"])
        points += [{key: value, **r} for r in rows]
    return {"key": key, "rows": points}


def section_batch(p: dict[str, Any]) -> dict[str, Any]:
    cfg = p["base"].with_(img_size=p["sweep_size"])
    return _sweep(p, "batch_size", {b: cfg.with_(batch_size=b) for b in p["batches"]})


def section_image(p: dict[str, Any]) -> dict[str, Any]:
    cfg = p["base"].with_(batch_size=p["sweep_batch"])
    return _sweep(p, "img_size", {s: cfg.with_(img_size=s) for s in p["sizes"]})


def section_video(p: dict[str, Any]) -> dict[str, Any]:
    cfg = p["base"].with_(img_size=p["sweep_size"], batch_size=p["video_batch"])
    return _sweep(p, "num_frames", {f: cfg.with_(num_frames=f) for f in p["frames"]})


def section_profile(p: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for method in p["profile_methods"]:
        model = build_model(method, p["base"])
        out[method] = profile_train_step(model, p["base"], steps=max(2, p["timing"]["steps"] // 2))
        del model
    return out


def section_family(p: dict[str, Any]) -> dict[str, Any]:
    methods = p["family_methods"]
    rows = run_cases([BenchCase(m, p["base"]) for m in methods], **p["timing"])
    overhead = [
        paired_inference_overhead(m, p["base"], pairs=p["pairs"], block_pairs=p["block_pairs"])
        for m in methods
        if m != "backbone"
    ]
    return {"rows": rows, "overhead": overhead}


RUNNERS = {
    "main": section_main,
    "overhead": section_overhead,
    "options": section_options,
    "batch": section_batch,
    "image": section_image,
    "video": section_video,
    "profile": section_profile,
    "family": section_family,
}


# --------------------------------------------------------------------------- report


def _sweep_table(section: dict[str, Any]) -> str:
    key = section["key"]
    unit = "clips" if key == "num_frames" else "img"
    lines = [
        f"| method | {key} | tokens | train {unit}/s | train step | train mem | infer {unit}/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        cfg = r["config"]
        grid = (cfg["img_size"] // 14) ** 2 * ((cfg["num_frames"] or 2) // 2)
        lines.append(
            f"| {r['method']} | {r[key]} | {grid} | {r.get('train_images_per_s', 0):.1f} "
            f"| {r.get('train_step_s', 0):.3f} s | {r.get('train_mem_increase_mib', 0):,.0f} MiB "
            f"| {r.get('infer_images_per_s', 0):.1f} |"
        )
    return "\n".join(lines)


def _overhead_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | setting | whole model: pairs, overhead (q25 to q75) | FLOP share "
        "| one block: pairs, overhead (q25 to q75) | FLOP share |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def pct(r: dict[str, Any], prefix: str) -> str:
        return (
            f"{100 * r[prefix + 'overhead']:+.1f}% ({100 * r[prefix + 'overhead_q25']:+.1f} to "
            f"{100 * r[prefix + 'overhead_q75']:+.1f})"
        )

    for r in rows:
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['pairs']}: {pct(r, '')} "
            f"| {100 * r['flop_share']:.1f}% | {r['block_pairs']}: {pct(r, 'block_')} "
            f"| {100 * r['block_flop_share']:.1f}% |"
        )
    return "\n".join(lines)


def _profile_md(profiles: dict[str, Any]) -> str:
    cats = sorted({c for prof in profiles.values() for c in prof["categories"]})
    lines = [
        "| method | forward | backward | optimizer | " + " | ".join(cats) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(cats),
    ]
    for method, prof in profiles.items():
        ph = prof["phases_s"]
        shares = " | ".join(f"{100 * prof['categories'].get(c, 0):.0f}%" for c in cats)
        lines.append(
            f"| {method} | {ph.get('forward', 0):.3f} s | {ph.get('backward', 0):.3f} s "
            f"| {ph.get('optimizer', 0):.3f} s | {shares} |"
        )
    return (
        "Seconds per training step by phase, then each kind of op's share of self CPU time "
        "(torch.profiler; tables in `speed_profile.txt`).\n\n" + "\n".join(lines)
    )


def _peak(record: dict[str, Any]) -> float:
    """The matmul peak the rows were divided by (each section measures its own; the best)."""
    peaks = [
        r["matmul_peak_flops"]
        for section in record["sections"].values()
        if isinstance(section, dict)
        for r in section.get("rows", [])
        if r.get("matmul_peak_flops")
    ]
    return max([record["matmul_peak_flops"], *peaks])


def report(record: dict[str, Any], out: Path) -> str:
    m = record["machine"]
    runs = record["runs"]  # main() and _previous() always set it
    commands = "; then ".join(
        f"`{r['command']}`"
        + (f" ({r['date']}: {', '.join(r['sections'])})" if len(runs) > 1 else "")
        for r in runs
    )
    parts = [
        f"Command: {commands}  \n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch {m['torch']} "
        f"({m['torch_threads']} threads), timm {m['timm']}, peft {m.get('peft', '-')}; "
        f"{m['date']}; load average at start {m['load_average']}; measured fp32 matmul peak "
        f"{_peak(record) / 1e9:.0f} GFLOP/s (the best of several large matmuls, before and after "
        f"each timing); total {record['seconds'] / 60:.1f} min.",
        "Timing: median of the timed steps after warm-up, methods interleaved round-robin in one "
        "process; memory: peak RSS increase over the loaded model, one fresh process per row "
        "(activations + gradients + AdamW state). The load average during each timing is in "
        "`speed.json`.",
    ]
    s = record["sections"]
    if "main" in s:
        parts += [
            f"### Side by side ({s['main']['rows'][0]['setting']})",
            format_table(s["main"]["rows"]),
            "Targets:",
            format_targets(s["main"]["targets"]),
        ]
        if "overhead" in s:
            parts.append(
                "The inference-overhead rows above compare separately timed models, whose "
                "medians differ by a few percent even for identical networks (`backbone` and "
                "`full` run the same forward); the paired measurement below is the one to read."
            )
    if "overhead" in s:
        parts += [
            "### Inference overhead of the adapters, paired",
            "One adapted model, each batch run with its adapters and again without them "
            "(`disable_adapters`, alternating order); the overhead is the median of the "
            "per-pair time ratios. Whole-model steps take seconds and drift with the machine; "
            "one block on the tokens it sees in the model takes a twelfth of that, so many "
            "more pairs fit, and the target is read there.",
            _overhead_table(s["overhead"]["rows"]),
            format_targets(s["overhead"]["targets"]),
        ]
    if "options" in s:
        parts += ["### Options: gradient checkpointing, no-grad frozen prefix",
                  format_table(s["options"]["rows"])]  # fmt: skip
    for name, title in (("batch", "batch size"), ("image", "image size"), ("video", "frames")):
        if name in s:
            parts += [f"### Scaling with {title}", _sweep_table(s[name])]
    if any(k in s for k in ("batch", "image", "video")):
        parts.append("![batch](speed_batch.png) ![tokens](speed_tokens.png)")
    if "profile" in s:
        parts += ["### Where a training step's time goes", _profile_md(s["profile"])]
    if "family" in s:
        parts += [
            f"### The adapter family ({s['family']['rows'][0]['setting']})",
            "Each preset at its published bottleneck (docs/adapters.md), LoRA-8 and the bare "
            "backbone for reference; then each preset's paired inference overhead, measured as "
            "above.",
            format_table(s["family"]["rows"]),
            _overhead_table(s["family"]["overhead"]),
        ]
    return "\n\n".join(parts) + "\n"


def plot(record: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = record["sections"]

    def lines(ax_speed, ax_mem, section, xlabel, xform=lambda r, k: r[k]) -> None:
        key = section["key"]
        for method in dict.fromkeys(r["method"] for r in section["rows"]):
            pts = [r for r in section["rows"] if r["method"] == method]
            xs = [xform(r, key) for r in pts]
            ax_speed.plot(xs, [r.get("train_images_per_s", 0) for r in pts], "o-", label=method)
            ax_mem.plot(xs, [r.get("train_mem_increase_mib", 0) for r in pts], "o-", label=method)
        for ax, ylabel in ((ax_speed, "train images/s"), (ax_mem, "train memory (MiB)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        ax_speed.legend(fontsize=8)

    if "batch" in s:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
        lines(a, b, s["batch"], "batch size")
        fig.suptitle(f"vs batch size ({s['batch']['rows'][0]['config']['img_size']} px)")
        fig.tight_layout()
        fig.savefig(out / "speed_batch.png", dpi=100)
        plt.close(fig)
    token_sections = [k for k in ("image", "video") if k in s]
    if token_sections:
        fig, axes = plt.subplots(2, len(token_sections), figsize=(5 * len(token_sections), 7),
                                 squeeze=False)  # fmt: skip
        for col, name in enumerate(token_sections):
            label = "image size (px)" if name == "image" else "frames per clip (tubelet 2)"
            lines(axes[0][col], axes[1][col], s[name], label)
            axes[0][col].set_title(
                f"vs {'image size' if name == 'image' else 'clip length'} "
                f"(batch {s[name]['rows'][0]['config']['batch_size']})"
            )
        fig.tight_layout()
        fig.savefig(out / "speed_tokens.png", dpi=100)
        plt.close(fig)


def _previous(path: Path) -> dict[str, Any]:
    """The record that ``--merge`` adds to; runs written before ``runs`` was kept get one."""
    if not path.is_file():
        raise SystemExit(f"speed.py: no earlier {path} to add to; run without --merge first")
    record = json.loads(path.read_text())
    if "runs" not in record:
        record["runs"] = [
            {
                "command": record["command"],
                "date": record["machine"]["date"],
                "sections": list(record["sections"]),
            }
        ]
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_small_patch14_dinov2")
    p.add_argument("--checkpoint", help="backbone weights (default: random; timing is the same)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, help="default: --steps (one step per method a round)")
    p.add_argument("--threads", type=int)
    p.add_argument("--pairs", type=int, default=20, help="whole-model pairs (overhead section)")
    p.add_argument("--block-pairs", type=int, default=300, help="one-block pairs (overhead)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--smoke", action="store_true", help="tiny settings, for checking the script")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--update-docs", action="store_true", help="rewrite docs/results.md's section")
    p.add_argument("--report", action="store_true",
                   help="only rewrite speed.md (and the docs) from the speed.json in --out")  # fmt: skip
    p.add_argument("--merge", action="store_true",
                   help="keep the other sections of an existing speed.json in --out")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        return _write_report(_previous(out / "speed.json"), out, args.update_docs)
    pl = plan(args)
    start = time.time()
    command = "python benchmarks/speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    previous = _previous(out / "speed.json") if args.merge else {}
    machine = machine_info()
    this_run = {"command": command, "date": machine["date"], "sections": args.sections}
    record: dict[str, Any] = {
        "command": command,
        "runs": [*previous.get("runs", []), this_run],
        "machine": machine,
        "matmul_peak_flops": matmul_peak_flops("cpu", args.precision),
        "plan": {k: v for k, v in pl.items() if k != "base"} | {"base": pl["base"].describe()},
        "sections": dict(previous.get("sections", {})),
    }
    elapsed = previous.get("seconds", 0.0)
    for name in args.sections:
        t0 = time.time()
        _log.info("section %s", name)
        record["sections"][name] = RUNNERS[name](pl)
        _log.info("section %s done in %.0f s", name, time.time() - t0)
        record["seconds"] = elapsed + time.time() - start
        (out / "speed.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    profiles = record["sections"].get("profile", {}) if "profile" in args.sections else {}
    if profiles:
        (out / "speed_profile.txt").write_text(
            "\n\n".join(f"== {m}\n{prof['table']}" for m, prof in profiles.items()) + "\n"
        )
        for prof in profiles.values():
            prof.pop("table")
        (out / "speed.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return _write_report(record, out, args.update_docs)


def _write_report(record: dict[str, Any], out: Path, docs: bool) -> int:
    plot(record, out)
    markdown = report(record, out)
    (out / "speed.md").write_text(markdown)
    if docs:
        update_docs(markdown, ROOT / "docs" / "results.md", "speed", images=out)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
