"""DDP: two gloo processes under torchrun give the single-process result (same global batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ..runs import make_checkpoint, make_image_folder, run_cli, train_args

# SGD: the all-reduce sums gradients in another order than one process does, and AdamW's
# division by sqrt(v) magnifies that rounding for tiny gradients (1.8e-5 seen); SGD keeps the
# two runs within 1e-5, which is what this test is about (the same batches and gradients).
DETERMINISTIC = ["--augment", "none", "--adapter-dropout", "0", "--epochs", "2",
                 "--optimizer", "sgd"]  # fmt: skip


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    data = make_image_folder(tmp_path / "data")
    ckpt = make_checkpoint(tmp_path / "vit.safetensors")
    single = tmp_path / "single"
    r = run_cli(*train_args(data, ckpt, single, *DETERMINISTIC, "--batch-size", "8"))
    assert r.returncode == 0, r.stderr

    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29517", "-m", "adaptformer",
           *train_args(data, ckpt, ddp, *DETERMINISTIC, "--batch-size", "4")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]

    a = json.loads((single / "summary.json").read_text())
    b = json.loads((ddp / "summary.json").read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert a["test_images"] == b["test_images"] == 12  # exact: no padded duplicates
    for key in ("val_top1", "test_top1", "test_top5", "best_epoch"):
        assert a[key] == b[key]
    wa = load_file(single / "adapter_model.safetensors")
    wb = load_file(ddp / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    la = [json.loads(x)["train_loss"] for x in (single / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["train_loss"] for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-4)


@pytest.mark.slow
def test_every_rank_refuses_a_folder_held_by_a_live_training(tmp_path):
    """Rank 0 finds the folder locked: both ranks exit with the one-line error (none hangs
    waiting for the other at a collective), and the folder gets nothing."""
    from adaptformer.training.run_folder import lock_run_folder

    data = make_image_folder(tmp_path / "data")
    ckpt = make_checkpoint(tmp_path / "vit.safetensors")
    out = tmp_path / "held"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29518", "-m", "adaptformer",
           *train_args(data, ckpt, out, "--epochs", "1", "--batch-size", "4")]  # fmt: skip
    with lock_run_folder(out):  # a live training in this (another) process
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode != 0
    refusals = [line for line in r.stderr.splitlines()
                if line.startswith("adaptformer: error: run folder") and "in use by" in line]  # fmt: skip
    assert len(refusals) == 2, r.stderr[-3000:]
    assert f"pid {os.getpid()}" in refusals[0]
    assert [p.name for p in out.iterdir()] == [".adaptformer.lock"]
