"""benchmarks/speed.py: sections can be rerun one at a time and merged into one record."""

from __future__ import annotations

import json

import pytest
from toolkit import BenchConfig

from .conftest import load_script

TINY = BenchConfig(model="test_vit", img_size=32, batch_size=4, num_classes=5)


@pytest.fixture
def script(monkeypatch):
    module = load_script("speed")
    tiny_plan = {
        "base": TINY,
        "overhead_methods": ["adaptformer-16"],
        "pairs": 2,
        "block_pairs": 4,
        "profile_methods": ["adaptformer-16"],
        "family_methods": ["backbone", "adaptformer-16", "adapter_plus-8", "houlsby-8"],
        "timing": {"warmup": 1, "steps": 2, "rounds": 2},
    }
    monkeypatch.setattr(module, "plan", lambda args: tiny_plan)
    monkeypatch.setattr(module, "matmul_peak_flops", lambda device, precision: 1e11)
    return module


def test_merge_keeps_earlier_sections_and_lists_every_command(script, tmp_path, capsys):
    out = str(tmp_path)
    assert script.main(["--sections", "overhead", "--out", out]) == 0
    assert script.main(["--sections", "profile", "--merge", "--out", out]) == 0
    record = json.loads((tmp_path / "speed.json").read_text())
    assert set(record["sections"]) == {"overhead", "profile"}
    assert [r["sections"] for r in record["runs"]] == [["overhead"], ["profile"]]
    markdown = (tmp_path / "speed.md").read_text()
    assert "### Inference overhead of the adapters, paired" in markdown
    assert "### Where a training step's time goes" in markdown
    assert "--sections overhead" in markdown and "--sections profile --merge" in markdown
    assert (tmp_path / "speed_profile.txt").read_text().startswith("== adaptformer-16")


def test_the_family_section_times_every_preset(script, tmp_path):
    assert script.main(["--sections", "family", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "speed.json").read_text())
    family = record["sections"]["family"]
    assert [r["method"] for r in family["rows"]] == [
        "backbone", "adaptformer-16", "adapter_plus-8", "houlsby-8"
    ]  # fmt: skip
    assert all(r["train_images_per_s"] > 0 for r in family["rows"][1:])
    assert [r["method"] for r in family["overhead"]] == ["adaptformer-16", "adapter_plus-8",
                                                         "houlsby-8"]  # fmt: skip
    assert "### The adapter family" in (tmp_path / "speed.md").read_text()


def test_merge_without_an_earlier_record_is_a_clear_error(script, tmp_path):
    with pytest.raises(SystemExit, match="run without --merge first"):
        script.main(["--sections", "overhead", "--merge", "--out", str(tmp_path)])


def test_report_rewrites_the_markdown_from_the_json_alone(script, tmp_path, monkeypatch):
    out = str(tmp_path)
    assert script.main(["--sections", "overhead", "--out", out]) == 0
    before = (tmp_path / "speed.md").read_text()
    (tmp_path / "speed.md").unlink()

    def no_measuring(*args, **kwargs):
        raise AssertionError("--report must not measure")

    monkeypatch.setattr(script, "paired_inference_overhead", no_measuring)
    monkeypatch.setattr(script, "machine_info", no_measuring)
    assert script.main(["--report", "--out", out]) == 0
    assert (tmp_path / "speed.md").read_text() == before
