"""Comparing finished runs: reading their files as untrusted, the table, the plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from adaptformer.training.compare import (
    comparison_rows,
    comparison_table,
    read_run,
    write_comparison,
)


def fake_run(folder: Path, method: str = "adaptformer", epochs: int = 3, best: int = 1) -> Path:
    """The two files a finished run has that the comparison reads, as `train` writes them."""
    folder.mkdir(parents=True)
    summary = {"method": method, "trainable_params": 609445, "trainable_percent": 2.83,
               "artifact_bytes": 2402304, "best_epoch": best, "val_top1": 90.0,
               "test_top1": 88.5, "train_images_per_s": 41.5, "test_images": 100}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [{"epoch": e, "train_loss": 2.0 / (e + 1), "val_loss": 1.0 / (e + 1),
             "val_top1": 80.0 + 5 * e, "seconds": 10.0} for e in range(epochs)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_table_has_one_row_per_run_with_its_numbers(tmp_path):
    records = [read_run(fake_run(tmp_path / "a")), read_run(fake_run(tmp_path / "b", "linear"))]
    table = comparison_table(comparison_rows(records))
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2] == ("| a | adaptformer | 609,445 | 2.83% | 2346 KiB | 90.0 | 88.5 top-1 "
                        "| 41.5 | 30 s |")  # fmt: skip
    assert lines[3].startswith("| b | linear |")


def test_write_comparison_writes_table_json_and_a_png(tmp_path):
    records = [read_run(fake_run(tmp_path / "a")), read_run(fake_run(tmp_path / "b", "lora"))]
    write_comparison(records, tmp_path / "out")
    assert (tmp_path / "out" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [r["method"] for r in rows] == ["adaptformer", "lora"] and rows[0]["seconds"] == 30
    assert (tmp_path / "out" / "comparison.md").read_text().count("\n") == 4


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "summary.json").unlink(), "missing or not a regular file"),
        (lambda f: (f / "summary.json").write_text("[" * 100000), "not valid JSON"),
        (lambda f: (f / "summary.json").write_text('{"method": 5}'), "not a run summary"),
        (lambda f: (f / "summary.json").write_text('{"method": "x", "test_top1": "high"}'),
         "test_top1 must be finite numbers"),
        (lambda f: (f / "summary.json").write_text('{"method": "x", "best_epoch": 7}'),
         "best_epoch 7 is not one of the 3 epochs"),
        (lambda f: (f / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": "nan"}\n'),
         "line 1 is not an epoch row"),
        (lambda f: (f / "metrics.jsonl").write_bytes(b"\xff\xfe"), "is not text"),
        (lambda f: ((f / "metrics.jsonl").unlink(), os.mkfifo(f / "metrics.jsonl")),
         "not a regular file"),
    ],
)
def test_a_damaged_run_folder_is_one_line_naming_the_file(tmp_path, damage, message):
    folder = fake_run(tmp_path / "run")
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_run(folder)
