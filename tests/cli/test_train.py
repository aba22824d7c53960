"""`adaptformer train/eval/predict` end to end on a tiny synthetic task (no ../shared needed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..runs import cli_in_process, make_checkpoint, make_image_folder, run_cli, train_args


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return make_image_folder(root / "data"), make_checkpoint(root / "vit_tiny.safetensors"), root


@pytest.fixture(scope="module")
def finished(setup):
    data, ckpt, root = setup
    out = root / "run"
    r = run_cli(*train_args(data, ckpt, out))
    assert r.returncode == 0, r.stderr
    return out


def test_run_folder_has_every_artifact(finished):
    names = {p.name for p in finished.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "adapter_config.json", "adapter_model.safetensors",
            "checkpoint.pt", "learning_curve.png", "summary.json"} <= names  # fmt: skip
    summary = json.loads((finished / "summary.json").read_text())
    for key in ("method", "trainable_params", "backbone_params", "val_top1", "test_top1",
                "train_images_per_s", "artifact_bytes", "epochs", "seed"):  # fmt: skip
        assert key in summary
    assert summary["test_images"] == 12 and summary["epochs"] == 3
    lines = (finished / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    assert (finished / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_reproduces_the_test_score(finished):
    r = run_cli("eval", "--run", str(finished), "--workers", "0")
    assert r.returncode == 0, r.stderr
    summary = json.loads((finished / "summary.json").read_text())
    assert json.loads((finished / "eval.json").read_text())["test_top1"] == summary["test_top1"]


def test_predict_prints_top_k_labels(finished, setup):
    data = setup[0]
    files = [str(data / "test" / "class_0" / "000.png"), str(data / "test" / "class_2" / "001.png")]
    r = run_cli("predict", "--run", str(finished), "--top-k", "2", "--json", *files)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["file"] for row in rows] == files
    assert all(len(row["top"]) == 2 and row["top"][0][0].startswith("class_") for row in rows)


def _children(pid: int) -> list[str]:
    """The pids of ``pid``'s live child processes (its data-loader workers), from /proc."""
    try:
        return (Path(f"/proc/{pid}/task/{pid}/children")).read_text().split()
    except OSError:
        return []


def _without_workers_flag(args: list[str]) -> list[str]:
    i = args.index("--workers")
    return args[:i] + args[i + 2 :]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_killed_run_resumes_at_once_to_the_identical_result(setup, finished):
    """kill -9 a training with the default data-loader workers while they are alive, after its
    first checkpoint, then --resume at once: no stale lock, and the same summary, adapter bytes
    and losses as the unbroken run (which used --workers 0: augmentation must not depend on
    the worker count)."""
    data, ckpt, root = setup
    out = root / "killed"
    args = _without_workers_flag(train_args(data, ckpt, out))  # default --workers (2)
    proc = subprocess.Popen([sys.executable, "-m", "adaptformer", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    workers: list[str] = []
    while time.time() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if (out / "checkpoint.pt").exists() and workers:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert workers and not (out / "summary.json").exists()
    r = run_cli("train", "--resume", "--output", str(out))  # at once, default workers
    assert r.returncode == 0, r.stderr
    a = json.loads((finished / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    for key in ("val_top1", "test_top1", "test_top5", "best_epoch", "trainable_params"):
        assert a[key] == b[key]
    assert (finished / "adapter_model.safetensors").read_bytes() == (
        out / "adapter_model.safetensors"
    ).read_bytes()
    assert _losses(finished) == _losses(out)


def test_a_live_training_in_another_process_is_refused_by_pid(setup, tmp_path):
    """Two live trainings on one folder: the second is refused with the first's pid."""
    data, ckpt, _ = setup
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from adaptformer.training.run_folder import lock_run_folder\n"
         "with lock_run_folder(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(120)",
         str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run_cli(*train_args(data, ckpt, out, *FAST))
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"in use by another `adaptformer train` (pid {holder.pid}: " in r.stderr
    assert "lock_run_folder" in r.stderr  # the holder's command line
    r = run_cli(*train_args(data, ckpt, out, *FAST))  # the holder died: free at once
    assert r.returncode == 0, r.stderr


class _WritesAFile:
    """A pickle that, if unpickled without ``weights_only``, creates a file (harmless proof)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_resume_refuses_a_malicious_checkpoint_without_running_it(setup, finished, tmp_path):
    import shutil

    import torch

    run = tmp_path / "tampered"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    proof = tmp_path / "pwned"
    torch.save({"next_epoch": 1, "payload": _WritesAFile(proof)}, run / "checkpoint.pt")
    r = run_cli("train", "--resume", "--output", str(run), "--workers", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not a checkpoint this version can read safely" in r.stderr
    assert not proof.exists()
    assert not (run / "summary.json").exists()


def test_a_short_run_reaches_its_peak_lr(setup):
    """3 epochs with an explicit AdamW lr: the warm-up is a tenth of the run, not 20 epochs."""
    data, ckpt, root = setup
    out = root / "short"
    args = train_args(data, ckpt, out, "--optimizer", "adamw", "--lr", "1e-3")
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "warm-up over" in r.stderr and "to peak lr 0.001 (--lr)" in r.stderr
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(row["lr_peak"] for row in rows) == pytest.approx(1e-3, rel=0.35)


@pytest.mark.parametrize(
    ("method", "flags", "expected"),
    [
        ("adapter_plus", [], {"position": "post", "scale": "channel", "bottleneck": 8}),
        ("houlsby", ["--bottleneck", "4"], {"position": "houlsby", "init": "houlsby"}),
        ("pfeiffer", ["--scale", "0.5"], {"position": "post", "scale": 0.5, "bottleneck": 48}),
    ],
)
def test_adapter_presets_train_save_and_evaluate(setup, method, flags, expected):
    """``--method NAME`` fills in the paper's settings; a flag given explicitly wins."""
    data, ckpt, root = setup
    out = root / method
    r = run_cli(*train_args(data, ckpt, out, "--method", method, *flags))
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "adapter_config.json").read_text())["config"]
    assert config["method"] == method and expected.items() <= config.items()
    r = run_cli("eval", "--run", str(out), "--workers", "0")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "eval.json").read_text())["test_top1"] == summary["test_top1"]


def _losses(run):
    return [json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "-1"], "--lr must be positive"),
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--data-root", "/nonexistent/data"], "/nonexistent/data"),
        (["--layers", "40"], "layers contains block 40"),
        (["--batch-size", "1000"], "fewer than one global batch"),
        (["--warmup-epochs", "3"], "is not shorter than the run (--epochs 3)"),
    ],
)
def test_bad_values_exit_2_with_one_line_and_write_nothing(setup, flags, message):
    data, ckpt, root = setup
    out = root / "bad"
    r = run_cli(*train_args(data, ckpt, out), *flags)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("adaptformer: error:")
    assert not out.exists()


def test_wrong_checkpoint_for_the_backbone_is_refused(setup):
    data, ckpt, root = setup
    args = train_args(data, ckpt, root / "bad2")
    args[args.index("vit_tiny_patch16_224")] = "vit_small_patch16_224"
    r = run_cli(*args)
    assert r.returncode == 2 and "wrong shape" in r.stderr and not (root / "bad2").exists()


def test_unknown_method_is_refused_by_the_parser(setup):
    data, ckpt, root = setup
    r = run_cli(*train_args(data, ckpt, root / "bad3"), "--method", "prefix")
    assert r.returncode == 2 and "invalid choice: 'prefix'" in r.stderr


def test_existing_run_folder_needs_resume(setup, finished):
    data, ckpt, _ = setup
    r = run_cli(*train_args(data, ckpt, finished))
    assert r.returncode == 2 and "--resume" in r.stderr


def test_nan_loss_keeps_the_last_good_checkpoint(setup, monkeypatch):
    """A NaN in epoch 1 stops the run with a clear message; epoch 0's checkpoint survives."""
    import torch

    from adaptformer.adapters.inject import unwrap
    from adaptformer.cli import build_parser
    from adaptformer.cli.train import config_from_args
    from adaptformer.training import runner
    from adaptformer.training.engine import NonFiniteLossError

    data, ckpt, root = setup
    out = root / "nan"
    real = runner.train_one_epoch

    def poisoned(model, loader, optimizer, schedule, epoch, *args, **kwargs):
        if epoch == 1:
            with torch.no_grad():
                unwrap(model).head.bias.fill_(float("nan"))
        return real(model, loader, optimizer, schedule, epoch, *args, **kwargs)

    monkeypatch.setattr(runner, "train_one_epoch", poisoned)
    args = build_parser().parse_args(train_args(data, ckpt, out))
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 2 step 0"):
        runner.fit(config_from_args(args), progress=False)
    ckpt_state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt_state["next_epoch"] == 1
    assert torch.isfinite(ckpt_state["task_state"]["head.bias"]).all()
    assert not (out / "summary.json").exists()


def test_bf16_accumulation_and_checkpointing_train(setup):
    data, ckpt, root = setup
    out = root / "bf16"
    r = run_cli(*train_args(data, ckpt, out), "--precision", "bf16", "--accum-steps", "2",
                "--grad-checkpointing", "--epochs", "1", "--batch-size", "4")  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["test_images"] == 12


def test_corrupt_images_are_skipped_and_counted_or_refused(setup, tmp_path):
    import shutil

    data, ckpt, _ = setup
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    (broken / "train" / "class_1" / "zz_broken.png").write_bytes(b"not a png at all")
    (broken / "test" / "class_2" / "zz_empty.png").write_bytes(b"")
    r = run_cli(*train_args(broken, ckpt, tmp_path / "run"), "--epochs", "1")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["skipped"] == 2 and summary["test_images"] == 12
    assert "zz_broken.png" in r.stderr  # the paths are logged
    r = run_cli(*train_args(broken, ckpt, tmp_path / "strict"), "--strict-data")
    assert r.returncode == 2 and "zz_" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "strict").exists()


def test_multilabel_list_trains_and_reports_map(setup, tmp_path):
    data, ckpt, _ = setup
    root = tmp_path / "ml"
    root.mkdir()
    lines = {"train": [], "test": []}
    for split in lines:
        for i, path in enumerate(sorted((data / split).rglob("*.png"))):
            labels = {path.parent.name, "odd" if i % 2 else "even"}
            lines[split].append(f"{path} {','.join(sorted(labels))}")
    for split, rows in lines.items():
        (root / f"{split}.txt").write_text("\n".join(rows) + "\n")
    args = train_args(root, ckpt, tmp_path / "run", "--epochs", "1")
    args[args.index("imagefolder")] = "multilabel"
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 <= summary["test_mAP"] <= 100 and "test_top1" not in summary


# -- untrusted run folders and careless commands (in-process: no interpreter start-ups) ------

FAST = ("--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "1")


def _cli(capsys, *argv):
    """Exit code and stderr of one in-process command; user errors must be one line."""
    code, _, err = cli_in_process(capsys, *argv)
    return code, err


def test_a_second_training_into_a_locked_folder_is_refused(setup, tmp_path, capsys):
    from adaptformer.training.run_folder import lock_run_folder

    data, ckpt, _ = setup
    out = tmp_path / "run"
    with lock_run_folder(out):  # stands in for a training that is still running
        code, err = _cli(capsys, *train_args(data, ckpt, out, *FAST))
    assert code == 2 and "is in use by another `adaptformer train`" in err
    assert [p.name for p in out.iterdir()] == [".adaptformer.lock"]
    code, err = _cli(capsys, *train_args(data, ckpt, out, *FAST))  # the lock file is no result
    assert code == 0, err


def test_output_that_is_a_file_is_a_one_line_error(setup, tmp_path, capsys):
    data, ckpt, _ = setup
    (tmp_path / "file").write_text("x")
    code, err = _cli(capsys, *train_args(data, ckpt, tmp_path / "file", *FAST))
    assert code == 2 and "is a file, not a folder" in err


def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch(
    setup, finished, tmp_path, capsys, caplog
):
    run = tmp_path / "early"
    run.mkdir()
    (run / "config.yaml").write_text((finished / "config.yaml").read_text())
    stale = run / ".checkpoint.pt.k2j3.tmp"
    stale.write_bytes(b"half a checkpoint")
    code, err = _cli(capsys, "train", "--resume", "--output", run, "--workers", "0")
    assert code == 0, err
    assert "starting the run again from scratch" in caplog.text
    assert not stale.exists() and (run / "summary.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_top1"] == json.loads((finished / "summary.json").read_text())["test_top1"]


def test_resume_without_a_run_folder_says_nothing_to_resume(tmp_path, capsys):
    code, err = _cli(capsys, "train", "--resume", "--output", tmp_path / "none")
    assert code == 2 and "nothing to resume" in err


def _tampered(finished, tmp_path, edit):
    import shutil

    import torch

    run = tmp_path / "tampered"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, run / "checkpoint.pt")
    return run


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["task_state"].pop("head.bias"), "missing from file: head.bias"),
        (lambda c: c["task_state"].update({"head.bias": c["task_state"]["head.bias"][:1]}),
         "shape mismatch: head.bias"),
        (lambda c: c["task_state"]["head.bias"].fill_(float("nan")), "NaN or infinite"),
        (lambda c: c.update(task_state=[1, 2]), "not a mapping of tensors"),
        (lambda c: c.update(next_epoch="3"), "next_epoch '3' is not a whole number"),
        (lambda c: c.update(next_epoch=9), "history is not 9 epoch rows"),
        (lambda c: c["best"].update(epoch=7), "best epoch 7 is not one of the 3 epochs"),
        (lambda c: c.update(rng={}), "optimizer or random state"),
        (lambda c: c["optimizer"].update(state={0: {"exp_avg": 1}}), "optimizer or random state"),
    ],
)  # fmt: skip
def test_a_tampered_checkpoint_is_a_one_line_error(finished, tmp_path, capsys, edit, message):
    run = _tampered(finished, tmp_path, edit)
    code, err = _cli(capsys, "train", "--resume", "--output", run, "--workers", "0")
    assert code == 2 and message in err
    assert not (run / "summary.json").exists()


def test_a_full_disk_keeps_the_last_good_checkpoint(setup, tmp_path, capsys, monkeypatch):
    import errno

    import torch

    data, ckpt, _ = setup
    out = tmp_path / "full"
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code, err = _cli(capsys, *train_args(data, ckpt, out, "--max-steps-per-epoch", "1"))
    assert code == 2 and "no space left on device" in err and "previous version is kept" in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["next_epoch"] == 1
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("where", ["--config", "config.yaml"])
def test_malformed_yaml_is_a_one_line_error(setup, finished, tmp_path, capsys, where):
    import shutil

    data, ckpt, _ = setup
    bad = "epochs: [1\nlr: {"
    if where == "--config":
        (tmp_path / "bad.yaml").write_text(bad)
        code, err = _cli(capsys, *train_args(data, ckpt, tmp_path / "r"), "--config",
                         tmp_path / "bad.yaml")  # fmt: skip
    else:
        run = tmp_path / "run"
        shutil.copytree(finished, run)
        (run / "config.yaml").write_text(bad)
        code, err = _cli(capsys, "eval", "--run", run, "--workers", "0")
    assert code == 2 and "is not valid YAML at line" in err


def test_wrong_types_in_a_run_config_are_a_one_line_error(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    text = (run / "config.yaml").read_text().replace("epochs: 3", "epochs: [3]")
    (run / "config.yaml").write_text(text.replace("lr: null", "lr: fast"))
    code, err = _cli(capsys, "eval", "--run", run, "--workers", "0")
    assert code == 2 and ("wrong type" in err or "must be" in err)


def test_garbage_backbone_checkpoint_is_a_one_line_error(setup, tmp_path, capsys):
    data, ckpt, _ = setup
    broken = tmp_path / "vit.safetensors"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    code, err = _cli(capsys, *train_args(data, broken, tmp_path / "r", *FAST))
    assert code == 2 and "not a valid safetensors file" in err
    assert not (tmp_path / "r").exists()


def test_a_bare_missing_key_is_explained(monkeypatch, capsys):
    from adaptformer.cli import models

    def broken(args):
        raise KeyError("config")

    monkeypatch.setattr(models, "run", broken)
    code, err = _cli(capsys, "models")
    assert code == 2 and "missing key 'config'" in err


def test_ctrl_c_prints_one_line_with_the_resume_command_and_exits_130(setup, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, workers included) after the first checkpoint:
    no traceback, exit 130, and the line says how to resume."""
    import os

    data, ckpt, _ = setup
    out = tmp_path / "interrupted"
    args = _without_workers_flag(train_args(data, ckpt, out, "--epochs", "30"))
    proc = subprocess.Popen([sys.executable, "-m", "adaptformer", *args], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoint.pt").exists():
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.02)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "adaptformer: interrupted; the last finished epoch is saved, resume with: "
        f"adaptformer train --resume --output {out}"
    )


def test_the_last_line_names_the_run_folder_even_when_generated(setup, tmp_path):
    data, ckpt, _ = setup
    args = train_args(data, ckpt, tmp_path / "x", *FAST)
    i = args.index("--output")
    r = run_cli(*(args[:i] + args[i + 2 :]), cwd=tmp_path)  # no --output: runs/<generated>
    assert r.returncode == 0, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("run folder: runs/imagefolder-adaptformer-")
    assert (tmp_path / last.removeprefix("run folder: ") / "summary.json").is_file()
    assert "run_folder" not in json.loads(r.stdout)  # stdout stays the summary


def test_an_unknown_device_is_one_line_with_the_choices(setup, tmp_path, capsys):
    data, ckpt, _ = setup
    code, err = _cli(capsys, *train_args(data, ckpt, tmp_path / "r", *FAST), "--device", "gpu")
    assert code == 2
    assert "--device gpu is not a device (did you mean cuda?); use auto, cpu, cuda" in err


def test_dry_run_prints_the_plan_and_writes_nothing(setup, tmp_path, capsys, caplog):
    data, ckpt, _ = setup
    caplog.set_level("INFO")
    out = tmp_path / "planned"
    code, err = _cli(capsys, *train_args(data, ckpt, out), "--dry-run")
    assert code == 0, err
    assert "schedule: adamw" in caplog.text and "dry run: nothing written" in caplog.text
    assert not out.exists()


def test_the_first_epoch_says_how_long_the_run_will_take(setup, tmp_path, capsys, caplog):
    data, ckpt, _ = setup
    caplog.set_level("INFO")
    code, err = _cli(capsys, *train_args(data, ckpt, tmp_path / "r", "--batch-size", "2"))
    assert code == 0, err
    speed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("speed: ")]
    assert len(speed) == 1 and "images/s over 5 steps" in speed[0]
    assert "for the 3 epochs to go" in speed[0]
