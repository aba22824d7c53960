"""Throughput of mixed-task batches as the number of distinct tasks in a batch grows.

On the real shared ViT-S/14 (DINOv2 architecture) with 32 tasks whose adapters and heads are
random and non-zero (heads of 10 to 397 classes), one forward pass over 32 real photos
(Imagenette validation JPEGs, preprocessed at ``--img-size``, default 112 px) whose rows belong
to 1, 2, 8 or 32 distinct tasks (each repeated 32 / k times, shuffled). Images/s of:

- ``single``: the plain one-task forward (``set_adapter`` + ``model(x)``): the 1-task reference;
- ``banks``: ``forward_tasks`` (every row's adapters and head gathered from per-task banks);
- ``loop``: what ``forward_tasks`` did before banks, measured in the same run as the baseline:
  rows sorted by task, each task's own modules run on its rows (``GroupedRouting``), one head
  per task;
- ``compiled``: ``forward_tasks(..., compile=True)`` (inductor), for ``--compile-scenarios``.

Scenarios: AdaptFormer-64, LoRA-8, and a mix of methods (AdaptFormer-64, LoRA-8, Adapter+,
Houlsby, Pfeiffer at their preset sizes, and linear probes). Then LoRA-8 against Hugging Face
PEFT's mixed-adapter batches (``peft_model(x, adapter_names=[...])``) on the same timm model with
the same weights copied in (32 tasks of 100 classes, PEFT's ``modules_to_save`` heads). Then one
AdaptFormer-64 training step (batch 32) eager vs ``torch.compile``.

Every cell of an experiment runs once per repeat, round-robin in a rotating order (the machine
is shared, so load drifts); medians are reported with the ratio to ``single`` (or to PEFT) and
the median of the per-repeat ratios. Writes ``multitask.json`` and ``multitask.md`` under
``--out`` and the tables into docs/multitask.md::

    nice -n 19 python benchmarks/multitask.py
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import tarfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from PIL import Image

import adaptformer as af
from adaptformer.data import build_eval_transform
from adaptformer.data.safe import to_rgb
from adaptformer.serving.multitask import grouped_pass
from adaptformer.training.modality import data_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import update_docs

_log = logging.getLogger("benchmarks.multitask")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADAPTFORMER_SHARED", ROOT.parent / "shared"))
BACKBONE = SHARED / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"
ARCH = "vit_small_patch14_dinov2"
CLASSES = [10, 100, 37, 102, 10, 200, 47, 397]  # heads of different sizes, as real tasks have

# name -> list of task configs; every scenario has 8 tasks (benchmarks/serve.py's registries)
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

# name -> the configs cycled over the 32 tasks of the distinct-task sweep
MIXES: dict[str, list[af.AdapterConfig]] = {
    "AdaptFormer-64": [af.AdapterConfig(bottleneck=64)],
    "LoRA-8": [af.AdapterConfig(method="lora", bottleneck=8)],
    "mixed methods": [
        af.AdapterConfig(bottleneck=64),
        af.AdapterConfig(method="lora", bottleneck=8),
        af.AdapterConfig(method="adapter_plus"),
        af.AdapterConfig(method="houlsby"),
        af.AdapterConfig(method="pfeiffer"),
        af.AdapterConfig(method="linear"),
    ],
}
TASKS = 32


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def randomize(model: torch.nn.Module, name: str) -> None:
    """Non-zero adapters and heads: zero-initialised ones would be a no-op to skip."""
    with torch.no_grad():
        for p in af.adapter_parameters(model, name).values():
            p.normal_(0.0, 0.02)
        for p in af.get_head(model, name).parameters():
            p.normal_(0.0, 0.02)


def build(
    checkpoint: Path, img_size: int, configs: list[af.AdapterConfig], classes: list[int] = CLASSES
) -> torch.nn.Module:
    """The backbone with task ``t{i}`` of ``configs[i]`` (heads cycling through ``classes``)."""
    model = af.create_backbone(ARCH, checkpoint=checkpoint, img_size=img_size)
    for i, cfg in enumerate(configs):
        name = f"t{i}"
        af.inject(model, cfg, name=name, num_classes=classes[i % len(classes)])
        randomize(model, name)
    return model.eval()


def photos(model: torch.nn.Module, count: int, img_size: int) -> torch.Tensor:
    """The first ``count`` Imagenette validation JPEGs, preprocessed as ``predict`` does."""
    stats = data_stats(model)
    tf = build_eval_transform(img_size, stats["mean"], stats["std"], stats["interpolation"])
    out = []
    with tarfile.open(SHARED / "data" / "imagenette.tar") as tar:
        for m in tar:
            if m.isfile() and "/val/" in m.name and m.name.endswith(".jpg"):
                out.append(tf(to_rgb(Image.open(io.BytesIO(tar.extractfile(m).read())))))
                if len(out) == count:
                    break
    return torch.stack(out)


def batch_tasks(names: list[str], distinct: int, batch: int, seed: int) -> list[str]:
    """``batch`` row tasks drawn from ``distinct`` of ``names``, each as often, shuffled."""
    picked = random.Random(seed).sample(names, distinct)
    tasks = [picked[i % distinct] for i in range(batch)]
    random.Random(seed + 1).shuffle(tasks)
    return tasks


def time_cells(cells: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict:
    """Seconds of every cell per repeat, cells round-robin in an order rotating per repeat."""
    for _ in range(warmup):
        for fn in cells.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in cells}
    names = list(cells)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            cells[name]()
            seconds[name].append(time.perf_counter() - t0)
        _log.info("repeat %d/%d done", r + 1, repeats)
    return seconds


def summarize(seconds: dict[str, list[float]], batch: int, reference: str) -> dict:
    """Images/s (median), ratio to ``reference`` and the median of the per-repeat ratios."""
    ips = {k: batch / statistics.median(v) for k, v in seconds.items()}
    ref = seconds[reference]
    return {
        "images_per_s": ips,
        "ratio": {k: v / ips[reference] for k, v in ips.items()},
        "paired_ratio": {
            k: statistics.median(r / t for r, t in zip(ref, v, strict=True))
            for k, v in seconds.items()
        },
        "seconds": seconds,
    }


def added_ms(seconds: dict[str, list[float]], base: str = "bare") -> dict[str, float]:
    """Milliseconds each cell adds to ``base`` in the same repeat (median over repeats)."""
    ref = seconds[base]
    return {
        k: 1e3 * statistics.median(t - r for r, t in zip(ref, v, strict=True))
        for k, v in seconds.items()
        if k != base
    }


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    finite = torch.isfinite(b)
    assert torch.equal(finite, torch.isfinite(a)), "different -inf padding"
    return float((a[finite] - b[finite]).abs().max())


def dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def distinct_sweep(args: argparse.Namespace, label: str, x: torch.Tensor) -> dict:
    """One scenario: single, banks, loop (and compiled) at every number of distinct tasks."""
    torch.manual_seed(0)
    configs = [MIXES[label][i % len(MIXES[label])] for i in range(TASKS)]
    model = build(args.checkpoint, args.img_size, configs)
    names = [f"t{i}" for i in range(TASKS)]
    b = x.shape[0]
    compiled = label in args.compile_scenarios
    cells: dict[str, Callable[[], object]] = {}

    def single() -> torch.Tensor:
        af.set_adapter(model, names[0])
        return model(x)

    def bare() -> torch.Tensor:
        with af.disable_adapters(model):
            return model(x)

    cells["single"] = single
    cells["bare"] = bare  # the backbone alone: what adapters and routing add is the rest
    errors: dict[str, float] = {}
    first_call: dict[str, float] = {}
    graphs_before = dynamo_graphs() if compiled else 0
    with torch.inference_mode():
        for k in args.distinct:
            tasks = batch_tasks(names, k, b, seed=k)
            if k == 1:
                tasks = [names[0]] * b  # the same task as `single`
            cells[f"banks {k}"] = lambda t=tasks: af.forward_tasks(model, x, t)
            cells[f"loop {k}"] = lambda t=tasks: grouped_pass(model, x, t)
            banks = af.forward_tasks(model, x, tasks).logits
            loop, _ = grouped_pass(model, x, tasks)
            errors[f"banks vs loop {k}"] = max_error(banks, loop[:, : banks.shape[1]])
            if compiled:
                cells[f"compiled {k}"] = lambda t=tasks: af.forward_tasks(model, x, t, compile=True)
                t0 = time.perf_counter()
                got = af.forward_tasks(model, x, tasks, compile=True).logits
                first_call[f"compiled {k}"] = time.perf_counter() - t0
                errors[f"compiled vs banks {k}"] = max_error(got, banks)
        _log.info("%s: errors %s, first compiled calls %s", label, errors, first_call)
        seconds = time_cells(cells, args.repeats, args.warmup)
    result = {
        "scenario": label,
        "tasks": [c.method for c in configs],
        **summarize(seconds, b, "single"),
        "ms_over_bare_backbone": added_ms(seconds),
        "max_abs_error": errors,
        "compile_first_call_s": first_call,
        "compiled_graphs": dynamo_graphs() - graphs_before if compiled else None,
    }
    _log.info("%s: %s", label, {k: round(v, 2) for k, v in result["images_per_s"].items()})
    return result


def peft_model(model: torch.nn.Module, checkpoint: Path, img_size: int, names: list[str]):
    """The same backbone under PEFT with every LoRA task's weights and head copied in."""
    from peft import LoraConfig, get_peft_model

    base = af.create_backbone(ARCH, checkpoint=checkpoint, img_size=img_size, num_classes=100)
    cfg = af.AdapterConfig(method="lora", bottleneck=8)
    config = LoraConfig(r=cfg.bottleneck, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                        target_modules=["qkv"], modules_to_save=["head"])  # fmt: skip
    peft = get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        peft.add_adapter(name, config)
    inner = peft.get_base_model()
    with torch.no_grad():
        for name in names:
            for ours, theirs in zip(model.blocks, inner.blocks, strict=True):
                theirs.attn.qkv.lora_A[name].weight.copy_(ours.attn.qkv.lora_A[name].weight)
                theirs.attn.qkv.lora_B[name].weight.copy_(ours.attn.qkv.lora_B[name].weight)
            head = inner.head.modules_to_save[name]
            head.load_state_dict(af.get_head(model, name).state_dict())
    return peft.eval()


def peft_sweep(args: argparse.Namespace, x: torch.Tensor) -> dict:
    """LoRA-8 x 32 (100 classes each): forward_tasks vs PEFT's ``adapter_names`` batches."""
    torch.manual_seed(0)
    configs = [af.AdapterConfig(method="lora", bottleneck=8)] * TASKS
    model = build(args.checkpoint, args.img_size, configs, classes=[100])
    names = [f"t{i}" for i in range(TASKS)]
    peft = peft_model(model, args.checkpoint, args.img_size, names)
    b = x.shape[0]
    cells: dict[str, Callable[[], object]] = {}
    errors = {}
    with torch.inference_mode():
        for k in args.distinct:
            tasks = batch_tasks(names, k, b, seed=k)
            cells[f"peft {k}"] = lambda t=tasks: peft(x, adapter_names=t)
            cells[f"banks {k}"] = lambda t=tasks: af.forward_tasks(model, x, t)
            ours = af.forward_tasks(model, x, tasks).logits
            errors[str(k)] = max_error(peft(x, adapter_names=tasks), ours)
        _log.info("peft vs ours max abs error: %s", errors)
        seconds = time_cells(cells, args.repeats, args.warmup)
    ips = {k: b / statistics.median(v) for k, v in seconds.items()}
    versus = {
        str(k): {
            "ratio": ips[f"banks {k}"] / ips[f"peft {k}"],
            "paired_ratio": statistics.median(
                p / o for p, o in zip(seconds[f"peft {k}"], seconds[f"banks {k}"], strict=True)
            ),
        }
        for k in args.distinct
    }
    import peft as peft_package

    return {"images_per_s": ips, "banks_vs_peft": versus, "seconds": seconds,
            "max_abs_error": errors, "peft": peft_package.__version__}  # fmt: skip


def train_compile(args: argparse.Namespace, x: torch.Tensor) -> dict:
    """One AdaptFormer-64 training step (SGD) on batch 32: eager vs ``torch.compile``."""
    torch.manual_seed(0)
    model = build(args.checkpoint, args.img_size, [af.AdapterConfig(bottleneck=64)], [10])
    af.mark_trainable(model, "adaptformer")
    model.train()
    y = torch.arange(x.shape[0]) % 10
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    compiled = torch.compile(model)

    def step(m: torch.nn.Module) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        optimizer.step()

    t0 = time.perf_counter()
    step(compiled)
    first = time.perf_counter() - t0
    cells = {"eager": lambda: step(model), "compiled": lambda: step(compiled)}
    seconds = time_cells(cells, args.repeats, args.warmup)
    return {**summarize(seconds, x.shape[0], "eager"), "compile_first_call_s": first}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"- command: `{report['command']}`",
        f"- machine: {m['cpu']}, {m['nproc']} cores shared with other jobs, torch threads "
        f"{m['torch_threads']}; torch {report['torch']}, timm {report['timm']}, "
        f"peft {report.get('peft', {}).get('peft', 'n/a')}; {report['date']}",
        f"- {report['backbone']} at {report['img_size']} px, {report['batch']} real photos per "
        f"pass, 32 tasks; median of {report['repeats']} round-robin repeats after "
        f"{report['warmup']} warm-up round(s); images/s, higher is better; ratios to the plain "
        "one-task forward (`single`), per-repeat (paired) median in brackets",
        "",
    ]
    ks = report["distinct"]
    head = " | ".join(f"{k} task{'s' if k > 1 else ''}" for k in ks)
    lines += [
        f"| scenario | single | path | {head} | {ks[-1]} tasks / single |",
        "|---|---|---|" + "---|" * len(ks) + "---|",
    ]
    for r in report["results"]:
        ips, ratio, paired = r["images_per_s"], r["ratio"], r["paired_ratio"]
        for path in ("banks", "loop", "compiled"):
            if f"{path} {ks[0]}" not in ips:
                continue
            cells = " | ".join(f"{ips[f'{path} {k}']:.2f}" for k in ks)
            last = f"{path} {ks[-1]}"
            lines.append(
                f"| {r['scenario']} | {ips['single']:.2f} | {path} | {cells} "
                f"| **{ratio[last]:.2f}** ({paired[last]:.2f}) |"
            )
    lines += [
        "",
        "Milliseconds each path adds to the bare backbone's pass (adapters, heads and routing; "
        "paired median over repeats; the bare pass takes "
        + ", ".join(
            f"{1e3 * statistics.median(r['seconds']['bare']):.0f} ms ({r['scenario']})"
            for r in report["results"]
        )
        + "):",
        "",
        f"| scenario | path | {head} |",
        "|---|---|" + "---|" * len(ks),
    ]
    for r in report["results"]:
        added = r["ms_over_bare_backbone"]
        lines.append(f"| {r['scenario']} | single | {added['single']:.0f} |" + " |" * (len(ks) - 1))
        for path in ("banks", "loop", "compiled"):
            if f"{path} {ks[0]}" in added:
                cells = " | ".join(f"{added[f'{path} {k}']:.0f}" for k in ks)
                lines.append(f"| {r['scenario']} | {path} | {cells} |")
    lines.append("")
    errs = [f"{r['scenario']}: {max(r['max_abs_error'].values()):.1e}" for r in report["results"]]
    lines.append(
        f"Largest |banks - loop| (and compiled - banks) over all logits: {', '.join(errs)}."
    )
    graphs = [f"{r['scenario']}: {r['compiled_graphs']}" for r in report["results"]
              if r["compiled_graphs"] is not None]  # fmt: skip
    if graphs:
        firsts = [f"{max(r['compile_first_call_s'].values()):.0f} s" for r in report["results"]
                  if r["compile_first_call_s"]]  # fmt: skip
        lines.append(
            f"Compiled graphs for all mixes: {', '.join(graphs)} (first call, compiling: "
            f"{', '.join(firsts)})."
        )
    p = report.get("peft")
    if p:
        lines += [
            "",
            "LoRA-8 x 32 tasks (100 classes each) against PEFT's mixed-adapter batches on the same "
            "timm model and weights:",
            "",
            "| distinct tasks | PEFT `adapter_names` | forward_tasks (banks) | banks / PEFT |",
            "|---|---|---|---|",
        ]
        for k in ks:
            v = p["banks_vs_peft"][str(k)]
            lines.append(
                f"| {k} | {p['images_per_s'][f'peft {k}']:.2f} "
                f"| {p['images_per_s'][f'banks {k}']:.2f} "
                f"| **{v['ratio']:.2f}** ({v['paired_ratio']:.2f}) |"
            )
        errors = p["max_abs_error"].values()
        lines.append(f"\nLargest |PEFT - banks| logit difference: {max(errors):.1e}.")
    t = report.get("train")
    if t:
        lines += [
            "",
            f"One AdaptFormer-64 training step (batch {report['batch']}, SGD): eager "
            f"{t['images_per_s']['eager']:.2f} images/s, `torch.compile` "
            f"{t['images_per_s']['compiled']:.2f} images/s (**{t['ratio']['compiled']:.2f}x**, "
            f"paired {t['paired_ratio']['compiled']:.2f}); the first compiled step took "
            f"{t['compile_first_call_s']:.0f} s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=BACKBONE, help="ViT-S/14 safetensors")
    p.add_argument("--img-size", type=int, default=112, help="input size (default: 112)")
    p.add_argument("--batch", type=int, default=32, help="rows per pass (default: 32)")
    p.add_argument("--distinct", type=int, nargs="+", default=[1, 2, 8, 32],
                   help="distinct tasks per pass (default: 1 2 8 32)")  # fmt: skip
    p.add_argument("--scenarios", nargs="+", choices=list(MIXES), default=list(MIXES))
    p.add_argument("--compile-scenarios", nargs="*", choices=list(MIXES),
                   default=["AdaptFormer-64"], help="scenarios also run compiled")  # fmt: skip
    p.add_argument("--no-peft", dest="peft", action="store_false", help="skip the PEFT run")
    p.add_argument("--no-train", dest="train", action="store_false",
                   help="skip the eager vs compiled training step")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--tag", default="", help="suffix of the result files and docs marker "
                   "(multitask_TAG.json, <!-- multitask-TAG:begin -->) for a second setting")  # fmt: skip
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "multitask.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"{args.checkpoint} not found: pass --checkpoint PATH")
    if any(k < 1 or args.batch % k for k in args.distinct) or max(args.distinct) > TASKS:
        raise ValueError(f"--distinct values must divide --batch {args.batch} and be <= {TASKS}")
    torch.set_num_threads(args.threads)
    probe = af.create_backbone(ARCH, checkpoint=args.checkpoint, img_size=args.img_size)
    x = photos(probe, args.batch, args.img_size)
    del probe
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
        "img_size": args.img_size,
        "batch": args.batch,
        "distinct": args.distinct,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": [distinct_sweep(args, s, x) for s in args.scenarios],
    }
    if args.peft:
        report["peft"] = peft_sweep(args, x)
    if args.train:
        report["train"] = train_compile(args, x)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"multitask_{args.tag}" if args.tag else "multitask"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / f"{stem}.md").write_text("# Mixed-task batches: throughput\n\n" + text)
    if args.docs.is_file():
        update_docs(text, args.docs, f"multitask-{args.tag}" if args.tag else "multitask")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
