"""benchmarks/accuracy.py: the tuned lr is chosen on validation, ties by validation loss."""

from __future__ import annotations

import json

from .conftest import load_script


def test_choose_lrs_breaks_ties_by_val_loss_then_lower_lr(tmp_path):
    script = load_script("accuracy")
    s = script.Settings(rows=["linear", "vpt-10"], sweep_points=3)
    results = {
        "linear": {1e-3: (30.0, 1.2), 3e-3: (37.0, 1.5), 1e-2: (37.0, 1.4)},  # tie -> lower loss
        "vpt-10": {1e-3: (39.0, 1.4), 3e-3: (39.0, 1.4), 1e-2: (20.0, 2.0)},  # full tie -> lower lr
    }
    for row, by_lr in results.items():
        assert sorted(by_lr) == script.sweep_grid(row, 3)
        for lr, (top1, loss) in by_lr.items():
            run = script.Run("cifar10", "tuned", row, 0, lr, "sweep", ())
            (tmp_path / run.folder).mkdir(parents=True)
            summary = {"val_top1": top1, "val_loss": loss}
            (tmp_path / run.folder / "summary.json").write_text(json.dumps(summary))
    chosen = script.choose_lrs(s, tmp_path)
    assert chosen == {("cifar10", "linear"): 1e-2, ("cifar10", "vpt-10"): 1e-3}


def test_choose_lrs_waits_for_the_whole_sweep(tmp_path):
    script = load_script("accuracy")
    s = script.Settings(rows=["linear"], sweep_points=3)
    run = script.Run("cifar10", "tuned", "linear", 0, 1e-3, "sweep", ())
    (tmp_path / run.folder).mkdir(parents=True)
    (tmp_path / run.folder / "summary.json").write_text('{"val_top1": 50.0, "val_loss": 1.0}')
    assert script.choose_lrs(s, tmp_path) == {}
