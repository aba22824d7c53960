"""Small random timm ViTs for fast CPU tests (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
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


# A Hugging Face ViT config of tiny_vit(depth=2)'s shape, for conversion and parity tests.
TINY_HF_VIT = dict(
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=192,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)


def tiny_hf(kind: str = "vit", **overrides) -> torch.nn.Module:
    """A random Hugging Face encoder of tiny_vit(depth=2)'s shape: ``vit`` (``ViTModel``),
    ``dinov2`` (``Dinov2Model``, LayerScale) or ``registers`` (``Dinov2WithRegistersModel``,
    2 register tokens); 32x32 inputs, patch 8."""
    import transformers

    common = {**TINY_HF_VIT, "qkv_bias": True}
    if kind == "vit":
        config = transformers.ViTConfig(**{**common, **overrides})
        return transformers.ViTModel(config, add_pooling_layer=False).eval()
    common.pop("intermediate_size")
    common["layerscale_value"] = 0.5  # not 1.0, so a missing LayerScale would show
    if kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(**{**common, **overrides}))
    else:
        config = transformers.Dinov2WithRegistersConfig(
            num_register_tokens=2, **common, **overrides
        )
        model = transformers.Dinov2WithRegistersModel(config)
    with torch.no_grad():  # HF initialises LayerScale to a constant; make each channel differ
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.uniform_(0.2, 1.0)
    return model.eval()


def randomize_(module: torch.nn.Module, std: float = 0.05) -> None:
    """Give every parameter of ``module`` non-zero random values (adapters start at zero)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


def refusal_without_hanging(call: Callable[[], object], fifo: Path, what: str) -> ValueError:
    """The ``ValueError`` ``call`` raises on meeting ``fifo``, a FIFO where a file should be;
    fails the test if ``call`` returns, or still blocks after 60 s (a reader that opened the
    FIFO waits for a writer: the FIFO is then opened for writing so the test run can end)."""
    import threading

    errors: list[ValueError] = []

    def run() -> None:
        try:
            call()
        except ValueError as e:
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=60)
    if t.is_alive():
        with open(fifo, "wb"):
            pass
        pytest.fail(f"{what} hung on a FIFO")
    assert errors, f"{what} accepted a FIFO"
    return errors[0]
