"""Experiment trackers: ``--log-to tensorboard mlflow wandb``.

Each gets the resolved config once, the loss and learning rate of every step, every epoch's row
of ``metrics.jsonl`` and the final test scores, from the main process only. All three are
optional packages (``pip install 'adaptformer[trackers]'``); a missing one is a one-line error
before training starts, never a silently dropped log. Where each writes:

- ``tensorboard``: event files in ``RUN/tensorboard`` (``tensorboard --logdir RUN``).
- ``mlflow``: the tracking server of ``MLFLOW_TRACKING_URI``, else a file store in
  ``RUN/mlruns`` (``mlflow ui --backend-store-uri RUN/mlruns``); experiment ``adaptformer``.
- ``wandb``: project ``adaptformer`` (``WANDB_PROJECT`` overrides); without ``WANDB_API_KEY``
  or ``WANDB_MODE`` it runs offline into ``RUN/wandb`` (``wandb sync`` uploads it later), so a
  training never stops at a login prompt.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from ..utils.errors import UserFacingError

_log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow", "wandb")  # each also the name of its Python package


class Tracker(Protocol):
    def step(self, step: int, values: dict[str, float]) -> None: ...

    def epoch(self, epoch: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


class _TensorBoard:
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def step(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"step/{k}", v, step)

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        for k, v in _numbers(values).items():
            self.writer.add_scalar(f"epoch/{k}", v, epoch)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store beside the run's other files: no server, no database
            uri = (out / "mlruns").resolve().as_uri()
            # MLflow 3 keeps its file store behind this opt-in (maintenance mode, still read
            # by `mlflow ui`); a server or database given by MLFLOW_TRACKING_URI needs none.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("adaptformer")
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:500] for k, v in config.items()})
        _log.info("mlflow: run %s at %s", self.run.info.run_id, uri)

    def step(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics({f"step_{k}": v for k, v in values.items()}, step=step)

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics(_numbers(values), step=epoch)

    def close(self) -> None:
        self.mlflow.end_run()


class _WandB:
    def __init__(self, out: Path, name: str, config: dict[str, Any]) -> None:
        import wandb

        mode = None
        if not os.environ.get("WANDB_MODE") and not os.environ.get("WANDB_API_KEY"):
            mode = "offline"  # no login prompt in the middle of a command
            _log.info("wandb: no WANDB_API_KEY or WANDB_MODE, logging offline to %s", out)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "adaptformer"), name=name,
                              dir=str(out), config=config, mode=mode)  # fmt: skip

    def step(self, step: int, values: dict[str, float]) -> None:
        self.run.log({f"step/{k}": v for k, v in values.items()})

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        self.run.log({f"epoch/{k}": v for k, v in _numbers(values).items()})
        self.run.summary.update(_numbers(values))

    def close(self) -> None:
        self.run.finish()


_CLASSES = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _WandB}


def check_available(names: list[str]) -> None:
    """A one-line error for a requested tracker whose package is missing (before training)."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserFacingError(
                f"--log-to {name} needs the {name} package: "
                f"pip install 'adaptformer[trackers]' (or pip install {name})"
            ) from None


class Trackers:
    """Every requested tracker behind one call per event; nothing when none is requested."""

    def __init__(self, names: list[str], out: Path, config: dict[str, Any]) -> None:
        self.open: list[Tracker] = []
        try:
            for name in dict.fromkeys(names):
                self.open.append(_CLASSES[name](out, out.name, config))
        except BaseException:
            self.close()
            raise

    def step(self, step: int, loss: float, lr: float) -> None:
        for t in self.open:
            t.step(step, {"train_loss": loss, "lr": lr})

    def epoch(self, epoch: int, values: dict[str, Any]) -> None:
        for t in self.open:
            t.epoch(epoch, values)

    def close(self) -> None:
        while self.open:
            self.open.pop().close()
