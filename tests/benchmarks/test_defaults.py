"""benchmarks/defaults.py: the grid it plans, the `train` commands it runs, how it reads a run
(finished or stopped by the divergence guard) and the report it writes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from adaptformer.cli import build_parser as adaptformer_parser
from adaptformer.training.config import DEFAULT_BLR

from .conftest import load_script


def _settings(*argv: str):
    script = load_script("defaults")
    return script.settings_from_args(script.build_parser().parse_args(list(argv)))


def test_blr_flags_name_a_method_and_positive_values():
    script = load_script("defaults")
    assert script.parse_blr("linear=0.36,0.12") == ("linear", [0.36, 0.12])
    for bad in ("0.36", "lienar=0.36", "linear=", "linear=fast", "linear=-1", "linear=nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="--blr"):
            script.parse_blr(bad)
    s = _settings("--blr", "linear=0.36", "--blr", "linear=0.12,0.36", "--blr", "full=1e-3")
    assert s.extra_blr == {"linear": [0.36, 0.12], "full": [0.001]}
    assert _settings("--grid", "full").blocks == (*script.FULL_GRID, script.TUNING_CHECK)
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(["--methods", "adaptformer-64"])  # names, not specs


def test_the_full_grid_is_every_new_data_set_method_size_and_length():
    script = load_script("defaults")
    runs = script.plan_runs(_settings("--grid", "full"))
    new = [r for r in runs if r.dataset in script.NEW_DATA]
    assert len(new) == len(script.NEW_DATA) * len(script.METHODS) * 2 * 2 == len(set(new))
    assert {(r.img_size, r.epochs) for r in new} == {(56, 3), (112, 3), (56, 10), (112, 10)}
    assert all(r.blr == DEFAULT_BLR["adamw"][r.method] for r in runs)
    tuning = {(r.dataset, r.img_size, r.epochs, r.method) for r in runs} - {
        (r.dataset, r.img_size, r.epochs, r.method) for r in new}  # fmt: skip
    assert tuning == {("eurosat", 112, 6, "linear"), ("dsprites_loc", 112, 6, "linear")}


def test_the_short_grid_runs_every_method_first_and_the_linear_probe_everywhere():
    script = load_script("defaults")
    runs = script.plan_runs(_settings("--blr", "linear=0.36"))
    first = runs[: 2 * (len(script.METHODS) + 1)]  # two data sets, 9 defaults + old linear each
    assert {(r.dataset, r.img_size, r.epochs) for r in first} == {
        ("imagenette", 56, 3), ("dsprites_ori", 56, 3)}  # fmt: skip
    assert {r.method for r in first} == set(script.METHODS)
    linear = {(r.dataset, r.img_size, r.epochs) for r in runs if r.method == "linear"}
    assert len(linear) == len(script.NEW_DATA) * 4 + 2  # every cell of the full grid + tuning
    for cell in linear:  # the old default next to the new one, wherever linear runs
        blrs = {r.blr for r in runs if (r.dataset, r.img_size, r.epochs) == cell
                and r.method == "linear"}  # fmt: skip
        assert blrs == {DEFAULT_BLR["adamw"]["linear"], 0.36}
    assert len(runs) == len(set(runs))
    some = script.plan_runs(_settings("--methods", "lora", "--datasets", "cifar10"))
    assert {(r.method, r.dataset) for r in some} == {("lora", "cifar10")}


def test_the_tuning_tasks_run_as_the_sweep_ran_them(tmp_path):
    script = load_script("defaults")
    run = script.Run("eurosat", 112, 6, "linear", DEFAULT_BLR["adamw"]["linear"])
    args = adaptformer_parser().parse_args(script.train_command(run, tmp_path, "c", tmp_path)[3:])
    assert (args.train_split, args.test_split, args.val_fraction) == ("train800", "val200", 0.0)
    assert (args.augment, args.precision, args.img_size, args.epochs) == ("none", "bf16", 112, 6)
    assert not hasattr(args, "train_per_class")


def test_every_command_is_a_valid_train_invocation_at_the_defaults(tmp_path):
    script = load_script("defaults")
    default = script.Run("flowers102", 56, 3, "lora", DEFAULT_BLR["adamw"]["lora"])
    cmd = script.train_command(default, tmp_path / "flowers102", "c.safetensors", tmp_path / "o")
    args = adaptformer_parser().parse_args(cmd[3:])
    assert args.command == "train" and args.method == "lora" and not hasattr(args, "blr")
    assert (args.img_size, args.epochs, args.train_per_class) == (56, 3, 4)
    assert (args.dataset, args.train_split, args.test_split) == ("vtab1k", "train800", "val200")
    for absent in ("lr", "precision", "batch_size", "divergence_guard"):  # train's own defaults
        assert not hasattr(args, absent)
    old = script.Run("imagenette", 112, 10, "linear", 0.36)
    args = adaptformer_parser().parse_args(script.train_command(old, tmp_path, "c", tmp_path)[3:])
    assert args.blr == 0.36 and args.dataset == "imagefolder" and args.test_split == "test"


def test_outcome_reads_the_guard_s_one_line_message():
    script = load_script("defaults")
    line = ("adaptformer: training stopped: diverged at epoch 1 step 3: the loss (moving average) "
            "reached 8.2, over 3x its start 2.41 (lr 0.0436); lower --blr (now 0.36; try a "
            "tenth), or pass --no-divergence-guard; the last good checkpoint is kept")  # fmt: skip
    assert script.outcome(1, line)["guard"] == {"kind": "diverged", "epoch": 1, "step": 3,
                                                "loss": 8.2}  # fmt: skip
    nan = "adaptformer: training stopped: loss is nan at epoch 2 step 4 (lr 0.1): lower --lr/--blr"
    assert script.outcome(1, nan)["guard"]["kind"] == "non-finite"
    assert script.outcome(0, "run folder: x")["guard"] is None
    assert script.outcome(2, "adaptformer: error: no such folder")["guard"] is None


def _fake_run(work: Path, run, *, stopped: bool = False, test: float = 50.0) -> None:
    folder = work / run.folder
    (folder / "run").mkdir(parents=True)
    guard = {"kind": "diverged", "epoch": 1, "step": 3, "loss": 8.2} if stopped else None
    (folder / "result.json").write_text(json.dumps({
        "command": "adaptformer train ...", "seconds": 42.0, "returncode": int(stopped),
        "guard": guard, "message": ""}))  # fmt: skip
    if stopped:
        return
    rows = [{"train_loss": 2.5, "val_top1": 40.0}, {"train_loss": 1.25, "val_top1": 55.0}]
    (folder / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "run" / "summary.json").write_text(json.dumps({
        "val_top1": 55.0, "best_epoch": 1, "test_top1": test,
        "data": {"train": 180, "test": 200}}))  # fmt: skip


def test_the_report_shows_scores_stops_and_missing_runs(tmp_path):
    script = load_script("defaults")
    s = _settings("--blr", "linear=0.36", "--datasets", "imagenette", "--methods", "linear",
                  "adaptformer")  # fmt: skip
    runs = script.plan_runs(s)
    new, old = DEFAULT_BLR["adamw"]["linear"], 0.36
    _fake_run(tmp_path, script.Run("imagenette", 56, 3, "linear", new), test=47.5)
    _fake_run(tmp_path, script.Run("imagenette", 56, 3, "linear", old), stopped=True)
    records = script.collect(runs, tmp_path)
    assert [r["diverged"] for r in records] == [False, True]
    assert records[0]["final_train_loss"] == 1.25 and records[1]["final_train_loss"] == 8.2
    assert records[0]["default"] and not records[1]["default"]
    meta = {"command": "python benchmarks/defaults.py --blr linear=0.36", "planned": len(runs),
            "machine": {"cpu": "cpu", "cores": 2, "torch": "2", "date": "today",
                        "load_average": [1.0]},
            "features": [{"dataset": "imagenette", "img_size": 56, "images": 24, "dim": 384,
                          "rms": 2.0, "l1": 614.0}]}  # fmt: skip
    md = script.report(s, runs, records, meta)
    assert f"2 of {len(runs)} planned runs done" in md
    header = next(line for line in md.splitlines() if line.startswith("| data set | px |"))
    assert header == "| data set | px | epochs | linear | linear blr 0.36 | adaptformer |"
    row = next(line for line in md.splitlines() if line.startswith("| Imagenette | 56 | 3 |"))
    assert row == "| Imagenette | 56 | 3 | 47.5 | **stop** e1 s3 | – |"
    row = next(line for line in md.splitlines() if line.startswith("| Imagenette | 112 | 3 |"))
    assert row == "| Imagenette | 112 | 3 | – | – | – |"  # planned, not run yet
    assert "The guard stopped 0 of 1 runs" not in md
    assert "None of the 1 runs at the default learning rates diverged" in md
    assert "| Imagenette | 56 | 3 | linear | 0.36 | – | 8.2 | – | – | diverged at epoch 1 " in md
    assert "| Imagenette | 56 | 2.00 | 614 |" in md
    short = script.report(s, runs, records, meta, full=False)
    assert "Every run:" not in short and "**stop** e1 s3" in short


def test_the_verdict_names_every_default_the_guard_stopped():
    script = load_script("defaults")
    rec = {"method": "vpt", "dataset": "cifar10", "img_size": 112, "epochs": 10, "default": True,
           "diverged": True}  # fmt: skip
    ok = {**rec, "method": "lora", "diverged": False}
    assert script.verdict([rec, ok]) == (
        "The guard stopped 1 of 2 runs at a default: vpt on CIFAR-10 at 112 px / 10 ep."
    )


def test_time_left_is_estimated_from_finished_runs_of_the_same_method_and_size():
    script = load_script("defaults")
    runs = [script.Run("cifar10", 56, 10, "lora", 0.012), script.Run("cifar10", 112, 3, "lora",
            0.012)]  # fmt: skip
    done = [{"dataset": "imagenette", "img_size": 56, "epochs": 3, "method": "lora", "blr": 0.012,
             "diverged": False, "seconds": 90.0}]  # fmt: skip
    minutes, unknown = script.estimate_minutes(runs, done)
    assert minutes == pytest.approx(10 * 30 / 60) and unknown == 1
