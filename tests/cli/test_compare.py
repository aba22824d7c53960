"""`adaptformer compare RUN...`: the table on stdout, the files with --out, bad folders exit 2."""

from __future__ import annotations

from ..training.test_compare import fake_run
from .test_train import _cli


def test_compare_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    runs = [fake_run(tmp_path / "adaptformer-64"), fake_run(tmp_path / "lora-8", "lora")]
    code, _ = _cli(capsys, "compare", *runs)
    assert code == 0
    code, _ = _cli(capsys, "compare", *runs, "--out", tmp_path / "cmp")
    assert code == 0
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def test_compare_refuses_a_folder_that_is_not_a_finished_run(tmp_path, capsys):
    code, err = _cli(capsys, "compare", tmp_path)
    assert code == 2 and "summary.json is missing or not a regular file" in err
