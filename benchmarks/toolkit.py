"""Speed and memory of adaptation methods, side by side, on one backbone, batch and precision.

Every method gets the same timm backbone (built by :func:`adaptformer.create_backbone`), the same
random batch and the same precision; ours are injected with :func:`adaptformer.inject` and
frozen with :func:`adaptformer.mark_trainable`, LoRA through Hugging Face PEFT is
``get_peft_model(model, LoraConfig(target_modules=["qkv"], ...))`` on the plain timm model.

- **Time**: a training step is forward + cross-entropy + backward + AdamW step +
  ``zero_grad``; inference is a forward under ``torch.inference_mode``. All models are built in
  one process and timed round-robin (by default one step per method per round), so load on a
  shared machine hits all of them alike; the reported number is the median step after warm-up,
  with quartiles, the best step and ``os.getloadavg()`` sampled every round.
- **Memory**: each (method, configuration) runs in a fresh Python process. On CPU the peak
  resident set size is reset after the model is built (``/proc/self/clear_refs``) and read back
  after the steps (``VmHWM``): the reported increase is what training adds on top of the loaded
  model (activations, gradients, optimizer state). One inference forward runs before the reset,
  so one-time set-up of thread pools and kernels is not counted. Where the reset is not
  available, ``ru_maxrss`` is used and the construction peak may hide a smaller training peak
  (``peak_reset: false`` in the results). On CUDA: ``torch.cuda.max_memory_allocated``.
  ``tracemalloc`` does not see torch's allocations and is not used.
- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over forward (+ backward) of one batch,
  with CPU flash attention counted too; the achieved FLOP/s is divided by the machine's measured
  peak, the best of several large matmuls in the same precision.

Method names: ``backbone`` (the bare model, inference only), ``full``, ``linear``, ``bitfit``,
``adaptformer-R``, ``lora-R``, ``vpt-N`` (deep, N tokens) and ``peft-lora-R``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from adaptformer.adapters.config import ADAPTER_PRESETS, method_rule
from adaptformer.training.engine import autocast

_log = logging.getLogger(__name__)

METHOD_KINDS: tuple[str, ...] = (
    "backbone",
    "full",
    "linear",
    "bitfit",
    "adaptformer",
    "adapter_plus",
    "houlsby",
    "pfeiffer",
    "lora",
    "vpt",
    "peft-lora",
)
# Interquartile range / median of the step times above which a row is marked noisy.
NOISY_SPREAD = 0.2
# default sizes: the presets' bottlenecks (ADAPTER_PRESETS), LoRA rank, VPT tokens
_SIZED = {
    **{name: preset.bottleneck for name, preset in ADAPTER_PRESETS.items()},
    "lora": 8,
    "vpt": 1,
    "peft-lora": 8,
}
MIB = 2**20


@dataclass(frozen=True)
class MethodSpec:
    """A method as named on the command line: ``adaptformer-64``, ``peft-lora-8``, ``full``."""

    kind: str
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        m = re.fullmatch(r"([a-z_-]+?)(?:-(\d+))?", text.strip())
        kind, size = (m.group(1), m.group(2)) if m else (text, None)
        if kind not in METHOD_KINDS:
            raise ValueError(
                f"unknown method {text!r}; use backbone, full, linear, bitfit, adaptformer-R, "
                "adapter_plus-R, houlsby-R, pfeiffer-R, lora-R, vpt-N or peft-lora-R "
                "(R: bottleneck/rank, N: prompt tokens)"
            )
        if size is not None and kind not in _SIZED:
            raise ValueError(f"method {kind!r} takes no size, got {text!r}")
        if size is not None and int(size) < 1:
            raise ValueError(f"{text!r}: the size must be a positive integer")
        return cls(kind, int(size) if size is not None else _SIZED.get(kind))

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.size}" if self.size is not None else self.kind

    @property
    def trains(self) -> bool:
        return self.kind != "backbone"


@dataclass(frozen=True)
class BenchConfig:
    """What is held equal across the methods of one comparison."""

    model: str = "vit_small_patch14_dinov2"
    checkpoint: str | None = None
    img_size: int = 224
    num_frames: int | None = None
    batch_size: int = 32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_classes: int = 10
    layers: tuple[int, ...] | None = None
    grad_checkpointing: bool = False
    skip_frozen_prefix: bool = False
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {self.precision!r} must be fp32, bf16 or fp16")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ValueError("fp16 needs a CUDA device; use bf16 on CPU")
        for name in ("img_size", "batch_size", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if self.num_frames is not None and (self.num_frames < 2 or self.num_frames % 2):
            raise ValueError("num_frames must be an even number >= 2 (tubelet size 2)")

    def with_(self, **changes: Any) -> BenchConfig:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        shape = f"{self.img_size}px" + (f" x {self.num_frames} frames" if self.num_frames else "")
        opts = [o for o, on in (("ckpt", self.grad_checkpointing),
                                ("no-grad prefix", self.skip_frozen_prefix)) if on]  # fmt: skip
        layers = f", blocks {_ranges(self.layers)}" if self.layers is not None else ""
        return f"{shape}, batch {self.batch_size}, {self.precision}{layers}" + (
            f", {' + '.join(opts)}" if opts else ""
        )


@dataclass(frozen=True)
class BenchCase:
    """One row of a comparison: a method under a configuration, with an optional label."""

    method: str
    config: BenchConfig = field(default_factory=BenchConfig)
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or MethodSpec.parse(self.method).name


def _ranges(layers: Sequence[int]) -> str:
    layers = sorted(layers)
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


# --------------------------------------------------------------------------- models


def _architecture(model: str) -> str:
    """A registry name (``vit_small_patch14_dinov2.imgfocus``) -> its timm architecture."""
    from adaptformer.backbones.registry import get_model

    entry = get_model(model)
    return entry.architecture if entry else model


def build_model(method: str | MethodSpec, cfg: BenchConfig) -> nn.Module:
    """The backbone of ``cfg`` prepared for ``method``, trainable parameters marked, on device.

    Without ``cfg.checkpoint`` the weights are random: timing and memory do not depend on them.
    """
    from adaptformer.adapters.config import AdapterConfig
    from adaptformer.adapters.inject import inject
    from adaptformer.adapters.trainable import mark_trainable
    from adaptformer.backbones.create import create_backbone

    spec = method if isinstance(method, MethodSpec) else MethodSpec.parse(method)
    plain = spec.kind in ("backbone", "peft-lora")
    model = create_backbone(
        _architecture(cfg.model),
        checkpoint=cfg.checkpoint,
        img_size=cfg.img_size,
        num_classes=cfg.num_classes if plain else 0,
    )
    if cfg.num_frames:
        from adaptformer.backbones.video_weights import video_model_from_image

        model = video_model_from_image(
            model,
            num_frames=cfg.num_frames,
            tubelet_size=2,
            img_size=cfg.img_size,
            num_classes=cfg.num_classes if plain else 0,
            temporal_embed=False,
        )
    layers = list(cfg.layers) if cfg.layers is not None else None
    if spec.kind == "peft-lora":
        model = _peft_lora(model, spec.size, layers)
    elif spec.kind != "backbone":
        rule = method_rule(spec.kind)
        config = AdapterConfig(
            method=spec.kind,
            bottleneck=spec.size if rule.size_field == "bottleneck" else None,
            prompt_tokens=spec.size if rule.size_field == "prompt_tokens" else 1,
            layers=layers if rule.adds_modules else None,
        )
        inject(model, config, name="bench", num_classes=cfg.num_classes)
        mark_trainable(model, spec.kind)
    else:
        model.requires_grad_(False)
    base = _base_model(model)
    if cfg.skip_frozen_prefix:
        from frozen_prefix import skip_frozen_prefix

        skip_frozen_prefix(base, grad_checkpointing=cfg.grad_checkpointing)
    elif cfg.grad_checkpointing:
        base.set_grad_checkpointing(True)
    return model.to(torch.device(cfg.device))


def _peft_lora(model: nn.Module, rank: int, layers: list[int] | None) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError(
            "peft-lora needs Hugging Face PEFT: pip install peft (it is in the dev extra)"
        ) from e
    config = LoraConfig(
        r=rank,
        lora_alpha=16,  # the same alpha as adaptformer's LoRA, so the same scaling alpha / r
        lora_dropout=0.0,  # adaptformer's LoRA has no dropout either
        target_modules=["qkv"],
        modules_to_save=["head"],
        layers_to_transform=layers,
        layers_pattern="blocks" if layers is not None else None,
    )
    return get_peft_model(model, config)


def _base_model(model: nn.Module) -> nn.Module:
    """The timm model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """Trainable parameters and the backbone's size (no head, adapters, prompts or LoRA)."""
    from adaptformer.adapters.trainable import count_parameters

    base = _base_model(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if hasattr(base, "adaptformer"):
        backbone = count_parameters(base).backbone
    else:
        backbone = sum(
            p.numel()
            for n, p in base.named_parameters()
            if not n.startswith("head") and "lora_" not in n
        )
    return {
        "trainable_params": trainable,
        "backbone_params": backbone,
        "trainable_percent": 100.0 * trainable / max(backbone, 1),
    }


# --------------------------------------------------------------------------- steps


def make_batch(cfg: BenchConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch of images (or clips) and labels on the configured device."""
    g = torch.Generator().manual_seed(seed)
    frames = (cfg.num_frames,) if cfg.num_frames else ()
    x = torch.randn(cfg.batch_size, 3, *frames, cfg.img_size, cfg.img_size, generator=g)
    y = torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g)
    device = torch.device(cfg.device)
    return x.to(device), y.to(device)


def make_train_step(model: nn.Module, cfg: BenchConfig) -> Callable[[], None]:
    """Forward, cross-entropy, backward, AdamW step and ``zero_grad`` on a fixed batch."""
    x, y = make_batch(cfg)
    device = torch.device(cfg.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: nothing to time in training")
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        model.train()
        with autocast(device, cfg.precision):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def make_infer_step(model: nn.Module, cfg: BenchConfig) -> Callable[[], None]:
    """One forward of the fixed batch in eval mode under ``torch.inference_mode``."""
    x, _ = make_batch(cfg)
    device = torch.device(cfg.device)

    def step() -> None:
        model.eval()
        with torch.inference_mode(), autocast(device, cfg.precision):
            model(x)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> list[float]:
    """``os.getloadavg()`` (1, 5, 15 minutes), or empty where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _time_call(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call, including the device work it queued."""
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def time_round_robin(
    steps: Mapping[str, Callable[[], None]],
    warmup: int = 2,
    timed: int = 6,
    rounds: int = 3,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, list[float]], list[list[float]]]:
    """Seconds per call of every function, interleaved in ``rounds`` so that load hits all alike.

    Returns:
        The step times per name (``timed`` each, after ``warmup`` untimed calls) and the load
        average sampled before every round and at the end.
    """
    device = torch.device(device)
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    per_round = max(1, math.ceil(timed / max(rounds, 1)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    loads = []
    while any(len(t) < timed for t in times.values()):
        loads.append(load_average())
        for name, fn in steps.items():
            for _ in range(min(per_round, timed - len(times[name]))):
                times[name].append(_time_call(fn, device))
    loads.append(load_average())
    return times, loads


def summarize_times(times: Sequence[float], batch: int) -> dict[str, float]:
    """Median step time, its quartiles and the images/s of the median step."""
    ts = sorted(times)
    q = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) >= 2 else [ts[0]] * 3
    median = statistics.median(ts)
    return {
        "median_s": median,
        "q25_s": q[0],
        "q75_s": q[2],
        "best_s": ts[0],
        "images_per_s": batch / median,
        "steps": len(ts),
    }


# --------------------------------------------------------------------------- FLOPs


def _flop_mapping() -> dict[Any, Callable[..., int]]:
    """FlopCounterMode counts GPU attention kernels only; count CPU flash attention too."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q, k, v)

    def backward(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad, q, k, v)

    mapping: dict[Any, Callable[..., int]] = {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", backward),
    ):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = fn
    return mapping


def count_flops(model: nn.Module, cfg: BenchConfig, train: bool) -> int:
    """FLOPs of one batch: forward (inference) or forward + backward (training).

    Matrix products and attention only (what ``FlopCounterMode`` counts); the optimizer step
    and element-wise work are memory-bound and not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x, y = make_batch(cfg)
    device = torch.device(cfg.device)
    if not train:
        model.eval()
        return inference_flops(model, x, device, cfg.precision)
    counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
    model.train()
    with counter, autocast(device, cfg.precision):
        loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def inference_flops(module: nn.Module, x: torch.Tensor, device: torch.device,
                    precision: str) -> int:  # fmt: skip
    """FLOPs of ``module(x)`` under ``torch.inference_mode`` (a whole model or one block)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
    with counter, torch.inference_mode(), autocast(device, precision):
        module(x)
    return int(counter.get_total_flops())


def matmul_peak_flops(
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    size: int = 2048,
    repeats: int = 10,
) -> float:
    """The machine's matmul throughput: the best of ``repeats`` ``size x size`` products."""
    device = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # warm-up (thread pool start, kernel selection)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


# --------------------------------------------------------------------------- memory


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


def _rss_bytes() -> int:
    rss = _status_kib("VmRSS")
    return rss * 1024 if rss is not None else _peak_rss_bytes()


def _measure_here(method: str, cfg: BenchConfig, mode: str, steps: int) -> dict[str, Any]:
    """Build, then run ``steps`` steps and read the peak; meant for a fresh process."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = build_model(method, cfg)
    step = make_train_step(model, cfg) if mode == "train" else make_infer_step(model, cfg)
    device = torch.device(cfg.device)
    # One inference forward first: thread pools, kernel caches and lazy buffers are set up once
    # per process, whatever the method, and would otherwise count as the method's memory.
    make_infer_step(model, cfg)()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        reset = True
    else:
        base = _rss_bytes()
        reset = _reset_peak_rss()
        if not reset:
            base = max(base, _peak_rss_bytes())  # the lifetime peak so far
        for _ in range(steps):
            step()
        peak = _peak_rss_bytes()
    return {
        "baseline_bytes": base,
        "peak_bytes": peak,
        "increase_bytes": max(0, peak - base),
        "peak_reset": reset,
    }


def _memory_main() -> None:
    """Entry point of the measuring process: a JSON request on stdin, a JSON line on stdout."""
    request = json.loads(sys.stdin.read())
    cfg = BenchConfig(**request["config"])
    logging.disable(logging.WARNING)  # stdout carries the result; keep library logs out of it
    result = _measure_here(request["method"], cfg, request["mode"], request["steps"])
    print(_RESULT_TAG + json.dumps(result), flush=True)


_RESULT_TAG = "ADAPTFORMER_MEMORY_RESULT "
# A fixed mmap threshold switches off glibc's dynamic one, under which freed activation buffers
# stay in the heap (and in the RSS): then a buffer freed after the warm-up forward would already
# count in the baseline. With it, every buffer above 128 KiB goes back to the system when freed.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def measure_memory(
    method: str,
    cfg: BenchConfig,
    mode: Literal["train", "infer"] = "train",
    steps: int = 3,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Peak memory of ``steps`` training (or inference) steps, in a fresh Python process.

    A new interpreter (not a fork) per measurement, so nothing allocated by earlier cases or by
    the caller counts, and it works whatever the caller's ``__main__`` is.

    Returns:
        ``baseline_bytes`` (model built, before the first step), ``peak_bytes``,
        ``increase_bytes`` (peak minus baseline: what the steps add) and ``peak_reset``.

    Raises:
        RuntimeError: the measuring process failed (its stderr is in the message) or timed out.
    """
    request = {"method": method, "config": dataclasses.asdict(cfg), "mode": mode, "steps": steps}
    here = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {here!r}); from toolkit import _memory_main; _memory_main()"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(request),
            env={**os.environ, **_MALLOC_ENV},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"memory measurement of {method} timed out after {timeout:.0f} s") from e
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory measurement of {method} ({cfg.describe()}) failed with exit code "
            f"{proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1].removeprefix(_RESULT_TAG))


# --------------------------------------------------------------------------- profile


_CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn", "linear")),
    ("attention", ("scaled_dot_product", "flash_attention", "softmax")),
    ("layer norm", ("layer_norm",)),
    ("activation", ("gelu", "relu", "threshold")),
    ("optimizer", ("_foreach", "adam", "lerp", "addcdiv", "sqrt")),
    ("dropout / rng", ("dropout", "bernoulli", "uniform", "normal")),
    ("copies / casts", ("copy_", "to_copy", "clone", "contiguous", "cat", "_to_copy")),
    ("element-wise", ("add", "mul", "div", "sub", "fill", "zero", "sum", "where", "neg")),
)


def _category(op: str) -> str:
    op = op.lower()
    for name, keys in _CATEGORIES:
        if any(k in op for k in keys):
            return name
    return "other"


def profile_train_step(
    model: nn.Module, cfg: BenchConfig, steps: int = 3, row_limit: int = 25
) -> dict[str, Any]:
    """Where a training step's time goes: phases, op categories and the top ops by self time.

    Returns:
        ``phases_s`` (forward / backward / optimizer per step, seconds), ``categories``
        (share of self CPU time per kind of op), and ``table`` (torch.profiler's table).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    x, y = make_batch(cfg)
    device = torch.device(cfg.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> None:
        with record_function("phase::forward"), autocast(device, cfg.precision):
            loss = F.cross_entropy(model(x).float(), y)
        with record_function("phase::backward"):
            loss.backward()
        with record_function("phase::optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: optimizer state, kernel selection
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    events = prof.key_averages()
    phases = {
        e.key.removeprefix("phase::"): e.cpu_time_total / 1e6 / steps
        for e in events
        if e.key.startswith("phase::")
    }
    totals: dict[str, float] = {}
    for e in events:
        if e.key.startswith("phase::") or e.key.startswith("Optimizer"):
            continue
        totals[_category(e.key)] = totals.get(_category(e.key), 0.0) + e.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    categories = {k: v / whole for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    table = events.table(sort_by="self_cpu_time_total", row_limit=row_limit)
    return {"phases_s": phases, "categories": categories, "table": table, "steps": steps}


# --------------------------------------------------------------------------- the comparison


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, library versions and the time: what a result depends on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import timm

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1) if mem else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "load_average": load_average(),
    }
    with contextlib.suppress(ImportError):
        import peft

        info["peft"] = peft.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_cases(
    cases: Sequence[BenchCase],
    warmup: int = 2,
    steps: int = 6,
    rounds: int | None = None,
    memory: bool = True,
    memory_steps: int = 3,
    flops: bool = True,
    peak_flops: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Time (round-robin, one process), count FLOPs and measure memory (one process each).

    Cases may differ in configuration (e.g. with and without gradient checkpointing); every
    row records its own. ``backbone`` cases are timed in inference only.

    Args:
        cases: what to compare.
        warmup: untimed steps per case before timing.
        steps: timed steps per case (training and inference each).
        rounds: the timed steps are spread over this many round-robin rounds (default: one
            step per case per round, the finest interleaving).
        memory: also measure peak memory, in one fresh process per case and mode.
        memory_steps: steps run in the memory process.
        flops: count FLOPs and relate them to ``peak_flops``.
        peak_flops: matmul peak per precision; measured here when missing.
    """
    peaks = dict(peak_flops or {})
    models, train_fns, infer_fns, rows = {}, {}, {}, {}
    for case in cases:
        spec = MethodSpec.parse(case.method)
        cfg = case.config
        if case.name in rows:
            raise ValueError(f"two cases are named {case.name!r}; give them labels")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        model = build_model(spec, cfg)
        models[case.name] = model
        rows[case.name] = {
            "name": case.name,
            "method": spec.name,
            "config": dataclasses.asdict(cfg),
            "setting": cfg.describe(),
            **parameter_counts(model),
        }
        if spec.trains:
            train_fns[case.name] = make_train_step(model, cfg)
        infer_fns[case.name] = make_infer_step(model, cfg)
        if flops:
            if cfg.precision not in peaks:
                peaks[cfg.precision] = matmul_peak_flops(cfg.device, cfg.precision)
            rows[case.name]["infer_flops"] = count_flops(model, cfg, train=False)
            if spec.trains:
                rows[case.name]["train_flops"] = count_flops(model, cfg, train=True)
    device = torch.device(cases[0].config.device) if cases else torch.device("cpu")
    _log.info("timing %d training and %d inference cases", len(train_fns), len(infer_fns))
    rounds = rounds or steps
    train_times, train_loads = time_round_robin(train_fns, warmup, steps, rounds, device)
    infer_times, infer_loads = time_round_robin(infer_fns, warmup, steps, rounds, device)
    if flops and peak_flops is None:  # the best of before and after: load only lowers it
        for precision in peaks:
            peaks[precision] = max(peaks[precision], matmul_peak_flops(device, precision))
    for name, row in rows.items():
        batch = row["config"]["batch_size"]
        peak = peaks.get(row["config"]["precision"])
        for mode, times, loads in (
            ("train", train_times, train_loads),
            ("infer", infer_times, infer_loads),
        ):
            if name not in times:
                continue
            stats = summarize_times(times[name], batch)
            row[f"{mode}_step_s"] = stats["median_s"]
            row[f"{mode}_step_q25_s"] = stats["q25_s"]
            row[f"{mode}_step_q75_s"] = stats["q75_s"]
            row[f"{mode}_step_best_s"] = stats["best_s"]
            # interquartile range over median: above ~0.2 the machine was not quiet
            row[f"{mode}_step_spread"] = (stats["q75_s"] - stats["q25_s"]) / stats["median_s"]
            row[f"{mode}_images_per_s"] = stats["images_per_s"]
            row[f"{mode}_load_average"] = loads
            if f"{mode}_flops" in row and peak:
                achieved = row[f"{mode}_flops"] / stats["median_s"]
                row[f"{mode}_flops_per_s"] = achieved
                row[f"{mode}_peak_fraction"] = achieved / peak
        row["matmul_peak_flops"] = peak
    del models, train_fns, infer_fns
    gc.collect()
    if memory:
        for case in cases:
            row = rows[case.name]
            modes = ("train", "infer") if MethodSpec.parse(case.method).trains else ("infer",)
            for mode in modes:
                _log.info("measuring %s memory of %s in a fresh process", mode, case.name)
                mem = measure_memory(case.method, case.config, mode, memory_steps)
                row[f"{mode}_mem_increase_mib"] = mem["increase_bytes"] / MIB
                row[f"{mode}_mem_peak_mib"] = mem["peak_bytes"] / MIB
                row[f"{mode}_mem_baseline_mib"] = mem["baseline_bytes"] / MIB
                row["mem_peak_reset"] = mem["peak_reset"]
    return [rows[c.name] for c in cases]


def _paired_ratios(on: Callable[[], None], off: Callable[[], None], pairs: int,
                   device: torch.device) -> list[float]:  # fmt: skip
    """Per pair: time of ``on`` over time of ``off``, run back to back in alternating order."""
    ratios = []
    for i in range(pairs):
        if i % 2 == 0:
            a, b = _time_call(on, device), _time_call(off, device)
        else:
            b, a = _time_call(off, device), _time_call(on, device)
        ratios.append(a / b)
    return ratios


def _overhead_stats(ratios: Sequence[float], prefix: str) -> dict[str, float]:
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return {
        f"{prefix}overhead": statistics.median(ratios) - 1.0,
        f"{prefix}overhead_q25": q[0] - 1.0,
        f"{prefix}overhead_q75": q[2] - 1.0,
    }


def paired_inference_overhead(
    method: str, cfg: BenchConfig, pairs: int = 20, block_pairs: int = 300, warmup: int = 2
) -> dict[str, Any]:
    """Inference time of ``method``'s adapters over the bare backbone, measured in pairs.

    Timing two models one after the other cannot resolve a few percent on a CPU whose step
    times spread by 10%: identical networks then differ by several percent. Here one adapted
    model runs each batch twice in a row, once with its adapters and once inside
    :func:`~adaptformer.adapters.inject.disable_adapters` (the order alternates), and the overhead is
    the median of the per-pair ratios. On a shared machine even that is noisy when a step
    takes seconds, so the same is done for one transformer block on the tokens it sees in
    the model (a twelfth of a step, so many more pairs fit): every block costs the same, so the
    block's overhead is the model's, less the share of the embedding and head (which have no
    adapters). FLOP shares are counted on the same model and block both ways.
    """
    from adaptformer.adapters.inject import disable_adapters

    model = build_model(method, cfg)
    step = make_infer_step(model, cfg)
    device = torch.device(cfg.device)
    block = model.blocks[len(model.blocks) // 2]
    seen: list[torch.Tensor] = []
    hook = block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    step()
    hook.remove()
    tokens = seen[0]

    def bare() -> None:
        with disable_adapters(model):
            step()

    def block_on() -> None:
        with torch.inference_mode(), autocast(device, cfg.precision):
            block(tokens)

    def block_off() -> None:
        with disable_adapters(model):
            block_on()

    for fn in [step, bare] * warmup + [block_on, block_off] * (10 * warmup):
        fn()
    loads = [load_average()]
    ratios = _paired_ratios(step, bare, pairs, device)
    block_ratios = _paired_ratios(block_on, block_off, block_pairs, device)
    loads.append(load_average())
    flops = count_flops(model, cfg, train=False)
    with disable_adapters(model):
        bare_flops = count_flops(model, cfg, train=False)
    block_flops = inference_flops(block, tokens, device, cfg.precision)
    with disable_adapters(model):
        block_bare_flops = inference_flops(block, tokens, device, cfg.precision)
    result: dict[str, Any] = {
        "method": MethodSpec.parse(method).name,
        "setting": cfg.describe(),
        "pairs": pairs,
        "block_pairs": block_pairs,
        "block_tokens": list(tokens.shape),
        **_overhead_stats(ratios, ""),
        **_overhead_stats(block_ratios, "block_"),
        "flop_share": flops / bare_flops - 1.0,
        "block_flop_share": block_flops / block_bare_flops - 1.0,
        "load_average": loads,
    }
    share = result["block_flop_share"]
    result["overhead_per_flop_share"] = result["block_overhead"] / share if share > 0 else math.inf
    return result


# --------------------------------------------------------------------------- targets


def check_targets(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met.

    - AdaptFormer training >= 1.3x the images/s of full fine-tuning (ideal about 1.5x);
    - AdaptFormer training at least as fast as PEFT LoRA of a comparable trainable budget;
    - AdaptFormer training memory <= 0.6x full fine-tuning with AdamW (same batch);
    - adapter inference overhead over the bare backbone <= 1.5x the adapters' FLOP share.
    """
    by = {r["name"]: r for r in rows}
    full = by.get("full")
    backbone = by.get("backbone")
    out = []
    adapters = [
        r for r in rows if r["method"].startswith("adaptformer") and r["name"] == r["method"]
    ]
    peft = [r for r in rows if r["method"].startswith("peft-lora") and r["name"] == r["method"]]
    for r in adapters:
        if full and "train_images_per_s" in full and "train_images_per_s" in r:
            ratio = r["train_images_per_s"] / full["train_images_per_s"]
            out.append(_target(f"{r['name']} train images/s vs full", ratio, ">=", 1.3))
        if full and "train_mem_increase_mib" in full and "train_mem_increase_mib" in r:
            ratio = r["train_mem_increase_mib"] / max(full["train_mem_increase_mib"], 1e-9)
            out.append(_target(f"{r['name']} train memory vs full", ratio, "<=", 0.6))
        if peft and "train_images_per_s" in r:
            closest = min(
                peft, key=lambda p: abs(math.log(p["trainable_params"] / r["trainable_params"]))
            )
            ratio = r["train_images_per_s"] / closest["train_images_per_s"]
            out.append(_target(f"{r['name']} train images/s vs {closest['name']}", ratio, ">=", 1.0,
                               f"trainable {r['trainable_params']:,} vs {closest['trainable_params']:,}"))  # fmt: skip
        if backbone and "infer_flops" in r and "infer_flops" in backbone:
            share = r["infer_flops"] / backbone["infer_flops"] - 1.0
            overhead = r["infer_step_s"] / backbone["infer_step_s"] - 1.0
            ratio = overhead / share if share > 0 else float("inf")
            out.append(_target(f"{r['name']} inference overhead / FLOP share", ratio, "<=", 1.5,
                               f"overhead {100 * overhead:+.1f}%, FLOP share {100 * share:.1f}%"))  # fmt: skip
    return out


def overhead_target(result: Mapping[str, Any]) -> dict[str, Any]:
    """The inference-overhead target from :func:`paired_inference_overhead` (block level)."""
    pct = {k: 100 * v for k, v in result.items() if "overhead" in k or "share" in k}
    return _target(
        f"{result['method']} inference overhead / FLOP share (paired, per block)",
        result["overhead_per_flop_share"],
        "<=",
        1.5,
        f"block overhead {pct['block_overhead']:+.1f}% (q25-q75 {pct['block_overhead_q25']:+.1f} "
        f"to {pct['block_overhead_q75']:+.1f}%, {result['block_pairs']} pairs), block FLOP share "
        f"{pct['block_flop_share']:.1f}%",
    )


def _target(what: str, value: float, op: str, bound: float, note: str = "") -> dict[str, Any]:
    met = value >= bound if op == ">=" else value <= bound
    return {
        "target": what,
        "value": value,
        "bound": f"{op} {bound}",
        "met": bool(met),
        "note": note,
    }


# --------------------------------------------------------------------------- reporting


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one row per case, throughput, memory and FLOP utilisation."""
    lines = [
        "| method | setting | trainable | train img/s | train step (q25-q75) | train mem | "
        "train % peak | infer img/s | infer mem | infer % peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:

        def g(key: str, fmt: str, r: Mapping[str, Any] = r) -> str:
            v = r.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) else "-"

        step = (
            f"{r['train_step_s']:.3f} s ({r['train_step_q25_s']:.3f}-{r['train_step_q75_s']:.3f})"
            + (" noisy" if r["train_step_spread"] > NOISY_SPREAD else "")
            if "train_step_s" in r
            else "-"
        )
        lines.append(
            f"| {r['name']} | {r['setting']} | {r['trainable_params']:,} "
            f"({r['trainable_percent']:.2f}%) | {g('train_images_per_s', '.1f')} | {step} "
            f"| {g('train_mem_increase_mib', ',.0f')} MiB | {g('train_peak_fraction', '.1%')} "
            f"| {g('infer_images_per_s', '.1f')} | {g('infer_mem_increase_mib', ',.0f')} MiB "
            f"| {g('infer_peak_fraction', '.1%')} |"
        )
    return "\n".join(lines).replace(" - MiB", " -")


def format_targets(targets: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| target | measured | bound | met | note |", "|---|---:|---|---|---|"]
    for t in targets:
        lines.append(
            f"| {t['target']} | {t['value']:.2f} | {t['bound']} | "
            f"{'yes' if t['met'] else '**no**'} | {t['note']} |"
        )
    return "\n".join(lines)
