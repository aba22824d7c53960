"""DDP: two gloo processes under torchrun give the single-process result (same global batch);
every rank steps together, draws its own dropout masks, and a resume keeps the world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from adaptformer.training.config import TrainConfig
from adaptformer.training.engine import Schedule, train_one_epoch
from adaptformer.training.runner import fit
from adaptformer.utils.distributed import rank_seed

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


# --- in-process DDP workers (torch.multiprocessing + gloo), as in test_video_eval.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_gloo(rank: int, world: int, port: int) -> None:
    """Join a 2-process gloo group; collectives time out (an error, not a hang) after 60 s."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))


def _empty_batch_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1's second batch was dropped whole (every clip failed to decode): ``None``."""
    _join_gloo(rank, world, port)
    try:
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        ddp = DistributedDataParallel(model)
        g = torch.Generator().manual_seed(rank)
        batches = [(torch.randn(2, 4, generator=g), torch.tensor([0, 2])) for _ in range(4)]
        if rank == 1:
            batches[1] = None
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        schedule = Schedule(lr=0.1, min_lr=0.1, warmup_epochs=0.0, epochs=1)
        metrics = train_one_epoch(ddp, batches, optimizer, schedule, 0, torch.device("cpu"),
                                  progress=False)  # fmt: skip
        torch.save({"state": model.state_dict(), "metrics": metrics}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_a_rank_with_an_empty_batch_steps_with_the_others(tmp_path):
    """Every rank takes the same optimizer steps: no mismatched collective, equal weights."""
    out = str(tmp_path / "state")
    mp.spawn(_empty_batch_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    a, b = (torch.load(f"{out}.{rank}") for rank in range(2))
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k], b["state"][k], rtol=0, atol=0)
    assert a["metrics"]["train_images"] == b["metrics"]["train_images"] == 12  # 6 steps x 2


def _dropout_worker(rank: int, world: int, port: int, root: str) -> None:
    """Train the tiny ViT under a 2-process group and record every dropout mask it draws."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    masks: list[torch.Tensor] = []
    dropout = nn.functional.dropout

    def recording_dropout(x, p=0.5, training=True, inplace=False):
        if training and p > 0:  # the adapter's dropout: the mask this very call will draw
            state = torch.get_rng_state()
            masks.append(dropout(torch.ones_like(x), p, True).flatten()[:256] == 0)
            torch.set_rng_state(state)
        return dropout(x, p, training, inplace)

    nn.functional.dropout = recording_dropout
    try:
        base = Path(root)
        cfg = TrainConfig(
            model="vit_tiny_patch16_224", checkpoint=str(base / "vit.safetensors"),
            dataset="imagefolder", data_root=str(base / "data"), img_size=32, batch_size=4,
            epochs=1, blr=1.0, workers=0, val_fraction=0.25, augment="none",
            adapter_dropout=0.5, max_steps_per_epoch=2, device="cpu",
            output=str(base / "ddp-dropout"),
        )  # fmt: skip
        fit(cfg, progress=False)
    finally:
        nn.functional.dropout = dropout
    torch.save(masks, str(base / f"masks.{rank}"))


def test_rank_seeds_are_distinct_and_reproducible():
    """Per (seed, rank, epoch): a resumed rank reseeds exactly as in the unbroken run."""
    seeds = {rank_seed(s, r, e) for s in range(3) for r in range(1, 4) for e in range(5)}
    assert len(seeds) == 3 * 3 * 5
    assert rank_seed(0, 1, 2) == rank_seed(0, 1, 2)


def test_ranks_draw_different_dropout_masks(tmp_path):
    """Each rank seeds its model's random draws differently (seed + rank): with one shared seed
    every rank dropped the same units, which halves the regularisation DDP should give."""
    make_image_folder(tmp_path / "data")
    make_checkpoint(tmp_path / "vit.safetensors")
    mp.spawn(_dropout_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"masks.{rank}") for rank in range(2))
    assert len(a) == len(b) > 0
    assert all(m.any() for m in a)  # the masks drop something
    assert not any(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _tiny_config(root: Path, output: str, **overrides) -> TrainConfig:
    fields = dict(
        model="vit_tiny_patch16_224", checkpoint=str(root / "vit.safetensors"),
        dataset="imagefolder", data_root=str(root / "data"), img_size=32, batch_size=4,
        epochs=1, blr=1.0, workers=0, val_fraction=0.25, augment="none",
        max_steps_per_epoch=1, device="cpu", output=str(root / output),
    )  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


def _fit_worker(rank: int, world: int, port: int, root: str, output: str, resume: bool) -> None:
    """``fit`` as rank ``rank`` of a torchrun job; a refusal's message is saved, not raised."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        fit(_tiny_config(Path(root), output), resume=resume, progress=False)
    except ValueError as e:
        Path(root, f"error.{rank}").write_text(str(e))


def test_resume_with_another_world_size_is_refused(tmp_path):
    """The lr (from the global batch) and the data order depend on the process count: a resume
    with another count would silently train another run."""
    make_image_folder(tmp_path / "data")
    make_checkpoint(tmp_path / "vit.safetensors")
    fit(_tiny_config(tmp_path, "single"), progress=False)
    mp.spawn(_fit_worker, args=(2, _free_port(), str(tmp_path), "single", True), nprocs=2)
    for rank in range(2):
        message = (tmp_path / f"error.{rank}").read_text()
        assert "1 process" in message and "2" in message and "\n" not in message

    mp.spawn(_fit_worker, args=(2, _free_port(), str(tmp_path), "ddp", False), nprocs=2)
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
    r = run_cli("train", "--resume", "--output", str(tmp_path / "ddp"), "--workers", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    error = r.stderr.strip().splitlines()[-1]  # after the model's build logs
    assert error.startswith("adaptformer: error:")
    assert "2 processes" in error and "1 process" in error and "--nproc_per_node=2" in error


@pytest.mark.slow
def test_every_rank_refuses_a_folder_held_by_a_live_training(tmp_path):
    """Rank 0 finds the folder locked: every rank raises the one-line error (none hangs
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
    # Rank 0's refusal is broadcast, so no rank waits at a collective (the run ends within the
    # timeout); torchrun stops the other rank as soon as one exits, so its own copy of the line
    # is printed only if it gets there first.
    assert 1 <= len(refusals) <= 2, r.stderr[-3000:]
    assert f"pid {os.getpid()}" in refusals[0]
    assert [p.name for p in out.iterdir()] == [".adaptformer.lock"]


def _claim_worker(rank: int, world: int, port: int, out: str, results: str) -> None:
    from adaptformer.training.run_folder import claim_run_folder

    _join_gloo(rank, world, port)
    try:
        with claim_run_folder(Path(out), resume=False, is_main=rank == 0):
            answer = "entered"
        dist.barrier()  # a rank that entered would wait here for one that did not
    except ValueError as e:
        answer = str(e)
    finally:
        dist.destroy_process_group()
    (Path(results) / f"rank{rank}").write_text(answer)


def test_every_rank_raises_rank_0s_refusal(tmp_path):
    """claim_run_folder under 2 gloo ranks with the folder held elsewhere: both ranks raise the
    same one-line error (rank 1 never enters a run rank 0 refused)."""
    from adaptformer.training.run_folder import lock_run_folder

    out, results = tmp_path / "held", tmp_path / "results"
    results.mkdir()
    with lock_run_folder(out):  # this process: another live training
        mp.spawn(_claim_worker, args=(2, _free_port(), str(out), str(results)), nprocs=2)
    answers = [(results / f"rank{r}").read_text() for r in (0, 1)]
    assert answers[0] == answers[1] and "is in use by another `adaptformer train`" in answers[0]
    assert f"pid {os.getpid()}" in answers[0]
