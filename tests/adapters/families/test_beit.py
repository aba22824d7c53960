"""timm's Beit family (BEiT v1/v2): the spec against ``timm.models.beit.Block`` written out by
hand (layer scale, per-block or shared relative-position bias), LoRA through the fused qkv whose
bias timm applies with F.linear, VPT refused, and the checks of ``family_checks``."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.beit import Block

import adaptformer as af
from adaptformer.adapters.families import family_of
from adaptformer.adapters.families.beit import BEIT
from adaptformer.adapters.families.eva import call_qkv_module
from adaptformer.adapters.inject import AdaptedBlock

from .family_checks import (
    MIXED,
    ZERO_INIT,
    add_tasks,
    assert_blocks_follow_formula,
    assert_exports,
    assert_identity_at_init,
    assert_lora_blocks_equal_merged,
    assert_mixed_batches_match,
    assert_save_load_under_another_name,
    assert_trainable_count,
    randomize_task,
)

IMG = 64  # 4x4 patches of 16 px


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    """Biases, gammas and the relative-position tables start at constants (zeros), and timm's
    small init makes attention nearly uniform: random values make every term show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.normal_(0.1, 0.05)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
            elif "relative_position_bias_table" in name:
                p.normal_(0.0, 0.5)
            elif p.ndim >= 2 and not name.startswith("head"):
                p.normal_(0.0, 0.1)
    return model.eval()


def beit() -> torch.nn.Module:
    """BEiT as fine-tuned: a relative-position table in every block, layer scale, q/v bias."""
    torch.manual_seed(0)
    return _finish(timm.create_model(
        "beit_base_patch16_224", img_size=IMG, depth=2, embed_dim=64, num_heads=4,
        num_classes=5,
    ))  # fmt: skip


def beit_shared() -> torch.nn.Module:
    """BEiT as pre-trained: one relative-position bias shared by all blocks and passed to each
    at call time, absolute position embeddings, no layer scale."""
    torch.manual_seed(0)
    return _finish(timm.create_model(
        "beitv2_base_patch16_224", img_size=IMG, depth=2, embed_dim=64, num_heads=4,
        use_rel_pos_bias=False, use_shared_rel_pos_bias=True, use_abs_pos_emb=True,
        init_values=0.0, num_classes=5,  # 0 (None is dropped by timm.create_model)
    ))  # fmt: skip


MAKERS = {"beit": beit, "beit_shared": beit_shared}
X = torch.randn(2, 3, IMG, IMG)
NO_PROMPTS = {k: v for k, v in MIXED.items() if v[0].method != "vpt"}


def test_the_models_are_what_the_checks_claim():
    m = beit()
    block = m.blocks[0]
    assert type(block) is Block and block.gamma_1 is not None and m.rel_pos_bias is None
    assert block.attn.relative_position_bias_table is not None and block.attn.q_bias is not None
    assert not block.attn.qkv_bias_separate
    m = beit_shared()
    assert m.rel_pos_bias is not None and m.blocks[0].attn.relative_position_bias_table is None
    assert m.blocks[0].gamma_1 is None
    for make in MAKERS.values():
        assert family_of(make()) is BEIT


@pytest.mark.parametrize("method", list(ZERO_INIT))
@pytest.mark.parametrize("kind", list(MAKERS))
def test_identity_at_initialisation(kind, method):
    assert_identity_at_init(MAKERS[kind](), X, ZERO_INIT[method])


def test_prompts_are_refused_in_one_line_and_nothing_changes():
    model = beit()
    with pytest.raises(ValueError) as e:
        af.inject(model, af.AdapterConfig(method="vpt", prompt_tokens=3))
    assert str(e.value).startswith("VPT cannot be used on beit models: BEiT's relative-position")
    assert "\n" not in str(e.value)
    assert not hasattr(model, "adaptformer")
    assert not any(isinstance(b, AdaptedBlock) for b in model.blocks)


def test_calling_the_qkv_module_keeps_outputs():
    """BEiT adds q_bias/v_bias inside F.linear on qkv.weight; the switch LoRA needs (timm's
    qkv_bias_separate) gives the same outputs."""
    model = beit()
    with torch.no_grad():
        before = model(X)
        for block in model.blocks:
            call_qkv_module(block)
            assert block.attn.qkv_bias_separate
        torch.testing.assert_close(model(X), before, atol=1e-6, rtol=0)


def beit_block(block, x, shared, attn=None, adapter=None, position=None, first=None):
    """timm's BEiT Block written out, plus the adapter rules of REFERENCE.md.

    h = x + gamma_1 * attn(norm1(x), shared_rel_pos_bias);  m = gamma_2 * mlp(norm2(h))
    out = h + m, plus the adapter: parallel A(h), sequential A(m), post A(h + m); houlsby adds
    ``first(a)`` to h and A(m) to the output. The attention's own call adds its relative-position
    bias; ``attn`` stands in for it (LoRA's merged weights).
    """
    attn = attn or block.attn
    a = attn(block.norm1(x), shared_rel_pos_bias=shared)
    a = a if block.gamma_1 is None else block.gamma_1 * a
    h = x + a
    if position == "houlsby":
        h = h + first(a)
    m = block.mlp(block.norm2(h))
    m = m if block.gamma_2 is None else block.gamma_2 * m
    out = h + m
    if position == "parallel":
        out = out + adapter(h)
    elif position in ("sequential", "houlsby"):
        out = out + adapter(m)
    elif position == "post":
        out = out + adapter(out)
    return out


def _tokens(model):
    torch.manual_seed(1)
    shared = model.rel_pos_bias() if model.rel_pos_bias is not None else None
    return torch.randn(2, 1 + 16, model.embed_dim), shared


@pytest.mark.parametrize("position", ["parallel", "sequential", "post", "houlsby"])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_adapted_block_equals_the_hand_written_formula(kind, position):
    model = MAKERS[kind]()
    af.inject(model, af.AdapterConfig(bottleneck=8, scale=0.3, position=position, dropout=0.0))
    randomize_task(model, "default")
    x, shared = _tokens(model)
    assert_blocks_follow_formula(
        model, x, lambda block, x: block(x, shared_rel_pos_bias=shared),
        lambda block, x, **kw: beit_block(block, x, shared, **kw), position, 0.3,
    )  # fmt: skip


@pytest.mark.parametrize("kind", list(MAKERS))
def test_lora_block_equals_the_block_with_merged_weights(kind):
    """LoRA on the fused qkv (whose q/v bias timm adds inside F.linear) equals the unadapted
    attention with ``W + alpha/r * B A``."""
    model = MAKERS[kind]()
    original = copy.deepcopy(model)
    config = af.AdapterConfig(method="lora", bottleneck=4, lora_alpha=6.0)
    af.inject(model, config)
    randomize_task(model, "default")
    x, shared = _tokens(model)
    assert_lora_blocks_equal_merged(
        model, original, x, lambda block, x: block(x, shared_rel_pos_bias=shared),
        lambda block, x, **kw: beit_block(block, x, shared, **kw), config,
    )  # fmt: skip


@pytest.mark.parametrize(
    "kind,method",
    [("beit", "adaptformer"), ("beit", "lora"), ("beit", "bitfit"), ("beit_shared", "houlsby")],
)
def test_task_file_loads_under_another_name(kind, method, tmp_path):
    config = af.AdapterConfig(method=method, **({"bottleneck": 4} if method != "bitfit" else {}))
    assert_save_load_under_another_name(MAKERS[kind], X, config, tmp_path / "task")


@pytest.mark.parametrize("kind", list(MAKERS))
def test_mixed_batches_equal_each_task_alone(kind):
    model = add_tasks(MAKERS[kind](), NO_PROMPTS)
    tasks = [*NO_PROMPTS, "lora", "ada", "lin"]
    x = torch.randn(len(tasks), 3, IMG, IMG)
    assert_mixed_batches_match(model, x, tasks)


def test_onnx_and_torchscript_exports_match(tmp_path):
    model = add_tasks(beit(), {k: MIXED[k] for k in ("lora", "ada", "houlsby")})
    assert_exports(model, ["lora", "ada", "houlsby"], tmp_path)


@pytest.mark.parametrize("method", ["adaptformer", "lora", "bitfit", "linear", "full"])
def test_trainable_parameter_counts(method):
    assert_trainable_count(beit(), method)
