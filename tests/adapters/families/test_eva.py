"""timm's Eva family (EVA, EVA-02, EVA-CLIP): the spec against EvaBlock / EvaBlockPostNorm
written out by hand, RoPE with prompt tokens, LoRA on fused and separate q/k/v, and the
family-independent checks of ``family_checks``."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.eva import EvaAttention, EvaBlock, EvaBlockPostNorm

import adaptformer as af
from adaptformer.adapters.families import family_of
from adaptformer.adapters.families.eva import EVA, call_qkv_module

from .family_checks import (
    MIXED,
    ZERO_INIT,
    add_tasks,
    assert_blocks_follow_formula,
    assert_exports,
    assert_identity_at_init,
    assert_lora_blocks_equal_merged,
    assert_mixed_batches_match,
    assert_prompts_matter_and_switch_off,
    assert_save_load_under_another_name,
    assert_trainable_count,
    randomize_task,
)

IMG = 56  # 4x4 patches of 14 px


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    """Biases (q_bias, v_bias included) and layer-scale gammas start at constants, and timm's
    small init makes attention nearly uniform: random values make every term of the block show
    in the checks."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.normal_(0.1, 0.05)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.05)
            elif p.ndim >= 2 and not name.startswith("head"):
                p.normal_(0.0, 0.1)
    return model.eval()


def eva02() -> torch.nn.Module:
    """EVA-02: RoPE, SwiGLU with its inner norm, separate q/k/v, gamma layer scale."""
    torch.manual_seed(0)
    return _finish(timm.create_model(
        "eva02_tiny_patch14_224", img_size=IMG, depth=2, embed_dim=64, num_heads=4,
        qkv_fused=False, scale_mlp=True, init_values=0.1, num_classes=5,
    ))  # fmt: skip


def eva_clip() -> torch.nn.Module:
    """EVA (v1) / EVA-CLIP: fused qkv with q_bias/v_bias applied by F.linear, no RoPE."""
    torch.manual_seed(0)
    return _finish(timm.create_model(
        "eva_giant_patch14_224", img_size=IMG, depth=2, embed_dim=64, num_heads=4,
        mlp_ratio=4.0, num_classes=5,
    ))  # fmt: skip


def eva_post() -> torch.nn.Module:
    """EVA-CLIP's post-norm block (EVA-02-E), here with RoPE."""
    torch.manual_seed(0)
    return _finish(timm.create_model(
        "eva02_enormous_patch14_clip_224", img_size=IMG, depth=2, embed_dim=64, num_heads=4,
        mlp_ratio=4.0, use_rot_pos_emb=True, num_classes=5,
    ))  # fmt: skip


MAKERS = {"eva02": eva02, "eva_clip": eva_clip, "eva_post": eva_post}
ROPE = ["eva02", "eva_post"]
X = torch.randn(2, 3, IMG, IMG)


def test_the_models_are_what_the_checks_claim():
    m = eva02()
    assert type(m.blocks[0]) is EvaBlock and m.rope is not None
    assert m.blocks[0].attn.qkv is None and m.blocks[0].gamma_1 is not None
    assert type(m.blocks[0].mlp).__name__ == "SwiGLU"
    m = eva_clip()
    attn = m.blocks[0].attn
    assert type(attn) is EvaAttention and m.rope is None
    assert attn.qkv.bias is None and attn.q_bias is not None and not attn.qkv_bias_separate
    m = eva_post()
    assert type(m.blocks[0]) is EvaBlockPostNorm and m.rope is not None
    for make in MAKERS.values():
        assert family_of(make()) is EVA


# --- zero-initialised updates change nothing ----------------------------------------------------
@pytest.mark.parametrize("method", list(ZERO_INIT))
@pytest.mark.parametrize("kind", list(MAKERS))
def test_identity_at_initialisation(kind, method):
    assert_identity_at_init(MAKERS[kind](), X, ZERO_INIT[method])


@pytest.mark.parametrize("kind", list(MAKERS))
def test_prompts_matter_and_switch_off(kind):
    assert_prompts_matter_and_switch_off(MAKERS[kind](), X, prompt_tokens=3)


def test_calling_the_qkv_module_keeps_outputs():
    """EVA-CLIP's attention adds q_bias/v_bias inside F.linear on qkv.weight; the switch LoRA
    needs (timm's qkv_bias_separate) gives the same outputs."""
    model = eva_clip()
    with torch.no_grad():
        before = model(X)
        for block in model.blocks:
            call_qkv_module(block)
            assert block.attn.qkv_bias_separate
        torch.testing.assert_close(model(X), before, atol=1e-6, rtol=0)


# --- the blocks written out by hand -------------------------------------------------------------
def eva_block(block, x, rope, attn=None, adapter=None, position=None, first=None):
    """timm's EvaBlock / EvaBlockPostNorm written out, plus the adapter rules of REFERENCE.md.

    Pre-norm:  h = x + gamma_1 * attn(norm1(x), rope);   m = gamma_2 * mlp(norm2(h))
    Post-norm: h = x + norm1(attn(x, rope));             m = norm2(mlp(h))
    out = h + m, plus the adapter: parallel A(h), sequential A(m), post A(h + m); houlsby adds
    ``first(a)`` to h and A(m) to the output. ``attn`` stands in for the block's attention
    (LoRA's merged weights); RoPE goes through the attention's own call.
    """
    attn = attn or block.attn
    post_norm = isinstance(block, EvaBlockPostNorm)
    if post_norm:
        a = block.norm1(attn(x, rope=rope))
    else:
        a = attn(block.norm1(x), rope=rope)
        a = a if block.gamma_1 is None else block.gamma_1 * a
    h = x + a
    if position == "houlsby":
        h = h + first(a)
    if post_norm:
        m = block.norm2(block.mlp(h))
    else:
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
    rope = model.rope.get_embed() if model.rope is not None else None
    return torch.randn(2, 1 + 16, model.embed_dim), rope


@pytest.mark.parametrize("position", ["parallel", "sequential", "post", "houlsby"])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_adapted_block_equals_the_hand_written_formula(kind, position):
    model = MAKERS[kind]()
    af.inject(model, af.AdapterConfig(bottleneck=8, scale=0.3, position=position, dropout=0.0))
    randomize_task(model, "default")
    x, rope = _tokens(model)
    assert_blocks_follow_formula(
        model, x, lambda block, x: block(x, rope=rope),
        lambda block, x, **kw: eva_block(block, x, rope, **kw), position, 0.3,
    )  # fmt: skip


@pytest.mark.parametrize("kind", list(MAKERS))
def test_lora_block_equals_the_block_with_merged_weights(kind):
    """LoRA on separate q/k/v (EVA-02) or on the fused qkv whose bias timm applies through
    F.linear (EVA-CLIP) equals the unadapted attention with ``W + alpha/r * B A``."""
    model = MAKERS[kind]()
    original = copy.deepcopy(model)
    config = af.AdapterConfig(method="lora", bottleneck=4, lora_alpha=6.0)
    af.inject(model, config)
    randomize_task(model, "default")
    x, rope = _tokens(model)
    assert_lora_blocks_equal_merged(
        model, original, x, lambda block, x: block(x, rope=rope),
        lambda block, x, **kw: eva_block(block, x, rope, **kw), config,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ROPE)
def test_prompts_are_prefix_tokens_that_rope_does_not_rotate(kind):
    """With prompts the block equals timm's own block on [cls, prompts, patches] with RoPE
    extended by the identity rotation (sin 0, cos 1) for the prompt tokens."""
    model = MAKERS[kind]()
    original = copy.deepcopy(model)
    af.inject(model, af.AdapterConfig(method="vpt", prompt_tokens=3))
    x, rope = _tokens(model)
    half = rope.shape[-1] // 2
    identity = torch.cat([torch.zeros(3, half), torch.ones(3, half)], dim=-1)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            prompts = block.prompts["default"].expand(2, -1, -1)
            with_prompts = torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)
            expected = original.blocks[i](with_prompts, rope=torch.cat([identity, rope]))
            expected = torch.cat([expected[:, :1], expected[:, 4:]], dim=1)
            got = block(x, rope=rope)
            assert block.attn.num_prefix_tokens == 1  # put back after the block ran
            assert (got - original.blocks[i](x, rope=rope)).abs().max() > 1e-3
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# --- task files, many tasks, export, counts -----------------------------------------------------
@pytest.mark.parametrize(
    "kind,method",
    [("eva02", "adaptformer"), ("eva02", "lora"), ("eva02", "vpt"), ("eva_clip", "lora"),
     ("eva_clip", "bitfit"), ("eva_post", "houlsby")],
)  # fmt: skip
def test_task_file_loads_under_another_name(kind, method, tmp_path):
    config = af.AdapterConfig(method=method, **({"bottleneck": 4} if method != "vpt" and
                                                method != "bitfit" else {}))  # fmt: skip
    assert_save_load_under_another_name(MAKERS[kind], X, config, tmp_path / "task")


@pytest.mark.parametrize("kind", list(MAKERS))
def test_mixed_batches_equal_each_task_alone(kind):
    model = add_tasks(MAKERS[kind](), MIXED)
    tasks = [*MIXED, "vpt", "ada", "vpt_sh"]  # prompts of 3, 0 and 2 tokens side by side
    x = torch.randn(len(tasks), 3, IMG, IMG)
    assert_mixed_batches_match(model, x, tasks)


@pytest.mark.parametrize("kind", ["eva02", "eva_clip"])
def test_onnx_and_torchscript_exports_match(kind, tmp_path):
    model = add_tasks(MAKERS[kind](), {k: MIXED[k] for k in ("vpt", "lora", "ada", "vpt_sh")})
    assert_exports(model, ["vpt", "lora", "ada", "vpt_sh"], tmp_path)


@pytest.mark.parametrize("method", ["adaptformer", "lora", "vpt", "bitfit", "linear", "full"])
@pytest.mark.parametrize("kind", ["eva02", "eva_clip"])
def test_trainable_parameter_counts(kind, method):
    assert_trainable_count(MAKERS[kind](), method)


def test_bitfit_trains_evas_separate_q_and_v_biases():
    model = eva_clip()
    af.inject(model, af.AdapterConfig(method="bitfit"), num_classes=3)
    af.mark_trainable(model, "bitfit")
    attn = model.blocks[0].attn
    assert attn.q_bias.requires_grad and attn.v_bias.requires_grad
    assert not attn.qkv.weight.requires_grad


def test_lora_on_grouped_query_attention_is_refused_and_undone():
    """Sapiens2-style attention (fewer k/v heads) would give LoRA a B of another height than
    the fused layout task files record: refused in one line, the model left as it was."""
    torch.manual_seed(0)
    try:
        model = timm.create_model("vit_small_patch16_rope_224", img_size=64, depth=2,
                                  embed_dim=64, num_heads=4, num_kv_heads=2, qkv_fused=False,
                                  num_classes=3).eval()  # fmt: skip
    except TypeError:
        pytest.skip("this timm has no grouped-query attention in Eva")
    x = torch.randn(1, 3, 64, 64)
    before = model(x)
    with pytest.raises(TypeError, match="grouped-query attention") as e:
        af.inject(model, af.AdapterConfig(method="lora", bottleneck=4))
    assert "\n" not in str(e.value)
    assert type(model.blocks[0]) is EvaBlock and not hasattr(model, "adaptformer")
    assert type(model.blocks[0].attn.q_proj) is torch.nn.Linear
    af.inject(model, af.AdapterConfig(bottleneck=4, dropout=0.0))  # adapters still work
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)
