"""adaptformer.training.vtab: the VTAB-1k protocol's phases, selection, resume and table."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptformer.training.config import DEFAULT_BLR
from adaptformer.training.vtab import (
    Protocol,
    format_table,
    run_protocol,
    summarize,
)

from ..runs import make_checkpoint, run_cli

LISTS = ("train800", "val200", "train800val200", "test")


def make_vtab_task(root: Path, name: str, n_train: int = 16, n_val: int = 8, n_test: int = 8):
    """A task in the VTAB-1k list layout: 2 classes (a bright or dark square on noise)."""
    rng = np.random.default_rng(len(name))
    task = root / name
    counts = {"train800": n_train, "val200": n_val, "test": n_test}
    lines: dict[str, list[str]] = {}
    for split, n in counts.items():
        lines[split] = []
        for i in range(n):
            label = i % 2
            img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            img[8:24, 8:24] = 230 if label else 120
            path = task / "images" / str(label) / f"{split}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            lines[split].append(f"images/{label}/{path.name} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split in LISTS:
        (task / f"{split}.txt").write_text("\n".join(lines[split]) + "\n")
    (task / "classes.txt").write_text("dark\nbright\n")
    return task


class FakeFit:
    """Stands in for runner.fit: val200 top-1 peaks at the default blr; writes a checkpoint."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, resume=False, progress=None):
        self.calls.append((cfg.train_split, cfg.test_split, cfg.blr, cfg.seed, resume))
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoint.pt").write_bytes(b"")
        score = 90 - 1000 * abs(cfg.blr - DEFAULT_BLR["adamw"]["adaptformer"]) + cfg.seed
        return {"test_top1": score, "test_loss": 1.0, "trainable_params": 1000,
                "artifact_bytes": 4096, "epochs": cfg.epochs}  # fmt: skip


def _protocol(root: Path, out: Path, **kw) -> Protocol:
    args = dict(root=root, tasks=("eurosat", "dsprites_loc"), methods=("adaptformer-8",),
                seeds=(0, 1), lr_grid=(0.25, 1.0, 4.0), output=out,
                base={"epochs": 2, "img_size": 32})  # fmt: skip
    return Protocol(**{**args, **kw})


def test_protocol_tunes_on_val200_then_trains_on_1000_and_tests_per_seed(tmp_path):
    for name in ("eurosat", "dsprites_loc"):
        make_vtab_task(tmp_path / "vtab", name)
    fit, lines = FakeFit(), []
    rows = run_protocol(_protocol(tmp_path / "vtab", tmp_path / "out"), fit, lines.append)
    default = DEFAULT_BLR["adamw"]["adaptformer"]
    eurosat = fit.calls[:5]
    assert [c[:3] for c in eurosat[:3]] == [
        ("train800", "val200", pytest.approx(default * m)) for m in (0.25, 1.0, 4.0)]  # fmt: skip
    assert [c[:4] for c in eurosat[3:]] == [
        ("train800val200", "test", pytest.approx(default), s) for s in (0, 1)]  # fmt: skip
    assert len(rows) == 4 and all(r["blr"] == pytest.approx(default) for r in rows)
    assert lines[0].startswith(f"[1/10] eurosat adaptformer-8 tune blr {default / 4:.3g}")
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == rows
    # the same command again reruns nothing
    again = FakeFit()
    assert run_protocol(_protocol(tmp_path / "vtab", tmp_path / "out"), again, print) == rows
    assert again.calls == []


def test_protocol_resumes_a_cut_run_and_restarts_one_without_checkpoint(tmp_path):
    make_vtab_task(tmp_path / "vtab", "eurosat")
    p = _protocol(tmp_path / "vtab", tmp_path / "out", tasks=("eurosat",), seeds=(0,),
                  lr_grid=(1.0, 2.0))  # fmt: skip
    blr = DEFAULT_BLR["adamw"]["adaptformer"]
    tune = Path(p.config("tune", "eurosat", "adaptformer-8", blr, 0).output)
    final = Path(p.config("final", "eurosat", "adaptformer-8", blr, 0).output)
    tune.mkdir(parents=True)
    (tune / "checkpoint.pt").write_bytes(b"")  # cut after an epoch: resume
    final.mkdir(parents=True)
    (final / "config.yaml").write_text("stale: true\n")  # killed before any checkpoint
    fit = FakeFit()
    run_protocol(p, fit, print)
    assert [c[4] for c in fit.calls] == [True, False, False]
    assert not (final / "config.yaml").exists()


def test_each_row_says_the_day_its_run_finished(tmp_path):
    make_vtab_task(tmp_path / "vtab", "eurosat")
    p = _protocol(tmp_path / "vtab", tmp_path / "out", tasks=("eurosat",), seeds=(0,),
                  lr_grid=(1.0,))  # fmt: skip
    (row,) = run_protocol(p, FakeFit(), print)
    summary = Path(p.config("final", "eurosat", "adaptformer-8", row["blr"], 0).output)
    summary = summary / "summary.json"
    assert row["finished"] == time.strftime("%Y-%m-%d", time.gmtime(summary.stat().st_mtime))
    os.utime(summary, (0, 86400 * 365))  # a run finished long ago keeps its own day
    (again,) = run_protocol(p, FakeFit(), print)
    assert again["finished"] == "1971-01-01" and again["test_top1"] == row["test_top1"]


def test_a_one_point_grid_skips_tuning(tmp_path):
    make_vtab_task(tmp_path / "vtab", "eurosat")
    fit = FakeFit()
    p = _protocol(tmp_path / "vtab", tmp_path / "out", tasks=("eurosat",), lr_grid=(2.0,))
    rows = run_protocol(p, fit, print)
    blr = 2 * DEFAULT_BLR["adamw"]["adaptformer"]
    assert [c[:3] for c in fit.calls] == [("train800val200", "test", pytest.approx(blr))] * 2
    assert rows[0]["val200_top1"] == {}
    tune_only = _protocol(tmp_path / "vtab", tmp_path / "out2", tasks=("eurosat",),
                          lr_grid=(2.0,), tune_only=True)  # fmt: skip
    (row,) = run_protocol(tune_only, fit, print)
    assert row["val200_top1"] == {}  # nothing ran, so no score (not a made-up 0.0)


def test_no_task_or_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one task and one method"):
        _protocol(tmp_path, tmp_path / "out", tasks=())


def test_missing_lists_are_named(tmp_path):
    task = make_vtab_task(tmp_path / "vtab", "eurosat")
    (task / "val200.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"val200\.txt missing"):
        _protocol(tmp_path / "vtab", tmp_path / "out", tasks=("eurosat",))


def test_table_has_tasks_group_means_and_both_overall_means():
    rows = [
        {"task": t, "group": g, "method": "m", "seed": s, "blr": 1e-3,
         "test_top1": v + s, "trainable_params": 2e5, "artifact_bytes": 3 * 2**20}
        for t, g, v in (("caltech101", "natural", 80.0), ("eurosat", "specialized", 90.0),
                        ("dsprites_loc", "structured", 50.0), ("dsprites_ori", "structured", 30.0))
        for s in (0, 2)
    ]  # fmt: skip
    (s,) = summarize(rows)
    assert s["tasks"]["caltech101"]["mean"] == 81.0
    assert s["tasks"]["caltech101"]["sd"] == pytest.approx(2**0.5)
    assert s["groups"] == {"natural": 81.0, "specialized": 91.0, "structured": 41.0}
    assert s["mean"] == pytest.approx((81 + 91 + 51 + 31) / 4)
    assert s["group_mean"] == pytest.approx((81 + 91 + 41) / 3)
    table = format_table(rows)
    assert "| m | 200.0 K | 3.0 MiB | 81.0 ± 1.4 |" in table
    assert "structured" in table.splitlines()[0]


def test_vtab_command_end_to_end_and_resumes(tmp_path):
    make_vtab_task(tmp_path / "vtab", "eurosat")
    ckpt = make_checkpoint(tmp_path / "vit_tiny.safetensors")
    args = ["vtab", "--root", str(tmp_path / "vtab"), "--methods", "linear", "adaptformer-4",
            "--lr-grid", "1", "2", "--model", "vit_tiny_patch16_224", "--checkpoint", str(ckpt),
            "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0",
            "--output", str(tmp_path / "out")]  # fmt: skip
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "[6/6] eurosat adaptformer-4 final seed 0 (blr" in r.stdout
    assert "| linear |" in r.stdout and "| adaptformer-4 |" in r.stdout
    summary = json.loads((tmp_path / "out/eurosat/linear/seed0/summary.json").read_text())
    assert summary["data"]["train"] == 24 and summary["test_images"] == 8
    linear = f"tune-blr{DEFAULT_BLR['adamw']['linear']:.3g}"
    tune = json.loads((tmp_path / f"out/eurosat/linear/{linear}/summary.json").read_text())
    assert tune["data"]["train"] == 16 and tune["test_images"] == 8
    again = run_cli(*args)
    assert again.returncode == 0 and again.stdout.count("done before") == 6


def test_tune_only_reports_val200_per_learning_rate(tmp_path):
    make_vtab_task(tmp_path / "vtab", "eurosat")
    fit = FakeFit()
    p = _protocol(tmp_path / "vtab", tmp_path / "out", tasks=("eurosat",), tune_only=True)
    (row,) = run_protocol(p, fit, print)
    assert [c[0] for c in fit.calls] == ["train800"] * 3
    assert row["blr"] == pytest.approx(row["default_blr"]) and len(row["val200_top1"]) == 3


def test_a_given_blr_is_the_base_the_grid_multiplies(tmp_path):
    make_vtab_task(tmp_path / "vtab", "eurosat")
    fit = FakeFit()
    p = _protocol(tmp_path / "vtab", tmp_path / "out", tasks=("eurosat",), lr_grid=(0.5, 2.0),
                  tune_only=True, base={"epochs": 1, "blr": 0.01})  # fmt: skip
    assert p.default_blr("adaptformer-8") == 0.01
    run_protocol(p, fit, print)
    assert [c[2] for c in fit.calls] == [pytest.approx(0.005), pytest.approx(0.02)]
