"""A task registry on disk: many small adapter files against one recorded backbone.

AdaptFormer's "scalable" claim (Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535) is
one frozen backbone plus a tiny file per task. An adapter only means something on the exact
weights it was trained with, so the registry records its backbone once (model name and the
sha256 of its weights, as ``adaptformer train`` stores them in each run's metadata) and refuses
any task trained on another one.

Layout::

    ROOT/registry.json                 backbone record + one entry per task (source, date)
    ROOT/NAME/adapter_config.json      copied from the run folder
    ROOT/NAME/adapter_model.safetensors
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.config import method_rule
from ..adapters.files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_adapter,
    read_adapter_config,
    read_adapter_files,
)
from ..adapters.trainable import backbone_fingerprint
from ..backbones.create import pretrained_backbone
from ..utils.files import atomic_write_text, read_json, read_yaml_mapping

_log = logging.getLogger(__name__)

ENV = "ADAPTFORMER_TASKS"
INDEX = "registry.json"
FORMAT = "adaptformer-tasks/1"
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # always fullmatch: "$" would accept a trailing newline
# These methods change the backbone's own weights, so their tasks cannot share one backbone.
# Facts of the backbone every task must agree on (normalisation is part of the backbone).
_BACKBONE_KEYS = ("model", "img_size", "mean", "std", "interpolation")


def default_root() -> Path:
    """``$ADAPTFORMER_TASKS`` if set, else ``~/.cache/adaptformer/tasks``."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adaptformer" / "tasks"


@dataclass(frozen=True)
class TaskInfo:
    """One registered task as ``tasks list`` shows it."""

    name: str
    method: str
    num_classes: int
    bytes: int
    source: str
    added: str


class TaskRegistry:
    """Adapter folders that all fit one backbone.

    Args:
        root: the registry folder (created on the first :meth:`add`).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    # -- reading ----------------------------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        path = self.root / INDEX
        if not path.is_file():
            return {"format": FORMAT, "backbone": None, "tasks": {}}
        index = read_json(path, "an adaptformer task registry")
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            found = index.get("format") if isinstance(index, dict) else type(index).__name__
            raise ValueError(f"{path} is not an adaptformer task registry (format {found!r})")
        tasks, backbone = index.get("tasks"), index.get("backbone")
        if not isinstance(tasks, dict) or not isinstance(backbone, (dict, type(None))):
            raise ValueError(f"{path} is damaged (no 'tasks' mapping); {_REBUILD}")
        for name, entry in tasks.items():
            if not _NAME.fullmatch(name) or not isinstance(entry, dict):
                raise ValueError(f"{path} is damaged: task {name!r} is not valid; {_REBUILD}")
        return index

    def _folder(self, name: str) -> Path:
        """``ROOT/name``, refused unless it is a plain folder directly inside the registry, so a
        tampered registry.json or a planted link cannot point a removal elsewhere."""
        check_name(name)
        path = self.root / name
        if path.is_symlink() or path.resolve().parent != self.root.resolve():
            raise ValueError(
                f"task folder {path} is a link or lies outside the registry {self.root}; "
                "refusing to use it: remove it by hand if it is yours"
            )
        return path

    @property
    def backbone(self) -> dict[str, Any] | None:
        """The recorded backbone (``model``, ``backbone_sha256``, ``img_size``, ...) or None."""
        return self._index()["backbone"]

    def _require_backbone(self) -> dict[str, Any]:
        record = self.backbone
        if record is None:
            raise ValueError(
                f"the task registry {self.root} is empty: `adaptformer tasks add NAME RUN_DIR` first"
            )
        return record

    def names(self) -> list[str]:
        return sorted(self._index()["tasks"])

    def path(self, name: str) -> Path:
        """The adapter folder of task ``name``."""
        folder = self._folder(name)
        if name not in self._index()["tasks"]:
            raise KeyError(
                f"no task {name!r} in the registry {self.root}; have {self.names()} "
                "(add one with `adaptformer tasks add NAME RUN_DIR`)"
            )
        return folder

    def metadata(self, name: str) -> dict[str, Any]:
        """Task ``name``'s saved metadata (``classes``, ``multilabel``, normalisation, ...)."""
        return read_adapter_config(self.path(name)).get("metadata", {})

    def list(self) -> list[TaskInfo]:
        """Every task, sorted by name."""
        out = []
        for name, entry in sorted(self._index()["tasks"].items()):
            folder = self._folder(name)
            info = read_adapter_config(folder)
            size = sum((folder / f).stat().st_size for f in (CONFIG_NAME, WEIGHTS_NAME))
            out.append(
                TaskInfo(
                    name,
                    info["config"]["method"],
                    info["num_classes"],
                    size,
                    str(entry.get("source", "?")),
                    str(entry.get("added", "?")),
                )
            )
        return out

    # -- changing ---------------------------------------------------------------------------------
    def add(self, name: str, run_dir: str | Path, replace: bool = False) -> TaskInfo:
        """Copy a run's adapter files in as task ``name``.

        The first task records the backbone; every later one must carry the same weights hash.

        Args:
            name: letters, digits, ``-`` and ``_``.
            run_dir: a folder written by ``adaptformer train`` (or by :func:`save_adapter` with
                ``backbone_sha256`` and ``model`` in its metadata).
            replace: overwrite an existing task of that name.

        Raises:
            ValueError: a bad name, an existing task, damaged adapter files, a full/bitfit run,
                or another backbone.
        """
        target = self._folder(name)
        run_dir = Path(run_dir)
        info, _ = read_adapter_files(run_dir)  # a damaged task is refused now, not at predict
        record = _backbone_record(run_dir, info)
        method = info["config"]["method"]
        if method_rule(method).trains_backbone:
            raise ValueError(
                f"{run_dir} was trained with --method {method}, which changes the backbone's own "
                "weights, so it cannot share one backbone with other tasks; register adaptformer, "
                "lora, vpt or linear runs"
            )
        index = self._index()
        if name in index["tasks"] and not replace:
            raise ValueError(
                f"task {name!r} exists in {self.root}; `adaptformer tasks remove {name}` first "
                "or pass --replace"
            )
        _check_backbone(index["backbone"], record, run_dir, self.root)
        if index["backbone"] is None:
            index["backbone"] = record
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        try:
            for f in (CONFIG_NAME, WEIGHTS_NAME):
                shutil.copy2(run_dir / f, tmp / f)
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        added = datetime.now(timezone.utc).isoformat(timespec="seconds")
        index["tasks"][name] = {"source": str(run_dir.resolve()), "added": added}
        self._write(index)
        _log.info("registered task %r from %s in %s", name, run_dir, self.root)
        return next(t for t in self.list() if t.name == name)

    def remove(self, name: str) -> None:
        """Delete task ``name``; removing the last task forgets the backbone too."""
        path = self.path(name)
        index = self._index()
        del index["tasks"][name]
        if not index["tasks"]:
            index["backbone"] = None
        self._write(index)
        shutil.rmtree(path)

    def _write(self, index: dict[str, Any]) -> None:
        atomic_write_text(self.root / INDEX, json.dumps(index, indent=2) + "\n")

    # -- using ------------------------------------------------------------------------------------
    def load_all(self, model: nn.Module, names: list[str] | None = None) -> nn.Module:
        """Inject every task (or ``names``) into ``model``, after checking it is the backbone.

        Raises:
            ValueError: the registry is empty or ``model``'s backbone weights are not the
                recorded ones.
        """
        record = self._require_backbone()
        names = self.names() if names is None else list(names)
        paths = [self.path(n) for n in names]  # unknown names fail before any work
        found = backbone_fingerprint(model)
        if found != record["backbone_sha256"]:
            raise ValueError(
                f"this model's backbone (sha256 {found[:12]}) is not the one the registry "
                f"{self.root} serves ({record['model']}, sha256 {record['backbone_sha256'][:12]})"
            )
        for name, path in zip(names, paths, strict=True):
            load_adapter(model, path, name=name)
        return model

    def build_model(
        self, names: list[str] | None = None, device: torch.device | None = None
    ) -> nn.Module:
        """The recorded backbone with every task (or ``names``) loaded, in eval mode."""
        record = self._require_backbone()
        model = pretrained_backbone(record["model"], record.get("checkpoint"), record["img_size"])
        self.load_all(model, names)
        return model.to(device or torch.device("cpu")).eval()


_REBUILD = "fix or delete registry.json and add the tasks again"


def class_names(meta: dict[str, Any], width: int) -> list[str]:
    """A task's label names from its metadata, or ``"0"``, ``"1"``, ... when the (untrusted)
    metadata holds no list of exactly ``width`` names."""
    classes = meta.get("classes")
    if isinstance(classes, list) and len(classes) == width:
        return [str(c) for c in classes]
    return [str(i) for i in range(width)]


def check_name(name: str) -> str:
    """``name`` if it is a valid task name (the whole of it: letters, digits, ``-``, ``_``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"task name {name!r} may only hold letters, digits, '-' and '_'")
    return name


def _backbone_record(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """What the run says about its backbone, with the checkpoint path from its config.yaml."""
    meta = info.get("metadata", {})
    if not all(isinstance(meta.get(k), str) and meta[k] for k in ("backbone_sha256", "model")):
        raise ValueError(
            f"{run_dir} records no backbone (metadata 'model' and 'backbone_sha256'); register "
            "folders written by `adaptformer train`, or save_adapter(..., metadata={'model': ..., "
            "'backbone_sha256': backbone_fingerprint(model), ...})"
        )
    record = {k: meta.get(k) for k in _BACKBONE_KEYS}
    record["backbone_sha256"] = meta["backbone_sha256"]
    record["checkpoint"] = None
    config = run_dir / "config.yaml"
    if config.is_file():
        checkpoint = read_yaml_mapping(config).get("checkpoint")
        if isinstance(checkpoint, str) and checkpoint:
            record["checkpoint"] = str(Path(checkpoint).expanduser().resolve())
    return record


def _check_backbone(
    recorded: dict[str, Any] | None, record: dict[str, Any], run_dir: Path, root: Path
) -> None:
    if recorded is None:
        return
    if record["backbone_sha256"] != recorded["backbone_sha256"]:
        raise ValueError(
            f"refusing {run_dir}: it was trained on backbone {record['model']} "
            f"(weights sha256 {record['backbone_sha256'][:12]}), but the registry {root} serves "
            f"{recorded['model']} (sha256 {recorded['backbone_sha256'][:12]}); an adapter only "
            "works on the exact weights it was trained with: use another --registry for it"
        )
    differ = [
        k
        for k in ("img_size", "mean", "std", "interpolation")
        if record.get(k) is not None and recorded.get(k) is not None and record[k] != recorded[k]
    ]
    if differ:
        raise ValueError(
            f"refusing {run_dir}: its preprocessing ({', '.join(f'{k}={record[k]}' for k in differ)}) "
            f"differs from the registry's ({', '.join(f'{k}={recorded[k]}' for k in differ)})"
        )
