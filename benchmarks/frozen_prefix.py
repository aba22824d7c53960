"""Training-time savings that change no result: a frozen prefix run without autograd.

When adapters sit only in later blocks (``AdapterConfig(layers=[6, 7, ..., 11])``), nothing
below the first adapted block trains, so no gradient has to flow there. PyTorch's autograd
already records no graph for operations whose inputs need no gradient, so with a frozen
``patch_embed``/``pos_embed`` the prefix costs a forward pass only. :func:`skip_frozen_prefix`
makes that explicit and independent of what happens upstream: the blocks before the first one
holding a trainable parameter run under ``torch.no_grad()``, and per-block gradient
checkpointing (optional) is applied to the remaining blocks only. Gradients of every trainable
parameter are unchanged (tested against the normal path).

If the tokens entering the blocks require a gradient (something upstream trains, e.g. a trainable
``patch_embed`` or ``pos_embed``), the prefix is run normally: skipping it would silently drop
those gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def first_trainable_block(blocks: nn.Module) -> int:
    """Index of the first block holding a parameter with ``requires_grad``; ``len(blocks)`` if none."""
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(blocks)


class FrozenPrefixBlocks(nn.Sequential):
    """``model.blocks`` with a no-autograd frozen prefix and optional per-block checkpointing.

    Submodules keep their indices, so state-dict keys (``blocks.3.attn.qkv.weight``) do not
    change. The prefix length is read at every forward from ``requires_grad``, so calling
    ``mark_trainable`` afterwards is safe.
    """

    def __init__(self, blocks: nn.Sequential, grad_checkpointing: bool = False) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In inference, or when something upstream trains, there is nothing to skip.
        skip = torch.is_grad_enabled() and not x.requires_grad
        start = first_trainable_block(self) if skip else 0
        for i, block in enumerate(self):
            if i < start:
                with torch.no_grad():
                    x = block(x)
            elif self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def skip_frozen_prefix(model: nn.Module, grad_checkpointing: bool = False) -> int:
    """Run the frozen blocks before the first trainable one without autograd.

    Replaces ``model.blocks`` by a :class:`FrozenPrefixBlocks` holding the same modules.
    timm's own ``set_grad_checkpointing`` iterates over the blocks itself and would bypass the
    prefix, so it is switched off here; pass ``grad_checkpointing=True`` to checkpoint the
    trained blocks instead.

    Args:
        model: a timm ``VisionTransformer``-family model (or adaptformer's video ViT), usually
            after ``inject`` and ``mark_trainable``.
        grad_checkpointing: recompute each trained block's activations in backward.

    Returns:
        The number of blocks that currently run without autograd.

    Raises:
        TypeError: the model has no ``nn.Sequential`` of blocks.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise TypeError(
            f"{type(model).__name__} has no nn.Sequential `blocks`; skip_frozen_prefix supports "
            "timm VisionTransformer-family models and adaptformer's video ViT"
        )
    if not isinstance(blocks, FrozenPrefixBlocks):
        model.blocks = FrozenPrefixBlocks(blocks)
    model.blocks.grad_checkpointing = grad_checkpointing
    if getattr(model, "grad_checkpointing", False):
        model.grad_checkpointing = False
    return first_trainable_block(model.blocks)


def restore_blocks(model: nn.Module) -> None:
    """Undo :func:`skip_frozen_prefix`: a plain ``nn.Sequential`` of the same blocks again."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, FrozenPrefixBlocks):
        checkpointing = blocks.grad_checkpointing
        model.blocks = nn.Sequential(*blocks)
        if checkpointing and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
