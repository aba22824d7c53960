"""benchmarks/_docs.py's update_docs: the generated section replaces the old one, links work."""

from __future__ import annotations

import pytest

from .conftest import load_script


@pytest.fixture(scope="module")
def update_docs():
    return load_script("_docs").update_docs


def test_section_is_replaced_and_image_links_point_at_the_results(update_docs, tmp_path):
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    doc.write_text("intro\n<!-- speed:begin -->\nold table\n<!-- speed:end -->\noutro\n")
    results = tmp_path / "benchmarks" / "results"
    markdown = "new table ![b](speed_batch.png) ![w](https://example.org/x.png)\n"
    update_docs(markdown, doc, "speed", images=results)
    text = doc.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "](../benchmarks/results/speed_batch.png)" in text
    assert "](https://example.org/x.png)" in text  # absolute links are left alone


def test_missing_markers_are_an_error(update_docs, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("no markers here\n")
    with pytest.raises(ValueError, match="accuracy:begin"):
        update_docs("x", doc, "accuracy")
    assert doc.read_text() == "no markers here\n"
