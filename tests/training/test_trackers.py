"""`--log-to tensorboard mlflow wandb`: what each tracker wrote, read back with its own tools."""

from __future__ import annotations

import json
import sys

import pytest

from adaptformer.cli import main

from ..runs import make_checkpoint, make_image_folder, train_args

EPOCHS, STEPS = 2, 3  # 27 training images, batch 8: 3 steps an epoch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers")
    return make_image_folder(root / "data"), make_checkpoint(root / "vit.safetensors")


@pytest.fixture
def quiet_trackers(monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI", "WANDB_PROJECT",
                "MLFLOW_ALLOW_FILE_STORE"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_every_tracker_gets_steps_epochs_and_the_test_score(setup, tmp_path, quiet_trackers):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    data, ckpt = setup
    run = tmp_path / "run"
    argv = train_args(data, ckpt, run, "--epochs", str(EPOCHS), "--log-to", "tensorboard",
                      "mlflow", "wandb")  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]

    # TensorBoard: event files read back with TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("step/train_loss")] == list(range(EPOCHS * STEPS))
    val = events.Scalars("epoch/val_top1")  # TensorBoard stores float32
    assert [e.step for e in val] == [r["epoch"] + 1 for r in rows]
    assert [e.value for e in val] == pytest.approx([r["val_top1"] for r in rows])
    assert events.Scalars("epoch/test_top1")[0].value == pytest.approx(summary["test_top1"])

    # MLflow: the local file store in the run folder, through MLflow's client
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("adaptformer").experiment_id])
    assert found.info.run_name == "run" and found.data.params["method"] == "adaptformer"
    history = client.get_metric_history(found.info.run_id, "val_top1")
    assert [(m.step, m.value) for m in history] == [(r["epoch"] + 1, r["val_top1"]) for r in rows]
    assert len(client.get_metric_history(found.info.run_id, "step_train_loss")) == EPOCHS * STEPS

    # W&B: offline (no API key), one run folder whose record log (`wandb sync` uploads it) holds
    # the config, the per-step and per-epoch keys and the test score. wandb >= 0.19 reads that
    # log only in its Go core, so its protobuf records are checked for the keys and values.
    (offline,) = (run / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    records = log.read_bytes()
    for key in (b"step/train_loss", b"epoch/val_top1", b"test_top1", b"adaptformer"):
        assert key in records, key
    assert json.dumps(summary["test_top1"]).encode() in records


def test_a_missing_tracker_package_is_one_line_before_anything_is_written(
    setup, tmp_path, capsys, monkeypatch, quiet_trackers
):
    data, ckpt = setup
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    run = tmp_path / "run"
    capsys.readouterr()
    code = main(train_args(data, ckpt, run, "--epochs", "1", "--log-to", "wandb"))
    err = capsys.readouterr().err
    assert code == 2 and "--log-to wandb needs the wandb package" in err.strip().splitlines()[-1]
    assert not run.exists()
