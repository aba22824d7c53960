"""Hugging Face ``transformers`` ViT and DINOv2 layers, inside ``backbones.hf.HFVisionBackbone``.

Two specs, one per layer class, written out from the layers' own ``forward`` in transformers
4.56+ (the declared ``adaptformer[hf]`` range):

- ``ViTLayer`` (``hf-vit``): ``x = x + attention(layernorm_before(x))``, then
  ``x = output(intermediate(layernorm_after(x)), x)``. ``ViTOutput`` adds its residual itself
  (``dense -> dropout -> + input``), so the MLP branch is written out as ``dense -> dropout``
  and the residual is added by :func:`~adaptformer.adapters.families.base.pre_norm_residual`
  with the adapters beside it.
- ``Dinov2Layer`` and ``Dinov2WithRegistersLayer`` (``hf-dinov2``):
  ``x = x + drop_path(layer_scale1(attention(norm1(x))))``,
  ``x = x + drop_path(layer_scale2(mlp(norm2(x))))``: the same computation as timm's ``Block``
  with LayerScale, so the shared DINOv2 weights give the same outputs through both.

LoRA goes on ``attention.attention.{query,key,value}``, three Linears treated as one fused
``qkv`` matrix (one ``A``, ``B`` split in three), so a LoRA task file holds the same tensors as
on timm's fused ``qkv`` and loads into either implementation.

Attention masks: HF's attention takes ``head_mask`` (multiplied into the attention weights after
the softmax), not an additive mask. Mixed batches of prompt tasks with different prompt counts
pass an additive key-padding bias under ``attn_mask``; the attention branch then computes the
same self-attention with ``F.scaled_dot_product_attention`` on the layer's own ``query``,
``key``, ``value`` and ``output`` modules (LoRA included), so padded prompt slots are masked.

Layers return a tensor in 4.56+ (they returned tuples before), and the adapted layer returns the
same type. The specs find layers only inside ``HFVisionBackbone``: a bare ``ViTModel`` has no
``head`` nor ``forward_features``, and ``family_of`` refuses it with a line naming the wrapper.
Importing this module imports ``transformers``; ``backbones.hf`` registers the specs when it
wraps a model, so ``import adaptformer`` stays free of transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersLayer,
)
from transformers.models.vit.modeling_vit import ViTLayer

from .base import BlockFamily

# The separate q/k/v projections of HF's ``ViTSelfAttention`` / ``Dinov2SelfAttention``.
QKV_PATHS = ("attention.attention.query", "attention.attention.key", "attention.attention.value")


def _layers(model: nn.Module, model_types: tuple[str, ...]) -> Sequence[nn.Module] | None:
    """``model.encoder.layer`` of an :class:`HFVisionBackbone` of one of ``model_types``."""
    from ...backbones.hf import HFVisionBackbone

    if not isinstance(model, HFVisionBackbone) or model.model_type not in model_types:
        return None
    return model.encoder.layer


def _self_attention(
    attention: nn.Module,
    h: torch.Tensor,
    head_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """HF's ``ViTAttention``/``Dinov2Attention`` on ``h`` (self-attention + output projection);
    with an additive ``attn_mask``, the same computation written out with that mask."""
    if attn_mask is None:
        return attention(h, head_mask)
    if head_mask is not None:
        raise ValueError("a head_mask and an attention mask cannot be combined in one call")
    a = attention.attention
    b, n, _ = h.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, a.num_attention_heads, a.attention_head_size).transpose(1, 2)

    ctx = F.scaled_dot_product_attention(
        heads(a.query(h)),
        heads(a.key(h)),
        heads(a.value(h)),
        attn_mask=attn_mask.to(h.dtype),
        dropout_p=a.dropout_prob if a.training else 0.0,
        scale=a.scaling,
    )
    return attention.output(ctx.transpose(1, 2).reshape(b, n, a.all_head_size), h)


def _vit_attn(
    block: nn.Module, x: torch.Tensor, head_mask: Any = None, attn_mask: Any = None
) -> torch.Tensor:
    return _self_attention(block.attention, block.layernorm_before(x), head_mask, attn_mask)


def _vit_mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = block.output  # ViTOutput: dense -> dropout -> + its second argument (left out here)
    return out.dropout(out.dense(block.intermediate(block.layernorm_after(x))))


def _dinov2_attn(
    block: nn.Module, x: torch.Tensor, head_mask: Any = None, attn_mask: Any = None
) -> torch.Tensor:
    a = _self_attention(block.attention, block.norm1(x), head_mask, attn_mask)
    return block.drop_path(block.layer_scale1(a))


def _dinov2_mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block.drop_path(block.layer_scale2(block.mlp(block.norm2(x))))


HF_VIT = BlockFamily(
    name="hf-vit",
    block_types=(ViTLayer,),
    blocks=lambda model: _layers(model, ("vit",)),
    attn_branch=_vit_attn,
    mlp_branch=_vit_mlp,
    width=lambda block: int(block.layernorm_before.normalized_shape[0]),
    lora_targets=lambda block: QKV_PATHS,
    note="Hugging Face ViTModel / ViTForImageClassification through "
    "adaptformer.backbones.hf (--model hf:FOLDER)",
    examples=("google/vit-base-patch16-224-in21k",),
)

HF_DINOV2 = BlockFamily(
    name="hf-dinov2",
    block_types=(Dinov2Layer, Dinov2WithRegistersLayer),
    blocks=lambda model: _layers(model, ("dinov2", "dinov2_with_registers")),
    attn_branch=_dinov2_attn,
    mlp_branch=_dinov2_mlp,
    width=lambda block: int(block.norm1.normalized_shape[0]),
    lora_targets=lambda block: QKV_PATHS,
    note="Hugging Face Dinov2Model (with registers too) through adaptformer.backbones.hf "
    "(--model hf:FOLDER); same outputs as timm's DINOv2 on the same weights",
    examples=("facebook/dinov2-small", "facebook/dinov2-with-registers-small"),
)

HF_FAMILIES = (HF_VIT, HF_DINOV2)
