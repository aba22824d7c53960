"""benchmarks/video_methods.py: its table is a list of plain `adaptformer train` commands, the
full fine-tuning grid is chosen on validation, and an interrupted table continues."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from adaptformer.cli import build_parser
from adaptformer.cli.train import config_from_args

from .conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("video_methods")


def _summary(val: float, loss: float, test: float) -> dict:
    return {"trainable_params": 598_276, "trainable_percent": 2.7467, "val_top1": val,
            "val_loss": loss, "test_top1": test, "artifact_bytes": 2_399_061}  # fmt: skip


def test_every_row_is_a_valid_train_command(script, capsys):
    assert script.main(["--print-commands", "--epochs", "2", "--work", "no/such/dir"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("adaptformer make-motion-data --out no/such/dir/data")
    runs = []
    for line in lines[1:]:
        argv = shlex.split(line)
        assert argv[:2] == ["adaptformer", "train"]
        cfg = config_from_args(build_parser().parse_args(argv[1:]))  # validates every value
        assert cfg.dataset == "video-list" and cfg.epochs == 2 and cfg.flip is False
        assert cfg.lr is None and cfg.warmup_epochs is None  # today's defaults
        runs.append((cfg.method, cfg.seed, cfg.layer_decay, cfg.new_params_lr_scale))
    # the comparison first: the likeliest grid point, AdaptFormer, full with the defaults; then
    # the rest of the grid and the other seed (the grid's choice joins once the grid is done)
    assert runs[:7] == [("full", 0, 0.75, 100.0), ("adaptformer", 0, 1.0, 1.0),
                        ("full", 0, 1.0, 1.0), ("full", 0, 0.75, 1000.0),
                        ("full", 0, 0.75, 10.0), ("adaptformer", 1, 1.0, 1.0),
                        ("full", 1, 1.0, 1.0)]  # fmt: skip
    methods = {m for m, *_ in runs}
    assert methods == {"linear", "full", "vpt", "lora", "adaptformer", "adapter_plus",
                       "houlsby", "pfeiffer"}  # fmt: skip
    assert all(sum(r[:2] == (m, s) for r in runs) >= 1 for m in methods for s in (0, 1))


def test_the_grid_is_chosen_on_validation_with_the_loss_breaking_ties(script):
    grid = {"a": _summary(90.0, 0.5, 99.0), "b": _summary(95.0, 0.4, 80.0),
            "c": _summary(95.0, 0.3, 70.0)}  # fmt: skip
    assert script.chosen_grid_point(grid) == "c"  # best val, then lower val loss; test ignored
    assert script.chosen_grid_point({**grid, "d": None}) is None  # not before every point ran


def test_table_reports_mean_spread_and_each_seed(script):
    rows = {"AdaptFormer-64": {0: _summary(95.0, 0.1, 96.33) | {"time_embed_max": 0.1329},
                               1: _summary(97.0, 0.1, 98.33) | {"time_embed_max": 0.00041}},
            "LoRA-8": {0: _summary(90.0, 0.1, 91.0)}, "Houlsby (r 8)": {}}  # fmt: skip
    table = script.table(rows, (0, 1))
    assert ("| AdaptFormer-64 | 598,276 | 2.75% | 96.0 ± 1.0 | 97.3 ± 1.0 | 96.3 / 98.3 | "
            "0.13 / 0.00041 | 2.29 MiB |") in table  # fmt: skip
    assert "| LoRA-8 | 598,276 | 2.75% | 90.0 (1 seed) | 91.0 (1 seed) | 91.0 / - | - / - |" in table
    assert "| Houlsby (r 8) | | | not run yet |" in table


def test_time_embed_max_reads_the_kept_task_file(script, tmp_path):
    import torch
    from safetensors.torch import save_file

    task = tmp_path / "adapter_model.safetensors"
    assert script.time_embed_max(task) is None  # no task file (yet)
    save_file({"head.weight": torch.ones(2, 2)}, task)
    assert script.time_embed_max(task) is None  # no time_embed: an image model
    save_file({"backbone.time_embed": torch.tensor([[0.1, -0.5], [0.0, 0.2]])}, task)
    assert script.time_embed_max(task) == 0.5


def test_a_started_run_is_resumed_and_a_finished_one_skipped(script, tmp_path, monkeypatch):
    work = tmp_path / "work"
    args = type("Args", (), {"work": work, "data": work / "data", "checkpoint": Path("ck"),
                             "epochs": 2})()  # fmt: skip
    calls = []

    def fake_run(cmd, check, cwd):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        (out / "summary.json").write_text(json.dumps(_summary(1.0, 1.0, 1.0)))

    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(script.subprocess, "run", fake_run)
    started = tmp_path / work / "seed0" / "linear"
    started.mkdir(parents=True)
    (started / "config.yaml").write_text("{}")  # killed before its first checkpoint
    script.train("linear", ["--method", "linear"], 0, args)
    assert calls[-1][-1] == "--resume"
    fresh = tmp_path / work / "seed1" / "linear"
    fresh.mkdir(parents=True)
    script.train("linear", ["--method", "linear"], 1, args)
    assert calls[-1][-1] != "--resume" and len(calls) == 2
    script.train("linear", ["--method", "linear"], 1, args)  # finished: not run again
    assert len(calls) == 2


def test_a_partial_table_lists_every_row_and_says_it_is_partial(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "ROOT", tmp_path)
    args = argparse.Namespace(
        work=Path("w"), data=Path("w/data"), checkpoint=Path("ck"), epochs=4, seeds=[0, 1],
        methods=list(script.METHODS), full_grid=list(script.FULL_GRID), directions=4,
    )  # fmt: skip
    done = tmp_path / "w" / "seed0" / "adaptformer64"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps(_summary(99.0, 0.1, 98.0)))
    results = script.collect(args)
    assert results["rows"][script.TUNED_FULL] == {} and results["chosen"] is None
    assert list(results["rows"]) == list(script.METHODS)
    meta = {
        "command": "c",
        "data_command": ["d"],
        "machine": {"cpu": "x", "cores": 2, "torch": "t", "date": "d", "load_average": []},
    }
    text = script.report(results, args, meta)  # fmt: skip
    assert text.startswith("**Partial table: 1 of 20 runs finished**")
    assert "| AdaptFormer-64 | 598,276 | 2.75% | 99.0 (1 seed) | 98.0 (1 seed) | 98.0 / - |" in text


def test_the_8_direction_variant_keeps_its_runs_outputs_and_section_apart(
    script, tmp_path, monkeypatch, capsys
):
    assert script.main(["--print-commands", "--directions", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("adaptformer make-motion-data --out runs/video-methods-8dir/data")
    assert lines[0].endswith("--directions 8")
    assert all("--out runs/video-methods-8dir/seed" in line for line in lines[1:])
    monkeypatch.setattr(script, "ROOT", tmp_path)
    docs = tmp_path / "docs" / "video.md"
    docs.parent.mkdir()
    docs.write_text("<!-- video-methods:begin -->\nfour\n<!-- video-methods:end -->\n"
                    "<!-- video-methods-8dir:begin -->\n<!-- video-methods-8dir:end -->\n")  # fmt: skip
    assert script.main(["--report-only", "--update-docs", "--directions", "8"]) == 0
    text = docs.read_text()
    assert "\nfour\n" in text  # the 4-direction table is untouched
    assert "8 directions, chance 12.5%" in text.split("video-methods-8dir:begin")[1]
    assert (tmp_path / "benchmarks/results/video_methods_8dir.json").is_file()
    assert not (tmp_path / "benchmarks/results/video_methods.json").exists()
