"""The VTAB-1k protocol (Zhai et al., 2019, https://arxiv.org/abs/1910.04867), end to end.

For each task and method: train on ``train800`` and score ``val200`` once per learning rate of a
grid (the tuning phase), keep the best, then train on all 1,000 images (``train800val200``) and
score ``test`` once per seed (a one-point grid skips the tuning phase). Both phases train for a fixed number of epochs and keep the last
one: there is no validation split left to select an epoch on, which is how VTAB-1k papers
(VPT, NOAH, Adapter+, V-PETL Bench) report.

Every run is an ordinary run folder (``adaptformer train``) below ``<output>/<task>/<method>/``:
``tune-blr<X>`` per grid point and ``seed<S>`` per final run. A finished run (its
``summary.json`` exists) is skipped, a run cut short continues from its last checkpoint, and a
run killed before its first checkpoint starts over, so the same command resumes the protocol.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..adapters.config import parse_method_spec
from ..utils.files import atomic_write_text, read_json
from .config import TrainConfig

# The 19 VTAB-1k tasks and their groups, under the folder names of the common list layout.
_NATURAL = ("cifar", "caltech101", "dtd", "oxford_flowers102", "flowers102", "oxford_iiit_pet",
            "pets", "svhn", "sun397")  # fmt: skip
_SPECIALIZED = ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy")
_STRUCTURED = ("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
               "smallnorb_azi", "smallnorb_ele")  # fmt: skip
GROUPS: dict[str, str] = {
    **dict.fromkeys(_NATURAL, "natural"),
    **dict.fromkeys(_SPECIALIZED, "specialized"),
    **dict.fromkeys(_STRUCTURED, "structured"),
}
GROUP_ORDER = ("natural", "specialized", "structured")
# Protocol options the command sets itself; every other `train` option passes through
# (``blr`` too: when given, it replaces each method's default as the base the grid multiplies).
PROTOCOL_FIELDS = (
    "dataset", "data_root", "method", "bottleneck", "prompt_tokens", "output", "seed",
    "train_split", "test_split", "val_fraction", "lr",
)  # fmt: skip
# The protocol's own settings where `train` would choose for a first try (training/first_try.py):
# VTAB-1k papers train at 224 px for 100 epochs; flags (or the config) override them.
PROTOCOL_DEFAULTS: dict[str, Any] = {"img_size": 224, "epochs": 100, "precision": "fp32"}


@dataclass(frozen=True)
class Protocol:
    """What to run: tasks below ``root``, methods, seeds, the lr grid, shared train options.

    Attributes:
        root: folder holding one sub-folder per task in the VTAB-1k list layout.
        tasks: task folder names.
        methods: method specs (``linear``, ``full``, ``adaptformer-64``, ``vpt-10``, ...).
        seeds: seeds of the final runs (the tuning phase uses the first).
        lr_grid: multipliers of each method's default base learning rate to try.
        output: folder of all runs and ``results.json``.
        base: every other ``TrainConfig`` option (epochs, img_size, precision, ...).
        tune_only: run the tuning phase only (which learning rate suits which method).
    """

    root: Path
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    lr_grid: tuple[float, ...]
    output: Path
    base: dict[str, Any]
    tune_only: bool = False

    def __post_init__(self) -> None:
        if not self.tasks or not self.methods:
            raise ValueError("the protocol needs at least one task and one method")
        for task in self.tasks:
            missing = [n for n in ("train800", "val200", "train800val200", "test")
                       if not (self.root / task / f"{n}.txt").is_file()]  # fmt: skip
            if missing:
                raise FileNotFoundError(
                    f"VTAB-1k task {task}: {', '.join(m + '.txt' for m in missing)} missing in "
                    f"{self.root / task}; --root must hold <task>/train800.txt, val200.txt, "
                    "train800val200.txt and test.txt"
                )
        for spec in self.methods:
            parse_method_spec(spec)
        if not self.seeds or not self.lr_grid or any(not s > 0 for s in self.lr_grid):
            raise ValueError("--seeds and --lr-grid need at least one value; multipliers > 0")
        self.config("tune", self.tasks[0], self.methods[0], self.lr_grid[0], self.seeds[0])

    def default_blr(self, spec: str) -> float:
        return TrainConfig(
            **{**PROTOCOL_DEFAULTS, **self.base, **parse_method_spec(spec)}
        ).resolved_blr

    def config(self, phase: str, task: str, spec: str, blr: float, seed: int) -> TrainConfig:
        """The run of one phase ("tune" or "final") as a ``TrainConfig``."""
        split = ("train800", "val200") if phase == "tune" else ("train800val200", "test")
        folder = f"tune-blr{blr:.3g}" if phase == "tune" else f"seed{seed}"
        return TrainConfig(**{
            **PROTOCOL_DEFAULTS, **self.base, **parse_method_spec(spec),
            "dataset": "vtab1k", "data_root": str(self.root / task),
            "train_split": split[0], "test_split": split[1], "val_fraction": 0.0,
            "lr": None, "blr": blr, "seed": seed,
            "output": str(self.output / task / spec / folder),
            # A sweep scores every learning rate, diverging ones too: stopping them would end
            # the protocol, and their low val200 score is what rules them out.
            "divergence_guard": False,
        })  # fmt: skip


def run_protocol(
    protocol: Protocol,
    fit: Callable[..., dict[str, Any]] | None = None,
    report: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or resume) every tuning and final run; returns one result row per final run."""
    if fit is None:
        from .runner import fit
    p = protocol
    grid = p.lr_grid if len(p.lr_grid) > 1 else ()  # one learning rate: nothing to choose
    per_pair = len(grid) + (0 if p.tune_only else len(p.seeds))
    total, done, rows = len(p.tasks) * len(p.methods) * per_pair, 0, []
    for task in p.tasks:
        for spec in p.methods:
            default = p.default_blr(spec)
            tuned = []
            for mult in grid:
                done += 1
                cfg = p.config("tune", task, spec, default * mult, p.seeds[0])
                s = _run(cfg, fit, f"[{done}/{total}] {task} {spec} tune blr {cfg.blr:.3g}", report)
                tuned.append((s["test_top1"], -s.get("test_loss", math.inf), -cfg.blr, cfg.blr))
            # best val200 top-1; ties to the lower loss, then the smaller learning rate
            blr = max(tuned)[3] if tuned else default * p.lr_grid[0]
            val200 = {f"{t[3]:.3g}": t[0] for t in tuned}
            if p.tune_only:
                rows.append({"task": task, "group": GROUPS.get(task, "other"), "method": spec,
                             "default_blr": default, "blr": blr, "val200_top1": val200})  # fmt: skip
            for seed in () if p.tune_only else p.seeds:
                done += 1
                cfg = p.config("final", task, spec, blr, seed)
                label = f"[{done}/{total}] {task} {spec} final seed {seed} (blr {blr:.3g})"
                s = _run(cfg, fit, label, report)
                rows.append({
                    "task": task, "group": GROUPS.get(task, "other"), "method": spec,
                    "seed": seed, "blr": blr, "default_blr": default,
                    "val200_top1": val200,
                    **{k: s.get(k) for k in ("test_top1", "trainable_params", "artifact_bytes",
                                              "train_images_per_s", "seconds", "epochs")},
                    "finished": _finished(Path(cfg.output) / "summary.json"),
                })  # fmt: skip
    p.output.mkdir(parents=True, exist_ok=True)
    (p.output / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def _run(
    cfg: TrainConfig, fit: Callable[..., dict[str, Any]], label: str, report: Callable[[str], None]
) -> dict[str, Any]:
    """One run folder: reuse a finished one, resume a cut one, restart one with no checkpoint."""
    out = Path(cfg.output)
    summary_file = out / "summary.json"
    if summary_file.is_file():
        summary = read_json(summary_file, "a run summary")
        report(f"{label}: done before, top-1 {summary['test_top1']:.1f}")
        return summary
    resume = (out / "checkpoint.pt").is_file()
    if out.exists() and not resume:  # killed before its first checkpoint: nothing to keep
        shutil.rmtree(out)
    start = time.time()
    summary = fit(cfg, resume=resume, progress=False)
    summary.pop("run_folder", None)  # the folder is known here; summary.json does not name itself
    summary["seconds"] = summary.get("seconds", time.time() - start)
    atomic_write_text(summary_file, json.dumps(summary, indent=2) + "\n")
    report(f"{label}: top-1 {summary['test_top1']:.1f} ({time.time() - start:.0f} s"
           f"{', resumed' if resume else ''})")  # fmt: skip
    return summary


def _finished(summary_file: Path) -> str:
    """The UTC day a run finished (its summary's write time): what a report's date says."""
    stamp = summary_file.stat().st_mtime
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d")


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: mean (and spread over seeds) per task, group means, overall means."""
    out = []
    for spec in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == spec]
        tasks = {}
        for task in dict.fromkeys(r["task"] for r in mine):
            scores = [r["test_top1"] for r in mine if r["task"] == task]
            mean = sum(scores) / len(scores)
            sd = (sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) ** 0.5 if len(
                scores) > 1 else None  # fmt: skip
            tasks[task] = {"mean": mean, "sd": sd, "seeds": len(scores)}
        groups = {}
        for g in GROUP_ORDER:
            vals = [v["mean"] for t, v in tasks.items() if GROUPS.get(t) == g]
            if vals:
                groups[g] = sum(vals) / len(vals)
        out.append({
            "method": spec, "tasks": tasks, "groups": groups,
            "mean": sum(v["mean"] for v in tasks.values()) / len(tasks),
            "group_mean": sum(groups.values()) / len(groups) if groups else None,
            "trainable_params": _mean(r["trainable_params"] for r in mine),
            "artifact_bytes": _mean(r["artifact_bytes"] for r in mine),
            "blr": {t: next(r["blr"] for r in mine if r["task"] == t) for t in tasks},
        })  # fmt: skip
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The VTAB papers' table: test top-1 per task, group means, both overall means."""
    summary = summarize(rows)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    groups = [g for g in GROUP_ORDER if any(GROUPS.get(t) == g for t in tasks)]
    head = ["method", "params", "task file", *tasks, *groups, "mean", "mean of groups"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for s in summary:
        cells = [s["method"], _count(s["trainable_params"]), _size(s["artifact_bytes"])]
        for t in tasks:
            v = s["tasks"].get(t)
            cells.append("" if v is None else f"{v['mean']:.1f}" + (
                f" ± {v['sd']:.1f}" if v["sd"] is not None else ""))  # fmt: skip
        cells += [f"{s['groups'][g]:.1f}" if g in s["groups"] else "" for g in groups]
        cells += [f"{s['mean']:.1f}", f"{s['group_mean']:.1f}" if s["group_mean"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
