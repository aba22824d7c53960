"""Small random timm ViTs for fast CPU tests (no downloads)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer


def tiny_vit(
    depth: int = 4,
    embed_dim: int = 48,
    num_classes: int = 7,
    layer_scale: bool = False,
    **kwargs,
) -> VisionTransformer:
    """A 32x32-input ViT with patch 8: 16 patches + CLS, fast enough for exact tests."""
    model = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=4,
        num_classes=num_classes,
        init_values=0.1 if layer_scale else None,
        **kwargs,
    )
    return model.eval()


def randomize_(module: torch.nn.Module, std: float = 0.05) -> None:
    """Give every parameter of ``module`` non-zero random values (adapters start at zero)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
