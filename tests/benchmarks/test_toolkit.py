"""Speed/memory measurement (``benchmarks/toolkit.py``) and the no-grad frozen prefix (``frozen_prefix``)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from frozen_prefix import FrozenPrefixBlocks, restore_blocks, skip_frozen_prefix
from toolkit import (
    BenchCase,
    BenchConfig,
    MethodSpec,
    build_model,
    check_targets,
    count_flops,
    format_table,
    matmul_peak_flops,
    measure_memory,
    overhead_target,
    paired_inference_overhead,
    run_cases,
)

from adaptformer import AdapterConfig, inject, mark_trainable

from ..helpers import randomize_, tiny_vit

# timm's 6-block, 64-wide test ViT at 32 px: 4 patches + CLS, milliseconds per step.
TINY = BenchConfig(model="test_vit", img_size=32, batch_size=4, num_classes=5)


@pytest.mark.parametrize(
    "text, kind, size",
    [("full", "full", None), ("adaptformer-16", "adaptformer", 16), ("peft-lora-8", "peft-lora", 8),
     ("vpt", "vpt", 1), ("lora", "lora", 8), ("backbone", "backbone", None),
     ("adapter_plus", "adapter_plus", 8), ("houlsby-16", "houlsby", 16), ("pfeiffer", "pfeiffer", 48)],
)  # fmt: skip
def test_method_names_parse(text, kind, size):
    spec = MethodSpec.parse(text)
    assert (spec.kind, spec.size) == (kind, size)


@pytest.mark.parametrize("text", ["adapter-16", "full-3", "lora-0", ""])
def test_bad_method_names_are_refused(text):
    with pytest.raises(ValueError):
        MethodSpec.parse(text)


def test_timing_flops_and_table_on_a_tiny_model():
    cases = [BenchCase(m, TINY) for m in ("backbone", "full", "adaptformer-16")]
    rows = run_cases(cases, warmup=1, steps=2, rounds=2, memory=False)
    by = {r["name"]: r for r in rows}
    assert "train_step_s" not in by["backbone"]  # inference only
    for name in ("full", "adaptformer-16"):
        r = by[name]
        assert r["train_step_s"] > 0 and r["train_images_per_s"] > 0
        assert r["train_step_q25_s"] <= r["train_step_s"] <= r["train_step_q75_s"]
        assert 0 < r["train_peak_fraction"] < 1
        assert len(r["train_load_average"]) >= 2
    for r in rows:
        assert r["infer_step_s"] > 0 and 0 < r["infer_peak_fraction"] < 1
    # the frozen backbone needs no weight gradients: fewer training FLOPs than full fine-tuning
    assert by["adaptformer-16"]["train_flops"] < by["full"]["train_flops"]
    assert by["adaptformer-16"]["infer_flops"] > by["backbone"]["infer_flops"]
    assert by["adaptformer-16"]["trainable_params"] < by["full"]["trainable_params"]
    assert "| adaptformer-16 |" in format_table(rows)
    names = [t["target"] for t in check_targets(rows)]
    assert "adaptformer-16 train images/s vs full" in names


def test_flops_count_linears_and_cpu_attention():
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("backbone", TINY)
    flops = count_flops(model, TINY, train=False)
    tokens = 1 + (32 // 16) ** 2
    linears = sum(
        2 * m.in_features * m.out_features
        for m in model.blocks.modules()
        if isinstance(m, torch.nn.Linear)
    )
    assert flops > TINY.batch_size * tokens * linears  # + patch embedding, head and attention
    with torch.no_grad(), FlopCounterMode(display=False) as plain:  # attention not counted
        model(torch.randn(4, 3, 32, 32))
    assert flops > plain.get_total_flops()
    assert matmul_peak_flops(size=256, repeats=2) > 1e6


def test_memory_is_measured_in_a_fresh_process():
    mem = measure_memory("adaptformer-16", TINY, "train", steps=2)
    assert mem["increase_bytes"] > 0
    assert mem["peak_bytes"] >= mem["baseline_bytes"] > 0


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft (dev extra)")
def test_peft_lora_matches_our_lora_budget():
    ours = build_model("lora-8", TINY)
    theirs = build_model("peft-lora-8", TINY)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(ours) == count(theirs)  # same rank on qkv, same head
    x = torch.randn(2, 3, 32, 32)
    assert theirs(x).shape == ours(x).shape == (2, 5)


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_skipping_the_frozen_prefix_keeps_gradients(checkpointing):
    model = tiny_vit(depth=4, num_classes=0).train()
    inject(model, AdapterConfig(bottleneck=8, layers=[2, 3], dropout=0.0), num_classes=3)
    mark_trainable(model, "adaptformer")
    randomize_(model.blocks[2].adaptmlp)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    expected = _grads(model, x, y)
    assert skip_frozen_prefix(model, grad_checkpointing=checkpointing) == 2
    assert isinstance(model.blocks, FrozenPrefixBlocks)
    got = _grads(model, x, y)
    assert got.keys() == expected.keys() and len(got) > 2
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)
    assert "blocks.2.adaptmlp.default.up_proj.weight" in dict(model.named_parameters())
    restore_blocks(model)
    assert type(model.blocks) is torch.nn.Sequential


def test_the_prefix_runs_normally_when_its_input_needs_gradients():
    model = tiny_vit(depth=3, num_classes=0).train()
    inject(model, AdapterConfig(bottleneck=4, layers=[2]), num_classes=3)
    mark_trainable(model, "adaptformer")
    model.pos_embed.requires_grad_(True)  # something upstream of block 0 trains
    skip_frozen_prefix(model)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


def test_paired_overhead_times_one_model_with_and_without_its_adapters():
    r = paired_inference_overhead("adaptformer-16", TINY, pairs=4, block_pairs=6, warmup=1)
    assert r["pairs"] == 4 and r["block_pairs"] == 6
    assert r["block_tokens"] == [TINY.batch_size, 5, 64]  # 4 patches + CLS, width 64
    for prefix in ("", "block_"):
        assert r[f"{prefix}overhead_q25"] <= r[f"{prefix}overhead"] <= r[f"{prefix}overhead_q75"]
    # per block: 64x16 + 16x64 MACs per token on top of the bare block
    block_share = r["block_flop_share"]
    adapter = 2 * 2 * 64 * 16 * TINY.batch_size * 5
    bare = count_flops(build_model("backbone", TINY), TINY, train=False)
    assert r["flop_share"] == pytest.approx(6 * adapter / bare, rel=0.02)  # 6 blocks
    assert 0 < r["flop_share"] < block_share  # the head and embedding dilute the whole model's
    target = overhead_target(r)
    assert target["value"] == pytest.approx(r["block_overhead"] / r["block_flop_share"])
    assert "6 pairs" in target["note"]
