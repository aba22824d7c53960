"""Transformer families adaptformer adapts, each one declared :class:`BlockFamily` spec.

``family_of(model)`` finds the spec whose blocks the model has. A family of your own is one
spec passed to :func:`register_family` (docs/families.md shows how).
"""

from __future__ import annotations

from torch import nn

from .base import BlockFamily, pre_norm_residual
from .beit import BEIT
from .eva import EVA
from .swin import SWIN, SWINV2
from .vit import VIT

FAMILIES: list[BlockFamily] = [VIT, EVA, BEIT, SWIN, SWINV2]

# Families people try that have no spec yet, with the reason (a one-line refusal names them).
UNSUPPORTED: dict[str, str] = {
    "Hiera": "Hiera pools tokens inside its blocks (mask-unit attention), so a block's input and "
    "output differ in length and no residual stream exists for a parallel adapter",
    "MultiScaleVit": "MViTv2 pools queries and keys inside attention and changes width within a "
    "block, so the residual stream the adapter reads changes shape mid-block",
    "VideoMAEModel": "Hugging Face's VideoMAE is not wrapped (its attention calls F.linear on the "
    "q/k/v weights and it takes (B, T, C, H, W) clips): use --model videomae_* with VideoMAE's "
    "released checkpoint, adaptformer's own video ViT",
}
# Hugging Face encoders are adapted inside the wrapper that gives them timm's interface (head,
# forward_features); its specs (families.hf) register themselves when it wraps a model.
UNSUPPORTED |= dict.fromkeys(
    [f"{m}{s}" for m in ("ViT", "Dinov2", "Dinov2WithRegisters") for s in ("Model", "ForImageClassification")],
    "wrap it first with adaptformer.backbones.hf.HFVisionBackbone(model) (or train with "
    "--model hf:FOLDER), which gives it the head and forward_features the adapters use",
)  # fmt: skip
UNSUPPORTED["VideoMAEForVideoClassification"] = UNSUPPORTED["VideoMAEModel"]
# Blocks a family knows inside a model that needs more than the family gives.
UNSUPPORTED["VisionTransformerDistilled"] = (
    "DeiT's distilled models average two heads (head on the class token, head_dist on the "
    "distillation token) and adaptformer trains one head per task: use the non-distilled DeiT "
    "weights (e.g. deit_small_patch16_224) or another ViT"
)


def register_family(family: BlockFamily) -> BlockFamily:
    """Add ``family`` (tried before the built-in ones); returns it, so it can decorate a spec."""
    if any(f.name == family.name for f in FAMILIES):
        raise ValueError(f"a transformer family named {family.name!r} is registered already")
    FAMILIES.insert(0, family)
    return family


def unregister_family(name: str) -> None:
    """Remove a family added by :func:`register_family` (tests, experiments)."""
    FAMILIES[:] = [f for f in FAMILIES if f.name != name]


def family_of(model: nn.Module) -> BlockFamily:
    """The family whose blocks ``model`` has.

    Raises:
        TypeError: one line naming the model's class, what is refused and why, and the families
            that are supported.
    """
    name = type(model).__name__
    if name in UNSUPPORTED:  # by exact class: subclasses that a family does handle still pass
        raise TypeError(f"adaptformer cannot adapt {name}: {UNSUPPORTED[name]}")
    tried: list[str] = []
    for family in FAMILIES:
        blocks = family.blocks(model)
        if blocks is None or len(blocks) == 0:
            continue
        bad = [(i, b) for i, b in enumerate(blocks) if not family.accepts(b)]
        if not bad:
            return family
        i, b = bad[0]
        tried.append(
            f"block {i} is a {type(b).__module__}.{type(b).__name__}, not one of the "
            f"{family.name} family's {', '.join(t.__name__ for t in family.block_types)}"
        )
    supported = ", ".join(f.name for f in FAMILIES)
    why = tried[0] if tried else f"{name} has no transformer blocks adaptformer knows"
    raise TypeError(
        f"adaptformer cannot adapt {name}: {why}; supported families: {supported} "
        "(docs/families.md shows how to declare a spec for another transformer)"
    )


__all__ = [
    "FAMILIES",
    "UNSUPPORTED",
    "BlockFamily",
    "family_of",
    "pre_norm_residual",
    "register_family",
    "unregister_family",
]
