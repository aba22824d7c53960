"""A run folder's files under hostile conditions: a full disk while training (issue 24, item
13) and checkpoints whose values have the wrong type or shape (item 12)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from adaptformer.cli import main
from adaptformer.training.run_folder import read_checkpoint

from ..runs import make_checkpoint, make_image_folder, train_args

FULL = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
FAST = ("--epochs", "2", "--batch-size", "4", "--warmup-epochs", "0", "--max-steps-per-epoch", "1", "--bottleneck", "4")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fulldisk")
    return make_image_folder(root / "data", 4, 1), make_checkpoint(root / "vit.safetensors")


def _disk_fills_after(monkeypatch, saves: int) -> None:
    """``torch.save`` works ``saves`` times, then writes as it would to a full disk: to a path,
    torch's own C++ writer fails with a RuntimeError that does not say why (its message on
    /dev/full, recorded); to an open file, torch really writes into /dev/full, whose write
    raises OSError ENOSPC."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) <= saves:
            return real(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        with open(FULL, "wb") as full:  # a character device: opening it replaces nothing
            return real(obj, full, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.skipif(
    not (FULL.exists() and stat.S_ISCHR(FULL.stat().st_mode)), reason="needs /dev/full (Linux)"
)
def test_full_disk_while_checkpointing_is_exit_2_and_keeps_the_last_checkpoint(
    setup, tmp_path, monkeypatch, capsys
):
    data, ckpt = setup
    out = tmp_path / "run"
    _disk_fills_after(monkeypatch, saves=1)  # epoch 1's checkpoint is written, epoch 2's not
    code = main(train_args(data, ckpt, out, *FAST))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("adaptformer: error: no space left on device")
    assert read_checkpoint(out / "checkpoint.pt")["next_epoch"] == 1  # the last one survives
    assert not list(out.glob(".*.tmp"))


def test_full_disk_anywhere_in_a_command_is_exit_2(setup, tmp_path, monkeypatch, capsys):
    """Writes outside the atomic helpers (a plot, a log) fail with a bare OSError ENOSPC."""
    import adaptformer.training.runner as runner

    def plot(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "learning_curve.png")

    monkeypatch.setattr(runner, "plot_learning_curve", plot)
    data, ckpt = setup
    code = main(train_args(data, ckpt, tmp_path / "run", *FAST))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no space left on device" in err and "Traceback" not in err


# -- item 12: a checkpoint's values are type- and shape-checked when it is read ------------------


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the command catches it."""


@pytest.fixture(scope="module")
def interrupted(setup, tmp_path_factory) -> Path:
    """A 2-epoch run killed after writing epoch 1's checkpoint: ``--resume`` trains epoch 2."""
    import adaptformer.training.runner as runner

    data, ckpt = setup
    out = tmp_path_factory.mktemp("interrupted") / "run"
    real, calls = runner._save_checkpoint, []

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise Killed
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "_save_checkpoint", save)
        with pytest.raises(Killed):
            main(train_args(data, ckpt, out, *FAST))
    assert read_checkpoint(out / "checkpoint.pt")["next_epoch"] == 1
    return out


def _resume_with(folder: Path, tmp_path: Path, change, capsys) -> tuple[int, str]:
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, run / "checkpoint.pt")
    capsys.readouterr()
    code = main(["train", "--resume", "--output", str(run), "--workers", "0"])
    return code, capsys.readouterr().err


def _first_state(ckpt) -> dict:
    return next(iter(ckpt["optimizer"]["state"].values()))


CHANGES = {
    "string best score": (lambda c: c["best"].update(score="abc"), "best score"),
    "nan best loss": (lambda c: c["best"].update(loss=float("nan")), "best loss"),
    "string train loss": (lambda c: c["history"][0].update(train_loss="low"), "history"),
    "epoch out of order": (lambda c: c["history"][0].update(epoch=7), "history"),
    "optimizer not a mapping": (lambda c: c.update(optimizer=[1, 2]), "optimizer"),
    "optimizer without state": (lambda c: c["optimizer"].pop("state"), "optimizer"),
    "groups not a list": (lambda c: c["optimizer"].update(param_groups={}), "optimizer"),
    "scaler not a mapping": (lambda c: c.update(scaler="x"), "scaler"),
    "moment of a string": (lambda c: _first_state(c).update(exp_avg="x"), "optimizer state"),
}


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_read_checkpoint_checks_types(interrupted, tmp_path, case):
    change, words = CHANGES[case]
    ckpt = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=words) as err:
        read_checkpoint(tmp_path / "checkpoint.pt")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: _first_state(c).update(exp_avg=torch.zeros(3, 3)),  # crashed in the 1st step
        lambda c: c["best"].update(score="abc"),  # crashed comparing scores after the epoch
    ],
    ids=["wrong-shape moment", "string best score"],
)
def test_resume_refuses_a_damaged_checkpoint_in_one_line(interrupted, tmp_path, capsys, change):
    code, err = _resume_with(interrupted, tmp_path, change, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("adaptformer: error:")


@pytest.mark.parametrize("kind", ["fifo", "folder", "dangling link"])
def test_a_checkpoint_that_is_not_a_file_is_refused_not_trained_over(interrupted, tmp_path,
                                                                     capsys, kind):  # fmt: skip
    """Only a missing checkpoint means "start again from scratch"; a FIFO (which would hang
    the read), a folder or a dangling link in its place is one line, and nothing is written."""
    run = tmp_path / "run"
    shutil.copytree(interrupted, run)
    (run / "checkpoint.pt").unlink()
    {"fifo": lambda p: os.mkfifo(p), "folder": lambda p: p.mkdir(),
     "dangling link": lambda p: p.symlink_to(tmp_path / "gone")}[kind](run / "checkpoint.pt")
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    code = main(["train", "--resume", "--output", str(run), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint.pt" in err.strip().splitlines()[-1]
    assert "from scratch" not in err and sorted(p.name for p in run.iterdir()) == before
