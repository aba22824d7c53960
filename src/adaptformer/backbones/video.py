"""A video Vision Transformer that loads VideoMAE checkpoints and is built from timm ``Block``s.

VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video
Pre-Training (Tong et al., NeurIPS 2022, https://arxiv.org/abs/2203.12602); the layout follows
``modeling_finetune.py`` of https://github.com/MCG-NJU/VideoMAE, the backbone of AdaptFormer's
video experiments: tubelet patch embedding (``Conv3d``), fixed sinusoidal positions over the
flattened (time, height, width) token grid, joint space-time attention with q/v biases, mean
pooling followed by ``fc_norm``.

The transformer blocks are timm's own ``Block`` (forward not overridden), so
``adaptformer.inject`` adapts this model exactly as it adapts an image ViT. VideoMAE's separate
``q_bias``/``v_bias`` become the bias of timm's fused ``qkv`` with the key part zero; a key bias
adds the same ``q . b_k`` to every logit of a query, which softmax ignores, so its gradient is
zero and it stays zero under training.

Image -> video inflation (see ``checkpoints.video_model_from_image``) also needs a class token,
register tokens and LayerScale. Prefix tokens are repeated once per temporal slot: the copies
see identical inputs and stay identical, which equals one token whose attention logit is raised
by ``log(T')``. That keeps the class token's share of attention what it was in the image model,
so on a static clip the inflated model reproduces the image model exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm, Mlp
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..adapters.layers import make_head

PosEmbed = Literal["sincos", "learned"]
GlobalPool = Literal["avg", "token"]

# VideoMAE's released encoder sizes (patch 16, tubelet 2, MLP ratio 4, LayerNorm eps 1e-6).
VIDEO_SIZES: dict[str, dict[str, int]] = {
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
}
_SIZE_ALIASES = {"vit_s": "small", "vit_b": "base", "vit_l": "large", "vit_h": "huge"}


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed position table ``[1, num_positions, dim]`` (sin on even, cos on odd).

    Computed in float64 and rounded once to float32, as VideoMAE's numpy code does, so the
    values match the table its checkpoints were trained with.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


class TubeletEmbed(nn.Module):
    """``Conv3d`` with kernel = stride = ``(tubelet, patch, patch)``; tokens in (t, h, w) order."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        num_frames: int,
        tubelet_size: int,
        in_chans: int,
        embed_dim: int,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if img_size % patch_size or num_frames % tubelet_size:
            raise ValueError(
                f"img_size={img_size} must be a multiple of patch_size={patch_size} and "
                f"num_frames={num_frames} a multiple of tubelet_size={tubelet_size}"
            )
        self.img_size, self.patch_size = img_size, patch_size
        self.num_frames, self.tubelet_size = num_frames, tubelet_size
        self.grid_size = (
            num_frames // tubelet_size,
            img_size // patch_size,
            img_size // patch_size,
        )
        self.num_patches = math.prod(self.grid_size)
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel, stride=kernel, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or tuple(x.shape[2:]) != (self.num_frames, self.img_size, self.img_size):
            raise ValueError(
                f"expected clips [B, C, {self.num_frames}, {self.img_size}, {self.img_size}], got "
                f"{tuple(x.shape)}: build the model with matching num_frames / img_size"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class VideoVisionTransformer(nn.Module):
    """Joint space-time ViT on ``[B, C, T, H, W]`` clips (VideoMAE layout, timm interface).

    Args:
        img_size: input height and width.
        patch_size: spatial patch size (16 for VideoMAE, 14 for DINOv2).
        num_frames: frames per clip.
        tubelet_size: frames per token (2 in VideoMAE).
        in_chans: input channels.
        num_classes: classes of the head; 0 gives pooled features.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        qkv_bias: bias on q and v (and a k bias that stays zero, see the module docstring).
        init_values: LayerScale init; None means no LayerScale (VideoMAE's default).
        class_token: add a class token (repeated per temporal slot); VideoMAE has none.
        reg_tokens: register tokens (repeated per temporal slot), as in DINOv2-reg.
        pos_embed: ``sincos`` (fixed buffer, not saved) or ``learned`` (a parameter).
        temporal_embed: add a learnable per-time-slot embedding, initialised at zero. Inflated
            image models need it to tell time slots apart: their positions repeat over time.
        global_pool: ``avg`` (mean of patch tokens) or ``token`` (class token).
        fc_norm: LayerNorm after pooling instead of on all tokens; None means ``avg`` pooling.
        norm_pre: LayerNorm before the blocks (CLIP-style ViTs).
        patch_bias: bias on the tubelet convolution.
        norm_eps: LayerNorm epsilon.
        act_layer: MLP activation.
        mlp_layer: timm MLP class of the blocks.
        norm_layer: LayerNorm class (called with ``eps``).
        drop_rate: dropout after position embedding and before the head.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, increasing linearly over blocks.
        mean: input normalisation mean (recorded in ``default_cfg``).
        std: input normalisation std.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 8,
        tubelet_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 0,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        class_token: bool = False,
        reg_tokens: int = 0,
        pos_embed: PosEmbed = "sincos",
        temporal_embed: bool = False,
        global_pool: GlobalPool = "avg",
        fc_norm: bool | None = None,
        norm_pre: bool = False,
        patch_bias: bool = True,
        norm_eps: float = 1e-6,
        act_layer: type[nn.Module] = nn.GELU,
        mlp_layer: type[nn.Module] = Mlp,
        norm_layer: Callable[..., nn.Module] = LayerNorm,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__()
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed={pos_embed!r} must be 'sincos' or 'learned'")
        if global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool={global_pool!r} must be 'avg' or 'token'")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        norm = partial(norm_layer, eps=norm_eps)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.head_hidden_size = embed_dim
        self.grad_checkpointing = False

        self.patch_embed = TubeletEmbed(
            img_size, patch_size, num_frames, tubelet_size, in_chans, embed_dim, bias=patch_bias
        )
        slots = self.patch_embed.grid_size[0]
        self.num_time_slots = slots
        self.num_reg_tokens = reg_tokens
        prefix = int(class_token) + reg_tokens
        self.num_prefix_tokens = prefix * slots  # every prefix token once per time slot
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        n = self.patch_embed.num_patches
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dim))
        else:  # fixed: a buffer, left out of state_dict as in VideoMAE's checkpoints
            self.register_buffer("pos_embed", sinusoid_table(n, embed_dim), persistent=False)
        self.time_embed = (
            nn.Parameter(torch.zeros(1, slots, 1, embed_dim)) if temporal_embed else None
        )
        self.pos_drop = nn.Dropout(drop_rate)
        self.norm_pre = norm(embed_dim) if norm_pre else nn.Identity()

        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(
            *[
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    init_values=init_values,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    act_layer=act_layer,
                    norm_layer=norm,
                    mlp_layer=mlp_layer,
                )
                for i in range(depth)
            ]
        )
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else norm(embed_dim)
        self.fc_norm = norm(embed_dim) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = make_head(embed_dim, num_classes)

        self.default_cfg: dict[str, Any] = {
            "architecture": "video_vit",
            "input_size": (in_chans, num_frames, img_size, img_size),
            "num_frames": num_frames,
            "tubelet_size": tubelet_size,
            "patch_size": patch_size,
            "mean": tuple(mean),
            "std": tuple(std),
            "interpolation": "bilinear",
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        }
        self.pretrained_cfg = self.default_cfg
        self._init_weights()

    def _init_weights(self) -> None:
        """VideoMAE's init: trunc-normal(0.02) Linears with zero bias, unit LayerNorms.

        The head keeps ``make_head``'s init (the reference's std 0.01, zero bias).
        """
        for m in self.modules():
            if isinstance(m, nn.Linear) and m is not self.head:
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)  # timm's init for class/register tokens
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "reg_token", "time_embed"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: activations, not weights, fill memory."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: GlobalPool | None = None) -> None:
        """A fresh head for ``num_classes`` (0: features), optionally another pooling."""
        if global_pool is not None:
            if global_pool not in ("avg", "token"):
                raise ValueError(f"global_pool={global_pool!r} must be 'avg' or 'token'")
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs a model with a class token")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = make_head(self.embed_dim, num_classes)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed.to(x.dtype)
        if self.time_embed is not None:
            b, n, d = x.shape
            x = (x.view(b, self.num_time_slots, -1, d) + self.time_embed.to(x.dtype)).view(b, n, d)
        prefix = [t for t in (self.cls_token, self.reg_token) if t is not None]
        if prefix:
            tokens = torch.cat(prefix, dim=1).repeat(1, self.num_time_slots, 1)
            x = torch.cat([tokens.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` clip -> ``[B, prefix + T' * H' * W', D]`` normalised tokens."""
        x = self.norm_pre(self._pos_embed(self.patch_embed(x)))
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "token":
            return x[:, 0]
        return x[:, self.num_prefix_tokens :].mean(dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


__all__ = [
    "VIDEO_SIZES",
    "TubeletEmbed",
    "VideoVisionTransformer",
    "sinusoid_table",
]
