"""timm's ``Eva``: EVA, EVA-02, EVA-CLIP, and the other timm models built on it.

- EVA: Exploring the Limits of Masked Visual Representation Learning at Scale (Fang et al.,
  CVPR 2023, https://arxiv.org/abs/2211.07636);
- EVA-02: A Visual Representation for Neon Genesis (Fang et al., 2023,
  https://arxiv.org/abs/2303.11331): RoPE, SwiGLU MLP, separate q/k/v;
- EVA-CLIP (Sun et al., 2023, https://arxiv.org/abs/2303.15389), whose largest model uses the
  post-norm block;
- code: https://github.com/baaivision/EVA and ``timm.models.eva``, whose ``Eva`` class also
  runs timm's RoPE ViTs, DINOv3 and Perception Encoder weights; this spec covers them all.

Two block classes, written out here as timm's forward computes them:

- ``EvaBlock`` (pre-norm): ``x = x + drop_path1(gamma_1 * attn(norm1(x), rope=...))``, then
  ``x = x + drop_path2(gamma_2 * mlp(norm2(x)))``; ``gamma_1``/``gamma_2`` are layer-scale
  Parameters on the block (None without layer scale; ``gamma_2`` also None with timm's
  attention-only layer scale).
- ``EvaBlockPostNorm``: ``x = x + drop_path1(norm1(attn(x, rope=...)))``, then
  ``x = x + drop_path2(norm2(mlp(x)))``: the norm sits inside each branch, after attention and
  after the MLP. The parallel adapter therefore reads the residual stream after the attention
  step, which is exactly what the MLP reads here (there is no pre-norm in front of the MLP to
  read after), and its output is added to the block output outside ``norm2``; ``sequential``
  reads the normalised MLP branch (``norm2(mlp(x))``, what the block adds). Every position is
  the same rule as for pre-norm blocks (``families.base.pre_norm_residual``).

RoPE is passed to each block at call time and rotates every token after the attention's
``num_prefix_tokens``. VPT prompts inserted after the class/register tokens are counted as
prefix tokens while the block runs (:func:`prompts_as_prefix`), so they are not rotated and the
patch tokens keep exactly the rotation they had. Mixed-task batches with different prompt
counts mask the padded slots through the attention's ``attn_mask``.

EVA (v1) and EVA-CLIP attentions fuse q, k and v in ``qkv`` with separate ``q_bias``/``v_bias``
and call ``F.linear(x, qkv.weight, bias)`` on the weight, which would bypass LoRA on the
module; :func:`call_qkv_module` switches timm's own ``qkv_bias_separate`` flag so the module is
called and the bias added after (the same numbers, to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from timm.models.eva import EvaBlock, EvaBlockPostNorm
from torch import nn

from .base import BlockFamily
from .vit import sequence_of_blocks


def _attn(block: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if isinstance(block, EvaBlockPostNorm):
        return block.drop_path1(block.norm1(block.attn(x, *args, **kwargs)))
    a = block.attn(block.norm1(x), *args, **kwargs)
    gamma = getattr(block, "gamma_1", None)
    return block.drop_path1(a if gamma is None else gamma * a)


def _mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(block, EvaBlockPostNorm):
        return block.drop_path2(block.norm2(block.mlp(x)))
    m = block.mlp(block.norm2(x))
    gamma = getattr(block, "gamma_2", None)
    return block.drop_path2(m if gamma is None else gamma * m)


def lora_paths(block: nn.Module) -> tuple[str, ...]:
    """The fused ``attn.qkv``, or EVA-02's separate ``q_proj``/``k_proj``/``v_proj``."""
    if getattr(block.attn, "qkv", None) is not None:
        return ("attn.qkv",)
    return ("attn.q_proj", "attn.k_proj", "attn.v_proj")


def call_qkv_module(block: nn.Module) -> None:
    """Make a fused attention with ``q_bias``/``v_bias`` call its ``qkv`` module (so LoRA on it
    runs) and add the bias after, instead of ``F.linear`` on ``qkv.weight`` (EVA, BEiT)."""
    attn = block.attn
    if getattr(attn, "qkv", None) is None or getattr(attn, "q_bias", None) is None:
        return  # separate q/k/v, or no bias: the module is called already
    if not hasattr(attn, "qkv_bias_separate"):
        raise TypeError(
            f"{type(attn).__name__} applies its qkv bias through F.linear on qkv.weight and has "
            "no qkv_bias_separate switch, so LoRA on qkv would be bypassed: upgrade timm"
        )
    attn.qkv_bias_separate = True


def prepare_lora(block: nn.Module) -> None:
    """Refuse grouped-query attention (Sapiens2: fewer k/v heads than q heads), whose q, k, v
    widths differ from the equal-width fused layout task files record for LoRA; otherwise
    :func:`call_qkv_module`."""
    attn = block.attn
    q, k = getattr(attn, "q_proj", None), getattr(attn, "k_proj", None)
    if q is not None and k is not None and q.out_features != k.out_features:
        raise TypeError(
            f"LoRA cannot adapt {type(attn).__name__} with grouped-query attention (k/v width "
            f"{k.out_features}, q width {q.out_features}): task files hold LoRA as one fused "
            "q/k/v of equal widths; use an adapter method (adaptformer, adapter_plus, ...)"
        )
    call_qkv_module(block)


@contextlib.contextmanager
def prompts_as_prefix(
    block: nn.Module, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Iterator[None]:
    """While ``x`` holds prompt tokens after the prefix, the attention counts them as prefix
    tokens, so RoPE (whose table covers the patch tokens only) rotates the patches alone."""
    rope = kwargs.get("rope", args[0] if args else None)
    attn = block.attn
    before = getattr(attn, "num_prefix_tokens", None)
    if not isinstance(rope, torch.Tensor) or before is None:
        yield
        return
    attn.num_prefix_tokens = x.shape[1] - rope.shape[-2]  # everything before the patches
    try:
        yield
    finally:
        attn.num_prefix_tokens = before


EVA = BlockFamily(
    name="eva",
    block_types=(EvaBlock, EvaBlockPostNorm),
    blocks=sequence_of_blocks,
    attn_branch=_attn,
    mlp_branch=_mlp,
    width=lambda block: int(block.attn.proj.out_features),
    lora_targets=lora_paths,
    mask_kwarg="attn_mask",
    prompt_context=prompts_as_prefix,
    prepare_lora=prepare_lora,
    note=(
        "EVA/EVA-02/EVA-CLIP and timm's RoPE ViTs; gamma layer scale stays inside the branch; "
        "VPT prompts count as prefix tokens (not rotated by RoPE); post-norm blocks "
        "(EvaBlockPostNorm) adapt the stream after attention, the one their MLP reads, and add "
        "outside norm2"
    ),
    examples=(
        "eva02_base_patch14_224.mim_in22k",
        "eva02_small_patch14_224.mim_in22k",
        "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k",
        "eva_giant_patch14_224.clip_ft_in1k",
        "eva02_base_patch16_clip_224.merged2b",
    ),
)
