"""timm's Swin Transformer (V1) and Swin Transformer V2 blocks: two specs, one layout.

Swin Transformer: Hierarchical Vision Transformer using Shifted Windows (Liu et al., ICCV 2021,
https://arxiv.org/abs/2103.14030). Swin Transformer V2: Scaling Up Capacity and Resolution
(Liu et al., CVPR 2022, https://arxiv.org/abs/2111.09883). Code: timm's
``timm.models.swin_transformer`` and ``timm.models.swin_transformer_v2`` (1.0.21 to 1.0.31).

What differs from a plain ViT, and how the spec handles it:

- Hierarchy: blocks sit in stages (``model.layers[s].blocks[j]``) whose width doubles from stage
  to stage (96, 192, 384, 768 in Swin-T). :func:`swin_blocks` lists them flattened in depth
  order, so ``layers.1.blocks.0`` of a (2, 2, 6, 2) model is ``blocks.2`` in task files, and each
  AdaptMLP is built at its own block's width. Asked for Swin support (issues 29 and 31 of
  github.com/ShoufaChen/AdaptFormer), the AdaptFormer author's advice (issue 4) is a bottleneck of
  ``dim // 12`` per stage, "a similar amount of parameters compared with plain ViT":
  ``AdapterConfig(bottleneck_ratio=0.083)`` gives that at Swin-T/S widths (8, 16, 32, 64 at 96,
  192, 384, 768; ``AdapterConfig.bottleneck_for`` says how it rounds).
- The block input is a 2-D grid ``(B, H, W, C)``; the adapters are per-token MLPs over the last
  dimension, so they read and write it as it is. The MLP branch is computed on ``(B, H*W, C)``
  and reshaped back, as timm does.
- Attention is windowed (``block._attn``: shift, partition into windows, attend, merge), so there
  is no token sequence to insert VPT prompts into: VPT is refused (:attr:`BlockFamily.prompts`).
- The classifier is ``model.head.fc`` inside timm's ``ClassifierHead``; the task heads replace
  that Linear, so ``forward_head`` still pools (and ``pre_logits=True`` returns the pooled
  features).
- LoRA goes on the fused ``attn.qkv``. Swin V2 keeps q and v biases apart from ``qkv`` and, by
  default, calls ``F.linear`` on ``qkv.weight``, which would bypass LoRA; ``prepare_lora`` turns
  on timm's own ``qkv_bias_separate`` path, which calls the module and adds the biases after
  (same values up to float rounding).

Swin V2 is post-norm: ``x = x + drop_path1(norm1(attn(x)))``, then
``x = x + drop_path2(norm2(mlp(x)))``. Its norms sit inside the branches, so the two residual
steps of :func:`~adaptformer.adapters.families.base.pre_norm_residual` still describe it, and the
parallel adapter reads the stream after the attention residual: exactly what the MLP branch
reads (in V1 that is ``norm2``'s input). ``sequential`` reads the MLP branch after its norm
(``norm2(mlp(x))``), ``post`` the block output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from torch import nn

from .base import BlockFamily

NO_PROMPTS = (
    "Swin attends within shifted windows of a 2-D token grid (B, H, W, C), which has no "
    "token sequence to insert prompt tokens into; use adaptformer, lora or bitfit"
)


def swin_blocks(model: nn.Module) -> Sequence[nn.Module] | None:
    """The blocks of every stage (``model.layers[s].blocks``) in depth order, or None."""
    stages = getattr(model, "layers", None)
    if not isinstance(stages, (nn.Sequential, nn.ModuleList)):
        return None
    blocks: list[nn.Module] = []
    for stage in stages:
        inner = getattr(stage, "blocks", None)
        if not isinstance(inner, (nn.Sequential, nn.ModuleList)):
            return None
        blocks.extend(inner)
    return blocks or None


def _width(block: nn.Module) -> int:
    dim = getattr(block, "dim", None)
    return int(dim) if isinstance(dim, int) else int(block.mlp.fc1.in_features)


def _on_tokens(x: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` on ``(B, H*W, C)``, the result back on the grid (timm's MLP step does the same)."""
    return fn(x.reshape(x.shape[0], -1, x.shape[-1])).reshape(x.shape)


def _attn_v1(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block.drop_path1(block._attn(block.norm1(x)))


def _mlp_v1(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _on_tokens(x, lambda t: block.drop_path2(block.mlp(block.norm2(t))))


def _attn_v2(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block.drop_path1(block.norm1(block._attn(x)))


def _mlp_v2(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _on_tokens(x, lambda t: block.drop_path2(block.norm2(block.mlp(t))))


def _qkv_through_module(block: nn.Module) -> None:
    """Make Swin V2's attention call ``qkv`` (so LoRA sees it) instead of ``F.linear`` on its
    weight with the concatenated q/k/v bias: timm's ``qkv_bias_separate`` path."""
    attn = block.attn
    if getattr(attn, "q_bias", None) is None:
        return  # no separate biases: timm already calls self.qkv(x)
    if not hasattr(attn, "qkv_bias_separate"):
        raise TypeError(
            "this timm's Swin V2 attention has no qkv_bias_separate switch, so LoRA on its qkv "
            "would be bypassed: install timm >= 1.0.21"
        )
    attn.qkv_bias_separate = True


SWIN = BlockFamily(
    name="swin",
    block_types=(SwinTransformerBlock,),
    blocks=swin_blocks,
    attn_branch=_attn_v1,
    mlp_branch=_mlp_v1,
    width=_width,
    prompts=NO_PROMPTS,
    head="head.fc",
    mask_kwarg=None,
    note=(
        "hierarchical: blocks of all stages numbered in depth order, each adapter at its "
        "stage's width (bottleneck_ratio=0.083 gives dim // 12); head is head.fc; no VPT "
        "(windowed attention)"
    ),
    examples=(
        "swin_tiny_patch4_window7_224.ms_in1k",
        "swin_small_patch4_window7_224.ms_in22k_ft_in1k",
        "swin_base_patch4_window7_224.ms_in22k",
    ),
)

# Swin's spec with V2's blocks: post-norm branches, and qkv biases that bypass the module.
SWINV2 = replace(
    SWIN,
    name="swinv2",
    block_types=(SwinTransformerV2Block,),
    attn_branch=_attn_v2,
    mlp_branch=_mlp_v2,
    prepare_lora=_qkv_through_module,
    note=(
        "post-norm (x + norm1(attn(x))): the parallel adapter reads the stream after the "
        "attention residual, what the MLP branch reads; sequential reads norm2(mlp(x)); "
        "otherwise as swin"
    ),
    examples=(
        "swinv2_tiny_window8_256.ms_in1k",
        "swinv2_small_window16_256.ms_in1k",
        "swinv2_base_window12_192.ms_in22k",
    ),
)
