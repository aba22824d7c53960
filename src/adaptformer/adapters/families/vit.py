"""timm's pre-norm ``Block``: ViT, DeiT (III), DINOv2, CLIP ViTs, and adaptformer's video ViT.

``x = x + drop_path1(ls1(attn(norm1(x))))``, ``x = x + drop_path2(ls2(mlp(norm2(x))))``
(``timm.models.vision_transformer.Block``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .base import BlockFamily


def sequence_of_blocks(model: nn.Module, attr: str = "blocks") -> Sequence[nn.Module] | None:
    """``model.<attr>`` when it is a ``Sequential``/``ModuleList`` (timm's flat layout)."""
    blocks = getattr(model, attr, None)
    return blocks if isinstance(blocks, (nn.Sequential, nn.ModuleList)) else None


def _attn(block: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return block.drop_path1(block.ls1(block.attn(block.norm1(x), *args, **kwargs)))


def _mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


VIT = BlockFamily(
    name="vit",
    block_types=(Block,),
    blocks=sequence_of_blocks,
    attn_branch=_attn,
    mlp_branch=_mlp,
    width=lambda block: (
        int(block.norm1.weight.shape[0])
        if getattr(block.norm1, "weight", None) is not None
        else int(block.mlp.fc1.in_features)
    ),
    examples=("vit_small_patch14_dinov2", "vit_base_patch16_224", "deit3_small_patch16_224"),
)
