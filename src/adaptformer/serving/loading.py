"""Putting a task's adapter into a served model while forward passes of other tasks go on.

Loading splits in three, so that the lock every forward pass holds (``model_lock``) is held
only while modules are added to or removed from the model:

1. :func:`read_task` reads the task's two files once, hashes those bytes (the task's version)
   and checks them (types, sizes, finite and bounded values) from a private copy: no lock, so
   the version reported is that of the bytes loaded even if the folder is replaced meanwhile.
2. :func:`build_slot` adds the task's modules to the model under ``model_lock`` (the one short
   step that blocks passes), then checks and copies the tensors without it: no row is routed
   to an adapter the catalog has not published yet.
3. :func:`refill` copies a task into an evicted slot of the same shape: no module changes and no
   lock at all, since no queued or running row uses an evicted slot.

``structure_lock`` orders the walks over the model's adapters (reading slot tensors) after any
module change, so they never see a module dict being changed; passes do not take it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.config import AdapterConfig
from ..adapters.files import WEIGHTS_NAME, adapter_tensors, check_tensors, read_adapter_files
from ..adapters.inject import adapter_pieces, delete_adapter, get_head, inject
from ..utils.files import FLOAT_DTYPES, open_regular, safetensors_header
from .paging import Slot, shape_of, tensor_bytes
from .store import TASK_FILES, digest_of, refuse_backbone_methods, task_file_limit

# A tmpfs when there is one: the private copy of a task's files never touches a disk.
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@dataclass(frozen=True)
class TaskFiles:
    """A task's files read and checked: config, tensors and the sha256 of their bytes."""

    info: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    digest: str

    @property
    def shape(self) -> str:
        return shape_of(_config_dict(self.info), int(self.info["num_classes"]))

    def nbytes(self, float_size: int) -> int:
        shapes = {k: (tuple(t.shape), t.is_floating_point()) for k, t in self.tensors.items()}
        return tensor_bytes(shapes, float_size)


@dataclass(frozen=True)
class TaskHeader:
    """What listing a task costs no tensor read: its config and its tensors' shapes."""

    info: dict[str, Any]
    shapes: dict[str, tuple[tuple[int, ...], bool]]  # name -> (shape, floating point)

    @property
    def shape(self) -> str:
        return shape_of(_config_dict(self.info), int(self.info["num_classes"]))

    def nbytes(self, float_size: int) -> int:
        return tensor_bytes(self.shapes, float_size)


def peek_task(folder: Path) -> TaskHeader:
    """Task ``folder``'s config (checked, full/bitfit refused) and the shapes its tensor file
    declares (the safetensors header, checked against the file's size): a few KB read, so a
    server can list 1,000 tasks at start without reading their weights.

    Raises:
        ValueError, OSError: the config or the header is damaged, or the run is full/bitfit.
    """
    info = refuse_backbone_methods(folder)
    header = safetensors_header(folder / WEIGHTS_NAME)
    return TaskHeader(info, {k: (t.shape, t.dtype in FLOAT_DTYPES) for k, t in header.items()})


def read_task(folder: Path) -> TaskFiles:
    """Task ``folder``'s files, read once: digest over the bytes read, then every check of
    :func:`~adaptformer.adapters.files.read_adapter_files` on a private copy of those bytes.

    Raises:
        ValueError, OSError: the files are missing, damaged, or of a full/bitfit run (errors
            name ``folder``, not the copy).
    """
    blobs = {f: _read_bytes(folder / f, task_file_limit(f), f"a task's {f}") for f in TASK_FILES}
    digest = digest_of(blobs)
    with tempfile.TemporaryDirectory(dir=_SCRATCH, prefix="adaptformer-task-") as tmp:
        for f, data in blobs.items():
            Path(tmp, f).write_bytes(data)
        try:
            refuse_backbone_methods(Path(tmp))
            info, tensors = read_adapter_files(tmp)
        except ValueError as e:
            raise ValueError(str(e).replace(tmp, str(folder))) from None
    return TaskFiles(info, tensors, digest)


def _read_bytes(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes (FIFOs and devices refused before opening), at most ``limit``
    (``read_regular_bytes`` would allocate ``limit`` bytes up front: 64 GiB for tensors)."""
    with open_regular(path, limit, what) as f:
        data = f.read()
    if len(data) > limit:
        raise ValueError(f"{path} holds more than {limit:,} bytes; {what} may hold at most that")
    return data


def slot_tensors(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Adapter ``adapter``'s tensors keyed as in a task file, sharing the model's storage.

    What :func:`~adaptformer.adapters.files.adapter_tensors` returns without its ``backbone.*``
    tensors, whose lookup walks every task's parameters (400 ms with 64 ViT-S tasks loaded);
    tests check the two agree.
    """
    out: dict[str, torch.Tensor] = {}
    for path, piece in adapter_pieces(model, adapter):
        if isinstance(piece, nn.Parameter):
            out[path] = piece.detach()
        else:
            out.update({f"{path}.{k}": t.detach() for k, t in piece.state_dict().items()})
    for k, t in get_head(model, adapter).state_dict().items():
        out[f"head.{k}"] = t.detach()
    return out


def build_slot(
    model: nn.Module,
    adapter: str,
    files: TaskFiles,
    device: torch.device,
    model_lock: threading.RLock,
    structure_lock: threading.RLock,
    source: str,
) -> Slot:
    """Add ``files`` to ``model`` as a new adapter named ``adapter``; the model is unchanged
    on any error.

    Raises:
        ValueError: the tensors do not fit this model (another width, depth or layer set).
    """
    config = AdapterConfig.from_dict(files.info["config"])
    shared = sorted(k for k in files.tensors if k.startswith("backbone."))
    with structure_lock:
        with model_lock:
            inject(model, config, name=adapter, num_classes=int(files.info["num_classes"]))
            if device.type != "cpu":
                model.to(device)  # new modules are built on the CPU
        try:
            if shared:  # backbone weights the checkpoint lacked: copied only between passes
                with model_lock:
                    expected = adapter_tensors(model, adapter)
                    _copy(expected, files.tensors, source)
                own = {k: t for k, t in expected.items() if not k.startswith("backbone.")}
            else:
                own = slot_tensors(model, adapter)
                _copy(own, files.tensors, source)  # not routed to yet: no lock needed
        except BaseException:
            with model_lock:
                delete_adapter(model, adapter)
            raise
    return Slot(adapter, files.shape, _nbytes(own), own)


def refill(slot: Slot, files: TaskFiles, source: str) -> None:
    """Copy ``files`` into ``slot``, a slot of the same shape that no row uses.

    Raises:
        ValueError: the tensors do not fit the slot after all (a file that lies about its
            shape); the slot then holds a mix and must be deleted.
    """
    if any(k.startswith("backbone.") for k in files.tensors):
        raise ValueError(f"adapter in {source} carries backbone tensors: it needs a new slot")
    target, tensors = slot.tensors, files.tensors
    wrong = sorted(set(target) ^ set(tensors)) or sorted(
        k
        for k in target
        if target[k].shape != tensors[k].shape
        or target[k].is_floating_point() != tensors[k].is_floating_point()
    )  # values were checked by read_task; shapes only differ for a file that lies
    if wrong:
        raise ValueError(
            f"adapter in {source} does not fit this model's slot: {', '.join(wrong[:5])}"
        )
    with torch.no_grad():
        for k, t in target.items():
            t.copy_(tensors[k])


def _copy(target: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str) -> None:
    problems = check_tensors(tensors, target)
    if problems:
        raise ValueError(f"adapter in {source} does not fit this model: " + "; ".join(problems))
    with torch.no_grad():
        for k, t in target.items():
            t.copy_(tensors[k])


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _config_dict(info: dict[str, Any]) -> dict[str, Any]:
    return AdapterConfig.from_dict(info["config"]).to_dict()
