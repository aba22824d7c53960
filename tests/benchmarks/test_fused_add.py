"""benchmarks/fused_add.py: the A/B runs both implementations and they agree."""

from __future__ import annotations

import json

from adaptformer.layers import AdaptMLP

from .conftest import load_script


def test_ab_times_both_paths_and_restores_the_fused_one(capsys):
    script = load_script("fused_add")
    fused = AdaptMLP.add_to
    argv = ["--model", "test_vit", "--img-size", "32", "--batch-size", "2", "--pairs", "3",
            "--rounds", "1"]  # fmt: skip
    assert script.main(argv) == 0
    assert AdaptMLP.add_to is fused
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["max_abs_difference"] < 1e-5
    assert [r["add_to"] for r in record["results"]] == ["fused", "plain"]
