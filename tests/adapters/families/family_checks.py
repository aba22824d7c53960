"""Checks every transformer family's spec must pass, written once for any model.

The per-family test modules (``test_eva.py``, ``test_beit.py``) hold what is specific to a
family (its blocks written out by hand, its refusals); these are the family-independent checks:
an update that starts at zero changes nothing, each adapted block equals the family's formula
(and LoRA the block with merged weights), a task file loads under another name, mixed-task
batches equal each task alone, exports match PyTorch, and each method trains what it should.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import adaptformer as af
from adaptformer.adapters.files import adapter_tensors, loadable_problems, read_adapter_files
from adaptformer.serving.export import export_model

# Every method whose update starts at exactly zero (AdaptMLP's ``up`` and LoRA's ``B`` are zero,
# head-only and backbone methods add nothing), dropout off.
ZERO_INIT: dict[str, af.AdapterConfig] = {
    "parallel": af.AdapterConfig(bottleneck=8, dropout=0.0),
    "sequential": af.AdapterConfig(bottleneck=8, position="sequential", dropout=0.0),
    "post": af.AdapterConfig(bottleneck=8, position="post", dropout=0.0),
    "houlsby": af.AdapterConfig(bottleneck=8, position="houlsby", dropout=0.0),
    "lora": af.AdapterConfig(method="lora", bottleneck=4),
    "linear": af.AdapterConfig(method="linear"),
    "bitfit": af.AdapterConfig(method="bitfit"),
    "full": af.AdapterConfig(method="full"),
}

# Tasks sharing one backbone: every adapter position (and the presets that set them), LoRA,
# deep and shallow prompts of different counts (padded and masked in mixed batches), a
# head-only task. ``prompts=False`` families leave the VPT tasks out.
MIXED: dict[str, tuple[af.AdapterConfig, int]] = {
    "ada": (af.AdapterConfig(bottleneck=8), 5),
    "seq": (af.AdapterConfig(bottleneck=4, position="sequential", layers=[1]), 3),
    "aplus": (af.AdapterConfig(method="adapter_plus", bottleneck=4), 4),
    "houlsby": (af.AdapterConfig(method="houlsby", bottleneck=4), 2),
    "pfeiffer": (af.AdapterConfig(method="pfeiffer", bottleneck=6), 5),
    "lora": (af.AdapterConfig(method="lora", bottleneck=4), 6),
    "lin": (af.AdapterConfig(method="linear"), 4),
    "vpt": (af.AdapterConfig(method="vpt", prompt_tokens=3), 2),
    "vpt_sh": (af.AdapterConfig(method="vpt", prompt_tokens=2, prompt_mode="shallow"), 7),
}


def randomize_task(model: nn.Module, name: str, std: float = 0.1) -> None:
    """Non-zero values in everything task ``name`` saves (adapters, prompts, LoRA, head, and the
    backbone biases of bitfit): updates start at zero, and a zero proves nothing."""
    with torch.no_grad():
        for t in adapter_tensors(model, name).values():  # detached views of the live tensors
            if t.is_floating_point():
                t.normal_(0.0, std)


def assert_identity_at_init(model: nn.Module, x: torch.Tensor, config: af.AdapterConfig) -> None:
    """Injecting ``config`` leaves the outputs as they were, in train and in eval mode."""
    reference = copy.deepcopy(model)
    af.inject(model, config)
    for training in (True, False):
        model.train(training)
        reference.train(training)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), atol=1e-6, rtol=0)


def assert_prompts_matter_and_switch_off(model: nn.Module, x: torch.Tensor, **vpt) -> None:
    """VPT prompts are random at init: they change the output, and disabling them restores it."""
    reference = copy.deepcopy(model)
    af.inject(model, af.AdapterConfig(method="vpt", **vpt))
    with torch.no_grad():
        moved = model.forward_features(x) - reference.forward_features(x)
        assert moved.abs().max() > 1e-3
        with af.disable_adapters(model):
            torch.testing.assert_close(model(x), reference(x), atol=1e-6, rtol=0)


def adapter_fn(model: nn.Module, name: str, path: str, scale: float) -> Callable:
    """The AdaptMLP at ``path`` (task-file key prefix) written out: ``s * up(relu(down(x)))``."""
    t = adapter_tensors(model, name)
    down_w, down_b = t[f"{path}.down_proj.weight"], t[f"{path}.down_proj.bias"]
    up_w, up_b = t[f"{path}.up_proj.weight"], t[f"{path}.up_proj.bias"]
    return lambda src: scale * (F.relu(src @ down_w.T + down_b) @ up_w.T + up_b)


def merge_lora(original_attn: nn.Module, model: nn.Module, name: str, index: int,
               config: af.AdapterConfig) -> nn.Module:  # fmt: skip
    """A copy of the unadapted attention whose q, k, v weights hold ``W + alpha/r * B A``."""
    t = adapter_tensors(model, name)
    a, b = t[f"blocks.{index}.attn.qkv.lora_A.weight"], t[f"blocks.{index}.attn.qkv.lora_B.weight"]
    delta = config.lora_alpha / config.bottleneck * b @ a
    attn = copy.deepcopy(original_attn)
    with torch.no_grad():
        if getattr(attn, "qkv", None) is not None:
            attn.qkv.weight += delta
        else:
            start = 0
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                proj.weight += delta[start : start + proj.out_features]
                start += proj.out_features
            assert start == delta.shape[0]
    return attn


def assert_blocks_follow_formula(model: nn.Module, x: torch.Tensor, run: Callable,
                                 written: Callable, position: str, scale: float) -> None:  # fmt: skip
    """Every adapted block of ``model`` (task ``default``, values randomised) equals the family's
    block written out by hand, ``written(block, x, adapter=, position=, first=)``, and the
    adapter really adds something. ``run(block, x)`` calls a block with the family's extras
    (RoPE, a shared relative-position bias)."""
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            adapter = adapter_fn(model, "default", f"blocks.{i}.adaptmlp", scale)
            first = adapter_fn(model, "default", f"blocks.{i}.attn_adapter", scale) \
                if position == "houlsby" else None  # fmt: skip
            expected = written(block, x, adapter=adapter, position=position, first=first)
            got = run(block, x)
            with af.disable_adapters(model):
                bare = run(block, x)
            assert (got - bare).abs().max() > 1e-3  # the adapter really adds something
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def assert_lora_blocks_equal_merged(model: nn.Module, original: nn.Module, x: torch.Tensor,
                                    run: Callable, written: Callable,
                                    config: af.AdapterConfig) -> None:  # fmt: skip
    """Every LoRA block of ``model`` equals the unadapted block ``original.blocks[i]`` written
    out with its attention's weights merged, ``written(block, x, attn=merged)``."""
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            attn = merge_lora(original.blocks[i].attn, model, "default", i, config)
            expected = written(original.blocks[i], x, attn=attn)
            got = run(block, x)
            assert (got - run(original.blocks[i], x)).abs().max() > 1e-3
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def assert_save_load_under_another_name(
    make: Callable[[], nn.Module], x: torch.Tensor, config: af.AdapterConfig, directory: Path
) -> None:
    """A task saved as ``a`` loads as ``b`` into another copy of the backbone and answers the
    same; the file also passes the backbone-free check the task registry runs on uploads."""
    model, other = make(), make()
    af.inject(model, config, name="a", num_classes=3)
    randomize_task(model, "a")
    af.save_adapter(model, directory)
    info, tensors = read_adapter_files(directory)
    assert loadable_problems(info, tensors) == []
    af.load_adapter(other, directory, name="b")
    assert other.adaptformer.active == "b"
    with torch.no_grad():
        if config.method != "linear":  # the task really changes the backbone's features
            moved = model.forward_features(x) - make().forward_features(x)
            assert moved.abs().max() > 1e-4
        torch.testing.assert_close(other(x), model(x), atol=1e-6, rtol=0)


def add_tasks(model: nn.Module, tasks: dict[str, tuple[af.AdapterConfig, int]]) -> nn.Module:
    """``model`` holding every task of ``tasks``, each with random (non-zero) values."""
    for name, (config, classes) in tasks.items():
        af.inject(model, config, name=name, num_classes=classes)
        randomize_task(model, name)
    return model.eval()


def assert_mixed_batches_match(model: nn.Module, x: torch.Tensor, tasks: list[str]) -> None:
    """``forward_tasks`` on a mixed batch equals each image run through its task alone."""
    with torch.no_grad():
        got = af.forward_tasks(model, x, tasks).per_sample()
        for i, task in enumerate(tasks):
            af.set_adapter(model, task)
            torch.testing.assert_close(got[i], model(x[i : i + 1])[0], atol=1e-5, rtol=0)


def assert_exports(model: nn.Module, tasks: list[str], directory: Path) -> None:
    """ONNX and TorchScript, one task alone and all of ``tasks`` behind ``task_index``, each run
    from the written file and compared with PyTorch (``export_model`` raises beyond 1e-4)."""
    for fmt in ("onnx", "torchscript"):
        for names in ([tasks[0]], tasks):
            path = directory / f"{'_'.join(names)}.{'onnx' if fmt == 'onnx' else 'pt'}"
            result = export_model(model, path, format=fmt, tasks=names)
            assert result.max_abs_error is not None and result.max_abs_error <= 1e-4
            assert path.is_file()


def expected_trainable(model: nn.Module, method: str, config: af.AdapterConfig,
                       classes: int) -> int:  # fmt: skip
    """What ``method`` trains, counted from the unadapted model's shapes (widths, depth, biases)."""
    head = model.num_features * classes + classes
    widths = [int(b.attn.proj.out_features) for b in model.blocks]
    r = config.bottleneck
    if method == "adaptformer":  # down (d r + r) and up (r d + d) per block; scale 0.1 is fixed
        return head + sum(2 * d * r + r + d for d in widths)
    if method == "lora":  # A (r x d) and B (3d x r) per block
        return head + sum(4 * d * r for d in widths)
    if method == "vpt":  # deep: prompt_tokens x d per block
        return head + sum(config.prompt_tokens * d for d in widths)
    backbone = {n: p for n, p in model.named_parameters() if not n.startswith("head.")}
    if method == "bitfit":  # every bias of the backbone (EVA's q_bias / v_bias included)
        return head + sum(p.numel() for n, p in backbone.items() if n.endswith("bias"))
    if method == "full":
        return head + sum(p.numel() for p in backbone.values())
    assert method == "linear"
    return head


TRAINABLE: dict[str, af.AdapterConfig] = {
    "adaptformer": af.AdapterConfig(bottleneck=8),
    "lora": af.AdapterConfig(method="lora", bottleneck=4),
    "vpt": af.AdapterConfig(method="vpt", prompt_tokens=3),
    "bitfit": af.AdapterConfig(method="bitfit"),
    "linear": af.AdapterConfig(method="linear"),
    "full": af.AdapterConfig(method="full"),
}


def assert_trainable_count(model: nn.Module, method: str, classes: int = 3) -> None:
    config = TRAINABLE[method]
    expected = expected_trainable(model, method, config, classes)
    af.inject(model, config, num_classes=classes)
    assert af.mark_trainable(model, method).trainable == expected
