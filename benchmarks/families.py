"""Which method works with which transformer family, found by running it; and each family's
training-step speed.

``--sections matrix``: for every registered family (one small timm configuration each, random
weights saved as a local checkpoint, as a user without network would have) and every method,
each feature is run for real and its cell says what happened:

- ``inject``: ``af.inject`` (a refusal is shown with its one-line reason);
- ``train``: one AdamW step on a batch; the loss is finite and only the method's parameters move;
- ``task file``: ``save_adapter`` then ``load_adapter`` under another name into a fresh backbone
  gives the same logits;
- ``mixed``: ``af.forward_tasks`` on a batch mixing this task with an AdaptFormer task equals
  each task run alone (1e-4);
- ``onnx`` / ``torchscript``: ``export_model`` with its own verification against PyTorch;
- ``serve``: the task registered in a ``TaskRegistry`` (the checks ``adaptformer tasks add``
  runs), the model rebuilt from the registry by ``build_model`` (what ``adaptformer serve`` and
  ``predict --tasks`` run), and its answers equal the trained model's.

``--sections speed``: one training step per family at 112 px, batch 16, AdaptFormer-64 next to
full fine-tuning in the same process, round-robin (images/s, trainable parameters).

Writes ``families.json`` / ``families.md`` under ``--out``; ``--update-docs`` puts the matrix in
README.md and both in docs/families.md::

    python benchmarks/families.py --update-docs
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

import adaptformer as af
from adaptformer.adapters.trainable import backbone_fingerprint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import update_docs
from toolkit import machine_info, summarize_times, time_round_robin

_log = logging.getLogger("benchmarks.families")
ROOT = Path(__file__).resolve().parents[1]
METHODS = (
    "adaptformer",
    "adapter_plus",
    "houlsby",
    "pfeiffer",
    "lora",
    "vpt",
    "bitfit",
    "linear",
    "full",
)
FEATURES = ("inject", "train", "task file", "mixed", "onnx", "torchscript", "serve")
BATCH = 4


@dataclass(frozen=True)
class FamilyCase:
    """One family's stand-in model: a timm name (or ``hf:`` folder builder) and its sizes."""

    family: str
    model: str  # what --model would say
    img_size: int  # small, for the matrix
    kwargs: dict[str, Any]  # shrinks the model for the matrix (depth, width)
    speed_kwargs: dict[str, Any]  # the real configuration for the speed section
    # (case, folder, full size) -> (model, --model, --checkpoint or None)
    build: Callable[[FamilyCase, Path, bool], tuple[nn.Module, str, Path | None]] | None = None


def timm_case(
    case: FamilyCase, folder: Path, full_size: bool
) -> tuple[nn.Module, str, Path | None]:
    """A random-weight timm model saved as a local checkpoint, loaded back as a user would."""
    import timm

    kwargs = case.speed_kwargs if full_size else case.kwargs
    size = 112 if full_size else case.img_size
    model = timm.create_model(case.model, num_classes=0, img_size=size, **kwargs)
    path = folder / f"{case.family}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    model = af.create_backbone(case.model, checkpoint=path, img_size=size, **kwargs)
    return model, case.model, path


def hf_case(case: FamilyCase, folder: Path, full_size: bool) -> tuple[nn.Module, str, Path | None]:
    """A random-weight timm ViT written as a Hugging Face ``save_pretrained`` folder and loaded
    back through ``--model hf:FOLDER``'s path (``case.model`` names the timm twin)."""
    import timm

    from adaptformer.backbones.hf import PREFIX, save_timm_as_hf

    kind = case.family.removeprefix("hf-")
    timm_name = case.model.removeprefix(PREFIX)
    twin = timm.create_model(timm_name, num_classes=0, img_size=224, **case.kwargs)
    hf = save_timm_as_hf(twin, folder / f"{case.family}-hf", model_type=kind)
    size = 112 if full_size else case.img_size
    from adaptformer.backbones.create import pretrained_backbone

    model = pretrained_backbone(f"{PREFIX}{hf}", None, size)
    return model, f"{PREFIX}{hf}", None


CASES: list[FamilyCase] = [
    # the shared backbone's architecture
    FamilyCase("vit", "vit_small_patch14_dinov2", 56, {}, {}, timm_case),
    FamilyCase("eva", "eva02_tiny_patch14_224", 56, {}, {}, timm_case),
    FamilyCase("beit", "beit_base_patch16_224", 64, {}, {}, timm_case),
    FamilyCase("swin", "swin_tiny_patch4_window7_224", 64, {}, {}, timm_case),
    FamilyCase("swinv2", "swinv2_tiny_window8_256", 64, {}, {}, timm_case),
    # Hugging Face's DINOv2 and ViT layers, random weights of ViT-S shape, via --model hf:FOLDER
    FamilyCase("hf-dinov2", "hf:vit_small_patch14_dinov2", 56, {}, {}, hf_case),
    FamilyCase("hf-vit", "hf:vit_small_patch16_224", 64, {}, {}, hf_case),
]


def _configs(method: str) -> af.AdapterConfig:
    if method in ("adapter_plus", "houlsby", "pfeiffer"):
        return af.AdapterConfig(method=method)
    return af.AdapterConfig(method=method, bottleneck=8 if method == "lora" else 16)


def _randomize(model: nn.Module, method: str) -> None:
    """Non-zero task weights (LoRA's B and AdaptFormer's up start at zero, proving nothing)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in af.trainable_parameters(model, method):
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _cell(fn: Callable[[], str | None]) -> str:
    try:
        out = fn()
        return out or "yes"
    except (ValueError, TypeError) as e:  # a one-line refusal is an answer, not a crash
        return f"refused: {str(e).splitlines()[0]}"  # whole: refusals are one line by design
    except Exception as e:  # the matrix reports what fails, it never hides it
        _log.warning("%s", traceback.format_exc())
        return f"FAILS: {type(e).__name__}: {str(e).splitlines()[0][:120]}"


def matrix_rows(case: FamilyCase, workdir: Path) -> list[dict[str, str]]:
    """One row per method: each feature's cell for ``case``'s family."""
    backbone, name, checkpoint = case.build(case, workdir, False)
    backbone.eval()
    fingerprint = backbone_fingerprint(backbone)
    x = torch.randn(
        BATCH, 3, case.img_size, case.img_size, generator=torch.Generator().manual_seed(0)
    )
    rows = []
    for method in METHODS:
        row = {"family": case.family, "method": method}
        model = copy.deepcopy(backbone)
        row["inject"] = _cell(partial(_inject, model, method))
        if row["inject"] != "yes":
            rows.append({**row, **dict.fromkeys(FEATURES[1:], "-")})
            continue
        row["train"] = _cell(partial(_train, model, method, x))
        _randomize(model, method)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        folder = workdir / f"{case.family}-{method}"
        row["task file"] = _cell(partial(_task_file, model, backbone, folder, x, logits))
        row["mixed"] = _cell(partial(_mixed, model, x))
        for fmt in ("onnx", "torchscript"):
            row[fmt] = _cell(partial(_export, model, fmt, workdir, case.img_size))
        source = (name, checkpoint, fingerprint)
        row["serve"] = _cell(partial(_serve, model, case, source, workdir, x, logits))
        rows.append(row)
    return rows


def _inject(model: nn.Module, method: str) -> None:
    af.inject(model, _configs(method), name="t", num_classes=5)
    af.mark_trainable(model, method)


def _train(model: nn.Module, method: str, x: torch.Tensor) -> str | None:
    params = af.trainable_parameters(model, method)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    opt = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    loss = nn.functional.cross_entropy(model(x), torch.arange(x.shape[0]) % 5)
    loss.backward()
    opt.step()
    opt.zero_grad()
    if not torch.isfinite(loss):
        return "FAILS: loss is not finite"
    trained = {id(p) for p in params}
    moved_wrong = [
        n for n, p in model.named_parameters()
        if id(p) not in trained and not torch.equal(p, before[id(p)])
    ]  # fmt: skip
    if moved_wrong:
        return f"FAILS: frozen parameters moved ({moved_wrong[0]})"
    if not any(not torch.equal(p, before[id(p)]) for p in params):
        return "FAILS: no trainable parameter moved"
    return None


def _task_file(
    model: nn.Module, backbone: nn.Module, folder: Path, x: torch.Tensor, logits: torch.Tensor
) -> str | None:
    af.save_adapter(model, folder, "t")
    fresh = copy.deepcopy(backbone)
    af.load_adapter(fresh, folder, name="other")
    with torch.no_grad():
        got = fresh.eval()(x)
    err = (got - logits).abs().max().item()
    return None if err <= 1e-5 else f"FAILS: logits differ by {err:.1e}"


def _mixed(model: nn.Module, x: torch.Tensor) -> str | None:
    m = copy.deepcopy(model)
    af.inject(m, af.AdapterConfig(bottleneck=8), name="u", num_classes=3)
    _randomize(m, "adaptformer")
    m.eval()
    tasks = ["t", "u"] * (x.shape[0] // 2)
    with torch.no_grad():
        out = af.forward_tasks(m, x, tasks)
        err = 0.0
        for name in ("t", "u"):
            af.set_adapter(m, name)
            rows, got = out.task_rows(name)
            err = max(err, (got - m(x[rows])).abs().max().item())
    return None if err <= 1e-4 else f"FAILS: mixed rows differ by {err:.1e}"


def _export(model: nn.Module, fmt: str, workdir: Path, img_size: int) -> str | None:
    from adaptformer.serving.export import export_model

    path = workdir / f"export.{'onnx' if fmt == 'onnx' else 'pt'}"
    result = export_model(copy.deepcopy(model), path, format=fmt, img_size=img_size)
    path.unlink(missing_ok=True)
    return None if result.max_abs_error is not None else "exported, not verified"


def _serve(
    model: nn.Module,
    case: FamilyCase,
    source: tuple[str, Path | None, str],
    workdir: Path,
    x: torch.Tensor,
    logits: torch.Tensor,
) -> str | None:
    from adaptformer.serving.store import TaskRegistry

    method = af.adapters.inject.adapter_state(model).configs["t"].method
    cfg = model.pretrained_cfg
    run = workdir / f"run-{case.family}-{method}"
    af.save_adapter(
        model,
        run,
        "t",
        metadata={
            "model": source[0],
            "backbone_sha256": source[2],
            "img_size": case.img_size,
            "mean": list(cfg.get("mean", (0.5,) * 3)),
            "std": list(cfg.get("std", (0.5,) * 3)),
            "interpolation": cfg.get("interpolation", "bicubic"),
        },
    )
    if source[1] is not None:
        (run / "config.yaml").write_text(f"checkpoint: {source[1]}\n")
    registry = TaskRegistry(workdir / f"registry-{case.family}-{method}")
    registry.add("task", run)
    served = registry.build_model()
    with torch.no_grad():
        got = af.forward_tasks(served, x, ["task"] * x.shape[0]).logits
    err = (got - logits).abs().max().item()
    return None if err <= 1e-4 else f"FAILS: served logits differ by {err:.1e}"


def speed_rows(case: FamilyCase, workdir: Path, repeats: int, batch: int) -> list[dict[str, Any]]:
    """Images/s of one training step, AdaptFormer-64 vs full fine-tuning, round-robin."""
    backbone, _, _ = case.build(case, workdir, True)
    x = torch.randn(batch, 3, 112, 112)
    y = torch.arange(batch) % 10
    steps, counts = {}, {}
    for method, config in (
        ("adaptformer", af.AdapterConfig()),
        ("full", af.AdapterConfig(method="full")),
    ):
        model = copy.deepcopy(backbone)
        af.inject(model, config, name="t", num_classes=10)
        counts[method] = af.mark_trainable(model, method)
        opt = torch.optim.AdamW(af.trainable_parameters(model, method), lr=1e-4)
        model.train()

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[method] = step
    times, loads = time_round_robin(steps, warmup=1, timed=repeats, rounds=repeats)
    rows = []
    for method, t in times.items():
        c = counts[method]
        rows.append({
            "family": case.family, "model": case.model, "method": method,
            "trainable": c.trainable, "backbone": c.backbone,
            "trainable_percent": round(c.trainable_percent, 2),
            **summarize_times(t, batch), "load_average": loads[-1],
        })  # fmt: skip
    return rows


def format_matrix(rows: list[dict[str, str]]) -> str:
    """The matrix as Markdown: ``yes``, or ``refused [n]`` / ``FAILS [n]`` with the reasons as
    numbered notes under the table (temporary paths removed)."""
    notes: list[str] = []
    head = "| family | method | " + " | ".join(FEATURES) + " |"
    lines = [head, "|" + "---|" * (len(FEATURES) + 2)]

    def cell(text: str) -> str:
        kind, sep, reason = text.partition(": ")
        if not sep or kind not in ("refused", "FAILS"):
            return text
        reason = re.sub(r"(/tmp|/var)\S*", "RUN", reason).strip()
        if reason not in notes:
            notes.append(reason)
        return f"{kind} [{notes.index(reason) + 1}]"

    for r in rows:
        cells = " | ".join(cell(r[f]) for f in FEATURES)
        lines.append(f"| {r['family']} | {r['method']} | {cells} |")
    lines += ["", *(f"[{i}] {n}  " for i, n in enumerate(notes, 1))]
    return "\n".join(lines).rstrip()


def format_speed(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| family | model (112 px) | method | trainable params | % of backbone | images/s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['model']} | {r['method']} | {r['trainable']:,} | "
            f"{r['trainable_percent']:.2f} | {r['images_per_s']:.1f} |"
        )
    return "\n".join(lines)


def format_summary(rows: list[dict[str, str]]) -> str:
    """The README's compact matrix: one row per method, one column per family; ``all`` when
    every feature ran, otherwise what did not, with the same numbered notes as the full table."""
    notes: list[str] = []
    families = list(dict.fromkeys(r["family"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["family"], r["method"]): r for r in rows}

    def note(text: str) -> str:
        kind, _, reason = text.partition(": ")
        reason = re.sub(r"(/tmp|/var)\S*", "RUN", reason).strip()
        if reason not in notes:
            notes.append(reason)
        return f"{kind} [{notes.index(reason) + 1}]"

    def cell(r: dict[str, str] | None) -> str:
        if r is None:
            return "not run"
        if r["inject"] != "yes":
            return note(r["inject"])
        bad = [f"{f} {note(r[f]).removeprefix('refused ')}" for f in FEATURES if r[f] != "yes"]
        return "all" if not bad else "all but " + ", ".join(bad)

    lines = ["| method | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cell(by.get((f, m))) for f in families) + " |")
    lines += [
        "",
        f"`all`: {', '.join(FEATURES)} each ran and passed its check "
        "([what each checks](docs/families.md#support-matrix-and-training-speed)); `all but X "
        "[n]`: X was refused with note n's one line (a `FAILS` would mean a bug).  ",
        *(f"[{i}] {n}  " for i, n in enumerate(notes, 1)),
    ]
    return "\n".join(lines).rstrip()


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with the families measured again replaced by ``new`` (in CASES order)."""
    fresh = {r["family"] for r in new}
    rows = [r for r in old if r["family"] not in fresh] + new
    order = {c.family: i for i, c in enumerate(CASES)}
    return sorted(rows, key=lambda r: order.get(r["family"], len(order)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=["matrix", "speed"],
                        choices=["matrix", "speed"])  # fmt: skip
    parser.add_argument("--families", nargs="+", default=None,
                        help="default: every case; others keep their rows from --out's json")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cases = [c for c in CASES if args.families is None or c.family in args.families]
    path = args.out / "families.json"
    # A section or family run alone replaces only its part of the results (each section keeps
    # the command, machine and date it was measured with).
    result: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    result = {k: v for k, v in result.items() if k in ("matrix", "speed")}
    command = "python benchmarks/families.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for section in args.sections:
            started = time.time()
            meta = {"command": command, "machine": machine_info(),
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip
            if section == "matrix":
                rows = [r for c in cases for r in matrix_rows(c, work)]
            else:
                rows = [r for c in cases for r in speed_rows(c, work, args.repeats, args.batch)]
            before = result.get(section) if isinstance(result.get(section), dict) else {}
            merged = merge_rows(before.get("rows", []), rows)
            meta["seconds"] = round(time.time() - started)
            if len(merged) > len(rows):  # families kept from before keep their provenance
                meta["others"] = before.get("others") or {
                    k: before[k] for k in ("command", "date") if k in before
                }
            result[section] = {**meta, "rows": merged}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    md = report(result)
    (args.out / "families.md").write_text(md + "\n")
    print(md)
    if args.update_docs:
        if "matrix" in result:
            update_docs(
                format_summary(result["matrix"]["rows"]), ROOT / "README.md", "support-matrix"
            )
        update_docs(md, ROOT / "docs" / "families.md", "families-results")


def _measured(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    load = m.get("load_average")
    load_text = f", load average {load[0]:.1f} at the start" if load else ""
    return (f"`{meta['command']}`: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, torch "
            f"{m.get('torch', '?')}; {meta['date']}"
            + (f", {meta['seconds']} s" if meta.get("seconds") is not None else "")
            + f"{load_text}." + _others(meta))  # fmt: skip


def _others(meta: dict[str, Any]) -> str:
    """Where the rows of families not measured by this section's command came from."""
    others = meta.get("others")
    if not others:
        return ""
    return f" Other families: `{others.get('command', '?')}`, {others.get('date', '?')}."


def report(result: dict[str, Any]) -> str:
    out: list[str] = []
    if "matrix" in result:
        out += [
            f"Matrix: {_measured(result['matrix'])}",
            "",
            format_matrix(result["matrix"]["rows"]),
            "",
        ]
    if "speed" in result:
        out += [f"Speed: {_measured(result['speed'])}", "", format_speed(result["speed"]["rows"])]
    return "\n".join(out).rstrip()


if __name__ == "__main__":
    main()
