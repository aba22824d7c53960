"""Finished runs side by side: what ``adaptformer compare`` and ``adaptformer demo`` print.

A run folder's ``summary.json`` and ``metrics.jsonl`` are read (never its checkpoint: nothing
here builds a model), each checked to be a regular file of bounded size and of the types
``adaptformer train`` writes, since run folders are copied around and downloaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.files import MAX_TEXT_BYTES, loads_json, read_regular_bytes
from .plots import plot_comparison

_NUMBERS = ("trainable_params", "trainable_percent", "artifact_bytes", "val_top1", "val_mAP",
            "test_top1", "test_mAP", "train_images_per_s")  # fmt: skip
_ROW_NUMBERS = ("val_top1", "val_mAP", "val_loss", "seconds")  # what the plot and table read


@dataclass
class RunRecord:
    """What the comparison shows of one finished run."""

    name: str
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def seconds(self) -> float:
        """Wall time of training and validation, summed over the epochs' rows."""
        return float(sum(r.get("seconds", 0.0) for r in self.history))


def _read_text(path: Path) -> str:
    """A run file's text, read by the shared regular-file reader (a FIFO or device never
    blocks it), with a hint at what is wrong when it is missing."""
    try:
        raw = read_regular_bytes(path, MAX_TEXT_BYTES, "a file `adaptformer train` writes")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing or not a regular file: is {path.parent} a finished run folder "
            "(`adaptformer train` writes it at the end)?"
        ) from None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not text; it should be written by `adaptformer train`") from None


def _json(text: str, path: Path) -> Any:
    try:
        return loads_json(text, "it")
    except ValueError as e:  # bad JSON, nesting deeper than MAX_NESTING, a 5,000-digit int
        raise ValueError(f"{path} is not valid JSON ({e}); the run folder is damaged: train it "
                         "again") from None  # fmt: skip


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def read_run(folder: str | Path) -> RunRecord:
    """A finished run's summary and per-epoch rows, type-checked; one-line errors."""
    folder = Path(folder)
    summary = _json(_read_text(folder / "summary.json"), folder / "summary.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("method"), str):
        raise ValueError(f"{folder / 'summary.json'} is not a run summary (no method)")
    bad = [k for k in _NUMBERS if k in summary and not _is_number(summary[k])]
    if bad:
        raise ValueError(f"{folder / 'summary.json'}: {', '.join(bad)} must be finite numbers")
    history = []
    path = folder / "metrics.jsonl"
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        row = _json(line, path)
        if not (isinstance(row, dict) and _is_number(row.get("train_loss"))
                and row.get("epoch") == n - 1
                and all(_is_number(row[k]) for k in _ROW_NUMBERS if k in row)):  # fmt: skip
            raise ValueError(f"{path} line {n} is not an epoch row of numbers (epoch {n - 1})")
        history.append(row)
    best = summary.get("best_epoch")
    if best is not None and not (isinstance(best, int) and 0 <= best < max(len(history), 1)):
        raise ValueError(f"{folder / 'summary.json'}: best_epoch {best!r} is not one of the "
                         f"{len(history)} epochs")  # fmt: skip
    return RunRecord(folder.name, summary, history)


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if _is_number(x) else "-"


def comparison_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One plain row per run (what ``comparison.json`` holds)."""
    rows = []
    for r in records:
        s = r.summary
        rows.append({
            "run": r.name,
            "method": s["method"],
            "trainable_params": s.get("trainable_params"),
            "trainable_percent": s.get("trainable_percent"),
            "task_file_bytes": s.get("artifact_bytes"),
            "val": s.get("val_top1", s.get("val_mAP")),
            "test": s.get("test_top1", s.get("test_mAP")),
            "metric": "mAP" if "test_mAP" in s and "test_top1" not in s else "top-1",
            "train_images_per_s": s.get("train_images_per_s"),
            "seconds": r.seconds,
            "epochs": len(r.history),
            "test_images": s.get("test_images"),
            "best_epoch": s.get("best_epoch"),
        })  # fmt: skip
    return rows


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`comparison_rows`."""
    lines = [
        "| run | method | trainable params | % of backbone | task file | val | test | "
        "images/s | time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = r["task_file_bytes"]
        lines.append(
            f"| {r['run']} | {r['method']} | {_fmt(r['trainable_params'], ',')} "
            f"| {_fmt(r['trainable_percent'], '.2f')}% "
            f"| {_fmt(size / 1024 if _is_number(size) else None, '.0f')} KiB "
            f"| {_fmt(r['val'], '.1f')} | {_fmt(r['test'], '.1f')} {r['metric']} "
            f"| {_fmt(r['train_images_per_s'], '.1f')} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def write_comparison(records: Sequence[RunRecord], out: str | Path) -> str:
    """Write ``comparison.md``, ``comparison.json`` and ``comparison.png`` into ``out``;
    returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(records)
    table = comparison_table(rows)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_comparison([(r.name, r.history, r.summary.get("best_epoch")) for r in records],
                    out / "comparison.png")  # fmt: skip
    return table
