"""benchmarks/video_methods.py: its table is a list of plain `adaptformer train` commands."""

from __future__ import annotations

import shlex

import pytest

from adaptformer.cli import build_parser
from adaptformer.cli.train import config_from_args

from .conftest import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("video_methods")


def test_every_row_is_a_valid_train_command(script, capsys):
    assert script.main(["--print-commands", "--epochs", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("adaptformer make-motion-data --out runs/video-methods/data")
    methods = []
    for line in lines[1:]:
        argv = shlex.split(line)
        assert argv[:2] == ["adaptformer", "train"]
        cfg = config_from_args(build_parser().parse_args(argv[1:]))  # validates every value
        assert cfg.dataset == "video-list" and cfg.epochs == 2 and cfg.flip is False
        methods.append(cfg.method)
    assert methods == ["linear", "full", "full", "vpt", "adaptformer"]


def test_table_reports_accuracy_and_size(script):
    summary = {"trainable_params": 598_276, "trainable_percent": 2.7467, "val_top1": 95.0,
               "test_top1": 96.33, "artifact_bytes": 2_399_061}  # fmt: skip
    table = script.table({"AdaptFormer-64": summary})
    assert "| AdaptFormer-64 | 598,276 | 2.75% | 95.0 | 96.3 | 2.29 MiB |" in table
