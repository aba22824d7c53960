"""Export an adapted model to ONNX or TorchScript, verified against PyTorch before returning.

One task exports as the plain model: ``image (B, 3, H, W) -> logits (B, classes)``. Several
tasks export as one graph over the shared backbone with a second input, ``task_index (B,)``
(int64, position in the exported task list); its output is ``(B, max classes)`` logits with
``-inf`` beyond each row's class count, the same layout as :func:`adaptformer.forward_tasks`.
Inside the graph each row's adapters and head are gathered by its index from banks holding the
exported tasks only (:mod:`adaptformer.adapters.banks`, the same code as ``forward_tasks``):
static shapes, which is what tracing needs, and a fixed cost whatever the number of tasks.

Both formats go through the tracer (``torch.onnx.export(dynamo=False)`` and ``torch.jit.trace``):
the ``torch.export``-based ONNX exporter needs ``onnxscript``, which is not a dependency.
A JSON sidecar (``FILE.json``, also embedded in the file) records tasks, class counts and inputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import types
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.banks import TaskBanks
from ..adapters.context import routing_scope
from ..adapters.inject import adapter_state, set_adapter, unwrap
from ..adapters.routing import BankRouting
from ..utils.errors import UserFacingError
from ..utils.files import atomic_path
from .multitask import banked_pass, grouped_pass, task_widths

_log = logging.getLogger(__name__)

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
OPSET = 17  # first opset with a native LayerNormalization


class TaskIndexedModel(nn.Module):
    """``forward(image, task_index) -> padded logits``: several tasks in one traceable graph.

    Args:
        model: a model holding every task in ``names``.
        names: the exported tasks; ``task_index[i]`` is a position in this list (an index
            outside it gives a row of ``-inf``).
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = unwrap(model)
        self.names = list(names)
        state = adapter_state(self.model)
        unknown = sorted(set(self.names) - set(state.configs))
        if unknown or not self.names:
            raise ValueError(
                f"cannot export task(s) {unknown}; the model has {sorted(state.configs)}"
            )
        self.num_classes = task_widths(self.model, self.names)
        # Banks of the exported tasks only (slot i = names[i]): the file holds nothing else.
        self.banks = TaskBanks(self.model, self.names)
        prompted = any(state.configs[t].method == "vpt" for t in self.names)
        self._prompt_names = tuple(self.names) if prompted else ()
        self.train(self.model.training)  # a fresh Module is in training mode; follow the model

    def forward(self, x: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        self.banks.sync(self.model, self.names)  # tasks changed in place since: rewrite slots
        valid = (task_index >= 0) & (task_index < len(self.names))
        index = torch.where(valid, task_index, torch.zeros_like(task_index))
        with routing_scope(BankRouting(self.banks, index, self._prompt_names)):
            logits, _ = banked_pass(self.model, self.banks, x, index)
        logits = logits[:, : max(self.num_classes)]
        return torch.where(valid[:, None], logits, torch.full_like(logits, float("-inf")))


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how close it is to PyTorch."""

    path: Path
    format: str
    tasks: list[str]
    num_classes: list[int]
    bytes: int
    max_abs_error: float | None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def export_model(
    model: nn.Module,
    path: str | Path,
    format: Format = "onnx",
    tasks: Sequence[str] | None = None,
    img_size: int | tuple[int, int] | None = None,
    verify: bool = True,
    tolerance: float = 1e-4,
    metadata: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` (one task, or several behind a ``task_index`` input) and check it.

    Args:
        model: a model with adapters; it is exported in eval mode on its current device.
        path: output file (``.onnx`` or a TorchScript ``.pt``); ``path + ".json"`` gets the sidecar.
        format: ``onnx`` or ``torchscript``.
        tasks: tasks to export; None exports the active task alone. Two or more add the
            ``task_index`` input.
        img_size: input height/width (default: the model's ``patch_embed.img_size``).
        verify: run the exported file (onnxruntime / ``torch.jit.load``) on a batch size other
            than the traced one and compare with PyTorch.
        tolerance: largest allowed absolute logit difference.
        metadata: extra JSON-able facts for the sidecar (class names, normalisation, ...).

    Raises:
        ValueError: unknown format or tasks.
        UserFacingError: a missing package, or the export does not match PyTorch.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    model = unwrap(model)
    state = adapter_state(model)
    names = list(tasks) if tasks else [state.active]
    multi = len(names) > 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = _img_size(model, img_size)
    was_training, active = model.training, state.active
    model.eval()
    try:
        if not multi:
            set_adapter(model, names[0])
        module = (TaskIndexedModel(model, names) if multi else model).eval()
        classes = task_widths(model, names)
        info = {
            "format": format,
            "tasks": names,
            "num_classes": classes,
            "inputs": ["image", "task_index"] if multi else ["image"],
            "image_shape": ["batch", 3, *size],
            "output": "logits, -inf beyond each row's class count" if multi else "logits",
            **(metadata or {}),
        }
        args = _example(model, names, size, batch=2)
        if verify and format == "onnx":
            _onnxruntime()  # a missing verifier fails before minutes of export, not after
        # Written beside ``path`` and moved there only once verified: a failed export or check
        # leaves no file that looks like a good model (nor replaces a good one).
        with atomic_path(path) as tmp:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation chatter, not actionable
                if format == "onnx":
                    with _plain_batchnorm(model):
                        _to_onnx(module, args, tmp, multi, info)
                else:
                    traced = torch.jit.trace(module, args, check_trace=False)
                    torch.jit.save(
                        traced, str(tmp), _extra_files={"adaptformer.json": json.dumps(info)}
                    )
            error = (
                _verify(model, module, tmp, path, format, names, size, tolerance)
                if verify
                else None
            )
    finally:
        if active is not None and state.active != active:
            set_adapter(model, active)
        model.train(was_training)
    Path(f"{path}.json").write_text(json.dumps({**info, "max_abs_error": error}, indent=2) + "\n")
    _log.info("exported %s to %s (max abs error %s)", names, path, error)
    return ExportResult(path, format, names, classes, path.stat().st_size, error, info)


def _img_size(model: nn.Module, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if img_size is None:
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is None:
        raise ValueError("pass img_size: the model does not record its input size")
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def _example(
    model: nn.Module, names: list[str], size: tuple[int, int], batch: int
) -> tuple[torch.Tensor, ...]:
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, *size, generator=g).to(device)
    if len(names) == 1:
        return (x,)
    index = torch.arange(batch - 1, -1, -1) % len(names)  # every task once, in some order
    return x, index.to(device)


@contextlib.contextmanager
def _plain_batchnorm(model: nn.Module) -> Iterator[None]:
    """Run every ``BatchNorm1d`` (the ``--head-batchnorm`` head) as plain arithmetic while the
    block runs: the ONNX exporter's batch_norm needs a known channel count, which the head's
    dynamic-batch input lacks, and fails with a SymbolicValueError."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d) and not m.training]
    for m in norms:
        m.forward = types.MethodType(_eval_batchnorm, m)
    try:
        yield
    finally:
        for m in norms:
            del m.forward


def _eval_batchnorm(self: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """What ``BatchNorm1d.eval()`` computes on ``(batch, channels)``."""
    y = (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps)
    return y * self.weight + self.bias if self.affine else y


class _PositionalOnly(nn.Module):
    """``module`` called with the exported inputs alone. The ONNX tracer passes every other
    parameter of ``forward`` that has a default as an extra input, and turns a ``bool`` one
    into a tensor (timm's ``Eva.forward(x, attn_mask=None, is_causal=False)`` then fails in
    ``scaled_dot_product_attention``); ``forward(*inputs)`` declares no others."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.train(module.training)  # the exporter restores this mode on the model afterwards

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)


def _to_onnx(
    module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, multi: bool, info: dict
) -> None:
    try:
        import onnx
    except ImportError as e:
        raise UserFacingError(
            "ONNX export needs onnx (a dependency of adaptformer): pip install onnx"
        ) from e
    inputs = ["image", "task_index"] if multi else ["image"]
    torch.onnx.export(
        _PositionalOnly(module),
        args,
        str(path),
        dynamo=False,
        input_names=inputs,
        output_names=["logits"],
        dynamic_axes={name: {0: "batch"} for name in [*inputs, "logits"]},
        opset_version=OPSET,
    )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "adaptformer", json.dumps(info)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _verify(
    model: nn.Module,
    module: nn.Module,
    file: Path,
    path: Path,
    format: str,
    names: list[str],
    size: tuple[int, int],
    tolerance: float,
) -> float:
    """Largest |exported - PyTorch| on a batch of a size the tracer never saw, running
    ``file`` (the export, not yet at its final ``path``, which messages name)."""
    args = _example(model, names, size, batch=len(names) + 3)
    with torch.no_grad():
        if len(names) > 1:  # the reference: each task's own modules (not the banks traced)
            ref, _ = grouped_pass(model, args[0], [names[i] for i in args[1].tolist()])
            width = max(task_widths(model, names))
            ref = F.pad(ref, (0, width - ref.shape[1]), value=float("-inf"))
        else:
            ref = module(*args)
        got = _run_exported(file, format, args)
    ref = ref.float().cpu().numpy()
    if got.shape != ref.shape or not np.array_equal(np.isfinite(got), np.isfinite(ref)):
        raise UserFacingError(
            f"exported {path} does not match PyTorch: output shape {got.shape} vs {ref.shape} "
            "or different -inf padding"
        )
    finite = np.isfinite(ref)
    error = float(np.abs(got[finite] - ref[finite]).max())
    if error > tolerance:
        raise UserFacingError(
            f"exported {path} differs from PyTorch by up to {error:.3g} (tolerance {tolerance:g}); "
            "try the other --format or report the model that fails"
        )
    return error


def _run_exported(path: Path, format: str, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
            loaded = torch.jit.load(str(path), map_location=args[0].device)
        return loaded(*args).float().cpu().numpy()
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"image": args[0].cpu().numpy()}
    if len(args) > 1:
        feeds["task_index"] = args[1].cpu().numpy().astype(np.int64)
    return session.run(None, feeds)[0]


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise UserFacingError(
            "verifying an ONNX export needs onnxruntime: pip install 'adaptformer[onnx]' "
            "(or skip the check with verify=False / --no-verify); nothing was written"
        ) from e
    return onnxruntime
