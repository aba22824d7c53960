"""benchmarks/multitask.py: the mixes it times are what it says, and a tiny run end to end
(a tiny ViT standing in for the shared ViT-S/14, random images for the photos) writes its
report, its tables and the docs section, with every path's answers checked against the others."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from ..helpers import tiny_vit
from .conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("multitask")


@pytest.mark.parametrize("k", [1, 2, 8, 32])
def test_a_batch_holds_k_distinct_tasks_equally_often(script, k):
    names = [f"t{i}" for i in range(32)]
    tasks = script.batch_tasks(names, k, 32, seed=k)
    counts = Counter(tasks)
    assert len(counts) == k and set(counts.values()) == {32 // k}
    assert script.batch_tasks(names, k, 32, seed=k) == tasks  # the same mix every run


def test_a_tiny_run_writes_the_report_and_the_docs_section(script, tmp_path, monkeypatch):
    pytest.importorskip("peft")

    def tiny_backbone(name, checkpoint=None, img_size=None, num_classes=0, **kwargs):
        torch.manual_seed(0)  # the same backbone for every call, as from one checkpoint
        model = tiny_vit(depth=2, num_classes=0)
        model.reset_classifier(num_classes)
        return model

    monkeypatch.setattr(script.af, "create_backbone", tiny_backbone)
    monkeypatch.setattr(script, "photos", lambda model, n, size: torch.randn(n, 3, 32, 32))
    ckpt = tmp_path / "ckpt.safetensors"
    ckpt.write_bytes(b"unused: the backbone is built by tiny_backbone")
    docs = tmp_path / "multitask.md"
    docs.write_text("before\n<!-- multitask:begin -->\nold\n<!-- multitask:end -->\nafter\n")
    args = ["--checkpoint", str(ckpt), "--img-size", "32", "--batch", "4", "--distinct", "1",
            "2", "4", "--repeats", "1", "--warmup", "0", "--compile-scenarios", "--no-train",
            "--out", str(tmp_path / "out"), "--docs", str(docs)]  # fmt: skip
    assert script.main(args) == 0
    report = json.loads((tmp_path / "out" / "multitask.json").read_text())
    assert [r["scenario"] for r in report["results"]] == list(script.MIXES)
    for r in report["results"]:
        assert set(r["images_per_s"]) == {"single", "bare"} | {
            f"{p} {k}" for p in ("banks", "loop") for k in (1, 2, 4)
        }
        assert max(r["max_abs_error"].values()) < 1e-4  # banks answer as the per-task loop
    assert max(report["peft"]["max_abs_error"].values()) < 1e-4  # and as PEFT, same weights
    text = docs.read_text()
    assert "old" not in text and "| AdaptFormer-64 |" in text and "banks / PEFT" in text
    assert text.startswith("before\n") and text.endswith("after\n")
