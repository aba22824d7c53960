"""benchmarks/families.py: the support matrix is what actually runs, and its report."""

from __future__ import annotations

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
