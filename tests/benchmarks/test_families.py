"""benchmarks/families.py: the support matrix is what actually runs, and its report."""

from __future__ import annotations

import json

import pytest

from .conftest import load_script

families = load_script("families")


def test_refusals_become_numbered_notes_without_temporary_paths():
    yes = dict.fromkeys(families.FEATURES, "yes")
    rows = [
        {"family": "vit", "method": "full", **yes, "mixed": "refused: /tmp/x/run can't mix"},
        {"family": "vit", "method": "bitfit", **yes, "serve": "refused: /tmp/y/run can't mix"},
        {"family": "vit", "method": "vpt", **yes, "onnx": "FAILS: RuntimeError: boom"},
    ]
    md = families.format_matrix(rows)
    assert "| vit | full | yes | yes | yes | refused [1] |" in md
    assert "| vit | bitfit |" in md and md.count("refused [1]") == 2  # same reason, one note
    assert "FAILS [2]" in md and "[2] RuntimeError: boom" in md
    assert "[1] RUN can't mix" in md and "/tmp" not in md


@pytest.mark.slow
def test_the_matrix_runs_each_feature_for_real(tmp_path, monkeypatch):
    """The ViT row of an adapter method passes everything; full fine-tuning is refused where it
    would change a shared backbone, by the library's own checks (not by the script)."""
    monkeypatch.setattr(families, "METHODS", ("lora", "full"))
    case = next(c for c in families.CASES if c.family == "vit")
    rows = {r["method"]: r for r in families.matrix_rows(case, tmp_path)}
    assert all(rows["lora"][f] == "yes" for f in families.FEATURES), rows["lora"]
    assert rows["full"]["mixed"].startswith("refused: task(s) ['t'] were trained with full")
    assert rows["full"]["serve"].startswith("refused:")
    assert rows["full"]["onnx"] == "yes" and rows["full"]["task file"] == "yes"


def test_the_readme_summary_has_one_row_per_method_and_one_column_per_family():
    yes = dict.fromkeys(families.FEATURES, "yes")
    refused = dict.fromkeys(families.FEATURES, "-") | {"inject": "refused: no prompts in windows"}
    rows = [
        {"family": "vit", "method": "lora", **yes},
        {"family": "swin", "method": "lora", **yes},
        {"family": "vit", "method": "full", **yes, "mixed": "refused: /tmp/r shares weights"},
        {"family": "swin", "method": "vpt", **refused},
    ]
    md = families.format_summary(rows)
    assert md.splitlines()[0] == "| method | vit | swin |"
    assert "| lora | all | all |" in md
    assert "| full | all but mixed [1] | not run |" in md
    assert "| vpt | not run | refused [2] |" in md
    assert "[1] RUN shares weights" in md and "[2] no prompts in windows" in md


def test_a_family_measured_again_replaces_only_its_rows():
    old = [{"family": "vit", "v": 1}, {"family": "swin", "v": 1}, {"family": "eva", "v": 1}]
    rows = families.merge_rows(old, [{"family": "swin", "v": 2}])
    assert rows == [
        {"family": "vit", "v": 1},
        {"family": "eva", "v": 1},
        {"family": "swin", "v": 2},
    ]


def test_remeasuring_one_family_keeps_the_others_and_says_where_they_came_from(
    tmp_path, monkeypatch
):
    yes = dict.fromkeys(families.FEATURES, "yes")
    monkeypatch.setattr(families, "matrix_rows",
                        lambda case, work: [{"family": case.family, "method": "lora", **yes}])  # fmt: skip
    monkeypatch.setattr(families, "machine_info", lambda: {"cpu": "cpu", "cores": 2})
    families.main(["--sections", "matrix", "--families", "vit", "swin", "--out", str(tmp_path)])
    families.main(["--sections", "matrix", "--families", "swin", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "families.json").read_text())
    assert [r["family"] for r in result["matrix"]["rows"]] == ["vit", "swin"]
    assert result["matrix"]["command"].endswith("--families swin --out " + str(tmp_path))
    assert result["matrix"]["others"]["command"].endswith(
        "--families vit swin --out " + str(tmp_path)
    )
    assert (
        "Other families: `python benchmarks/families.py --sections matrix --families vit swin"
        in (tmp_path / "families.md").read_text()
    )
