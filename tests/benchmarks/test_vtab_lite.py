"""benchmarks/vtab_lite.py: valid commands, a time estimate inside the budget, the docs section."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptformer.cli import build_parser

from .conftest import load_script


def script_default(kind: str) -> str:
    from adaptformer.training.config import DEFAULT_BLR

    return f"{DEFAULT_BLR['adamw'][kind]:g}"


def test_every_command_is_a_valid_vtab_invocation():
    script = load_script("vtab_lite")
    cmd = script.vtab_command(Path("d"), Path("o"), Path("c.safetensors"), ["eurosat"],
                              script.METHODS, (0, 1), script.LR_GRID, epochs=20)  # fmt: skip
    args = build_parser().parse_args(cmd[3:])
    assert args.command == "vtab" and args.methods == list(script.METHODS)
    assert args.epochs == 20 and args.img_size >= 112 and args.precision == "bf16"
    tune = script.vtab_command(Path("d"), Path("o"), Path("c"), ["eurosat"], ["full"], (0,),
                               script.LR_GRID, tune_only=True)  # fmt: skip
    assert build_parser().parse_args(tune[3:]).tune_only


def test_the_table_runs_every_first_seed_before_any_second():
    script = load_script("vtab_lite")
    units = script.table_units(Path("d"), Path("o"), Path("c"), script.METHODS)
    parsed = [build_parser().parse_args(u[3:]) for u in units]
    seeds = [a.seeds for a in parsed]
    assert all(len(s) == 1 for s in seeds) and seeds == sorted(seeds)
    twice = {a.methods[0] for a in parsed if a.seeds == [1]}
    assert twice == set(script.TWO_SEEDS) >= {"adapter_plus-8", "houlsby-8", "pfeiffer-48"}
    assert len(units) == len(script.TASKS) * (len(script.METHODS) + len(script.TWO_SEEDS))


def test_one_methods_second_seed_runs_alone_and_joins_the_committed_rows():
    script = load_script("vtab_lite")
    units = script.table_units(Path("d"), Path("o"), Path("c"), ["lora-8"], (1,))
    parsed = [build_parser().parse_args(u[3:]) for u in units]
    assert [(a.methods, a.seeds) for a in parsed] == [(["lora-8"], [1])] * len(script.TASKS)

    def row(method, seed, task, top1=50.0):
        return {"method": method, "seed": seed, "task": task, "test_top1": top1}

    committed = [row(m, 0, t) for m in ("linear", "lora-8") for t in script.TASKS]
    committed += [row("full", 1, t) for t in script.TASKS]
    new = [row("lora-8", 1, t, 60.0) for t in reversed(script.TASKS)]
    merged = script.merge_table_rows(committed, new)
    assert len(merged) == len(committed) + len(new)
    assert [r for r in merged if r["method"] == "lora-8" and r["seed"] == 1] == new[::-1]
    assert [(r["seed"], r["method"]) for r in merged] == sorted(
        [(r["seed"], r["method"]) for r in merged],
        key=lambda k: (k[0], script.METHODS.index(k[1])),
    )
    # measuring a pair again replaces it instead of adding rows
    assert len(script.merge_table_rows(merged, new)) == len(merged)


def test_the_headline_fits_the_five_hour_budget():
    script = load_script("vtab_lite")
    hours = script.plan()
    assert set(hours) == {*script.SECTIONS, "headline", "total"}
    assert hours["headline"] == pytest.approx(hours["total"] - hours["defaults"])
    assert hours["headline"] <= 5.25  # "about 5 hours" (5.08 since LoRA-8 got its second seed)
    some = script.plan(["linear", "adapter_plus-8"])  # --plan --methods: only their runs
    assert 0 < some["table"] < hours["table"] and 0 < some["defaults"] < hours["defaults"]


def test_render_writes_table_defaults_convergence_and_precision(tmp_path):
    script = load_script("vtab_lite")
    rows = []
    for task, group in (("eurosat", "specialized"), ("dsprites_loc", "structured")):
        for method, score in (("linear", 50.0), ("adaptformer-64", 80.0)):
            rows.append(
                {
                    "task": task,
                    "group": group,
                    "method": method,
                    "seed": 0,
                    "blr": 4e-3,
                    "default_blr": 4e-3,
                    "epochs": 10,
                    "val200_top1": {"0.0012": score - 5, "0.004": score, "0.012": score - 1},
                    "test_top1": score,
                    "trainable_params": 5e5,
                    "artifact_bytes": 2**21,
                }
            )
    sweep = [{"base_blr": 4e-3, **{k: r[k] for k in ("task", "method", "blr", "val200_top1")}}
             for r in rows]  # fmt: skip
    seed1 = {**rows[1], "seed": 1, "test_top1": 78.0}
    rows.append(seed1)
    result = {
        "machine": {"date": "2026-12-01", "cpu": "cpu", "cores": 2, "torch": "2"},
        "common": script.COMMON, "lr_grid": [0.3, 1.0, 3.0], "rows": rows, "sweep": sweep,
        "convergence": [{**rows[1], "epochs": 20, "test_top1": 80.5},
                        {**seed1, "epochs": 20, "test_top1": 80.5}],
        "step_times": {"rows": [{"method": "adaptformer", "precision": p, "images_per_s": v}
                                for p, v in (("fp32", 25.0), ("bf16", 36.0))]},
        "fp32": [{**rows[1], "test_top1": 79.0}],
    }  # fmt: skip
    md = script.render(result, tmp_path)
    assert "| adaptformer-64 | 500.0 K | 2.0 MiB | 79.0 ± 1.4 | 80.0 |" in md
    assert "adaptformer-64: mean ± sd over seeds 0 and 1, the others seed 0." in md
    assert "(2026-12-01, cpu, 2 cores" in md  # no run says when it finished: the machine's day
    for i, row in enumerate(rows):
        row["finished"] = f"2026-11-{28 + i % 2}"
    assert "(runs finished 2026-11-28 to 2026-11-29, cpu" in script.render(result, tmp_path)
    result["command"] = "python a.py --update-docs, then python a.py --seeds 1 --update-docs"
    assert ("Command: `python a.py --update-docs`, then `python a.py --seeds 1 --update-docs` "
            "(runs finished") in script.render(result, tmp_path)  # fmt: skip
    default = script_default("adaptformer")
    assert (
        f"| adaptformer-64 | 0.004 | 75.0 / 75.0 | 80.0 / 80.0 | 79.0 / 79.0 | x1 | {default} |"
        in md
    )
    assert "| adaptformer-64 | eurosat | 0 | 10 | 80.0 | 20 | 80.5 | +0.5 |" in md
    assert "| adaptformer-64 | eurosat | 1 | 10 | 78.0 | 20 | 80.5 | +2.5 |" in md
    # the check reads the seeds' mean: (80.0 + 78.0) / 2 -> 80.5
    assert "| **adaptformer-64** | eurosat | mean | 10 | 79.0 | 20 | 80.5 | **+1.5** |" in md
    assert "val200 top-1 on eurosat / dsprites_loc for each multiple" in md
    assert "| adaptformer | 25.0 | 36.0 |" in md and "scores 79.0 in fp32 and 80.0 in bf16" in md
    assert (tmp_path / "vtab_lite.png").read_bytes()[:4] == b"\x89PNG"


def test_render_of_a_sweep_alone_says_the_table_is_pending(tmp_path):
    script = load_script("vtab_lite")
    sweep = [{"task": "eurosat", "method": "full", "base_blr": 4e-4, "blr": 4e-4,
              "val200_top1": {"0.00012": 70.0, "0.0004": 75.0, "0.0012": 60.0}}]  # fmt: skip
    result = {"machine": {"date": "d", "cpu": "c", "cores": 2, "torch": "2"},
              "common": script.COMMON, "lr_grid": [0.3, 1.0, 3.0], "sweep": sweep}  # fmt: skip
    md = script.render(result, tmp_path)
    assert "has not been run yet" in md
    assert f"| full | 0.0004 | 70.0 | 75.0 | 60.0 | x1 | {script_default('full')} |" in md


def test_a_partial_sweep_shows_dashes_and_no_best(tmp_path):
    script = load_script("vtab_lite")
    sweep = [
        {"task": "eurosat", "method": "full", "base_blr": 4e-4,
         "val200_top1": {"0.00012": 70.0, "0.0004": 75.0}},
        {"task": "dsprites_loc", "method": "full", "base_blr": 4e-4,
         "val200_top1": {"0.00012": 10.0}},
    ]  # fmt: skip
    result = {"machine": {"date": "d", "cpu": "c", "cores": 2, "torch": "2"},
              "common": script.COMMON, "lr_grid": [0.3, 1.0, 3.0], "sweep": sweep,
              "sweep_runs": 3, "sweep_planned": 36}  # fmt: skip
    md = script.render(result, tmp_path)
    assert f"| full | 0.0004 | 70.0 / 10.0 | 75.0 / – | – / – |  | {script_default('full')} |" in md
    assert "Partial: 3 of the sweep's 36 runs" in md


def test_a_tie_in_the_sweep_keeps_the_default(tmp_path):
    script = load_script("vtab_lite")
    sweep = [{"task": t, "method": "full", "base_blr": 4e-4,
              "val200_top1": {"0.00012": a, "0.0004": b, "0.0012": 1.0}}
             for t, a, b in (("eurosat", 88.0, 89.0), ("dsprites_loc", 66.0, 65.0))]  # fmt: skip
    lines = script._defaults_section(sweep, [0.3, 1.0, 3.0])
    assert lines[-1].endswith(f"| x1 | {script_default('full')} |")


def test_a_method_outside_the_extended_grid_has_blank_cells_and_a_best(tmp_path):
    script = load_script("vtab_lite")
    sweep = [{"task": t, "method": m, "base_blr": 4e-3, "grid": g,
              "val200_top1": {"0.0012": 10.0, "0.004": 20.0, "0.012": 30.0, "0.036": 25.0}}
             for t in ("eurosat", "dsprites_loc")
             for m, g in (("lora-8", [0.3, 1.0, 3.0, 9.0]), ("full", [0.3, 1.0, 3.0]))]  # fmt: skip
    lines = script._defaults_section(sweep, [0.3, 1.0, 3.0, 9.0])
    assert "| 30.0 / 30.0 | 25.0 / 25.0 | x3 |" in lines[-2]
    assert "| 30.0 / 30.0 |  | x3 |" in lines[-1]


def test_the_sweep_grid_starts_at_three_points_and_only_grows_upwards():
    script = load_script("vtab_lite")
    for m in script.SWEEP_METHODS:
        grid = script.SWEEP_GRID[m]
        assert grid[:3] == (0.3, 1.0, 3.0) and grid == script.LR_GRID[: len(grid)]
