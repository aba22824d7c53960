"""timm's ``Beit``: BEiT (v1) and BEiT v2.

- BEiT: BERT Pre-Training of Image Transformers (Bao et al., ICLR 2022,
  https://arxiv.org/abs/2106.08254);
- BEiT v2: Masked Image Modeling with Vector-Quantized Visual Tokenizers (Peng et al., 2022,
  https://arxiv.org/abs/2208.06366);
- code: https://github.com/microsoft/unilm/tree/master/beit and ``timm.models.beit``.

``x = x + drop_path1(gamma_1 * attn(norm1(x), shared_rel_pos_bias=...))``, then
``x = x + drop_path2(gamma_2 * mlp(norm2(x)))`` (``timm.models.beit.Block``; ``gamma_1``/
``gamma_2`` are layer-scale Parameters on the block, None without layer scale). The shared
relative-position bias, when the model has one, is passed to each block at call time.

Every block's attention adds a relative-position bias looked up in a table for exactly the class
token and the patch grid (``relative_position_index`` is ``(1 + grid)^2``), so a prompt token has
no position in it: VPT is refused. The fused ``qkv`` with ``q_bias``/``v_bias`` is called through
``F.linear`` on its weight; LoRA switches timm's ``qkv_bias_separate`` so the module runs
(:func:`adaptformer.adapters.families.eva.call_qkv_module`, shared with EVA).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.beit import Block
from torch import nn

from .base import BlockFamily
from .eva import call_qkv_module
from .vit import sequence_of_blocks


def _attn(block: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    a = block.attn(block.norm1(x), *args, **kwargs)
    gamma = getattr(block, "gamma_1", None)
    return block.drop_path1(a if gamma is None else gamma * a)


def _mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m = block.mlp(block.norm2(x))
    gamma = getattr(block, "gamma_2", None)
    return block.drop_path2(m if gamma is None else gamma * m)


BEIT = BlockFamily(
    name="beit",
    block_types=(Block,),
    blocks=sequence_of_blocks,
    attn_branch=_attn,
    mlp_branch=_mlp,
    width=lambda block: int(block.attn.proj.out_features),
    prompts=(
        "BEiT's relative-position bias is a table for exactly the class token and the patch "
        "grid, so prompt tokens have no position in it"
    ),
    mask_kwarg=None,
    prepare_lora=call_qkv_module,
    note=(
        "BEiT v1/v2; gamma layer scale stays inside the branch; relative-position tables are "
        "resampled to --img-size on load; no VPT (the relative-position bias has no slot for "
        "prompts)"
    ),
    examples=(
        "beit_base_patch16_224.in22k_ft_in22k_in1k",
        "beitv2_base_patch16_224.in1k_ft_in22k_in1k",
        "beit_large_patch16_224.in22k_ft_in22k_in1k",
    ),
)
