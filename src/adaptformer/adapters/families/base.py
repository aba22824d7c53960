"""The seam between the adapter methods and a transformer family: one small declared spec.

Everything adaptformer needs to know about a transformer lives in one :class:`BlockFamily`:
where the blocks are (in depth order, each with its own width), how a block's attention branch
and MLP branch are computed (with the family's own layer scale, drop-path and extra call
arguments such as RoPE or a shared relative-position bias), where LoRA goes, whether prompt
tokens can be inserted, and where the classifier head sits. The adapter rules themselves
(AdaptFormer's parallel AdaptMLP, the family of positions, LoRA, prompts) are written once, in
:func:`pre_norm_residual` and ``adapters.inject``, against the spec, never against a model class.

A block keeps its own class and submodules: :func:`adapted_class` makes a subclass of the
block's class whose ``forward`` is the spec's residual with the adapter points, and the block's
``__class__`` is switched to it. Every backbone key, buffer, attribute and helper method of the
original block stays where it was (``blocks.3.attn.qkv.weight``, Swin's ``attn_mask``), so
pretrained checkpoints keep loading and the family's own code keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# ``delta(point, src)``: the update of the adapters that read ``point`` (None if there are none).
Delta = Callable[[str, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class BlockFamily:
    """How to adapt one family of transformer blocks.

    Args:
        name: short name shown in messages and recorded in task files (``vit``, ``swin``, ...).
        block_types: the block classes this spec writes out. A subclass that overrides
            ``forward`` is refused (its forward is not the one the spec reproduces).
        blocks: ``model -> blocks in depth order``, or None when the model is not of this family.
        attn_branch: ``(block, x, *args, **kwargs) -> branch``: what the block adds to its
            residual stream for attention, layer scale and drop-path included. ``args``/``kwargs``
            are whatever the model passes to the block (RoPE, a shared relative-position bias).
        mlp_branch: ``(block, x) -> branch``: the same for the MLP.
        width: ``block -> channels`` of the block's residual stream (differs per stage in Swin).
        lora_targets: ``block -> paths`` of the attention's input projection inside the block:
            one fused ``qkv`` Linear, or three (q, k, v) Linears that LoRA treats as one fused
            matrix (one shared ``A``, ``B`` split in three), so both layouts hold the same tensors.
        prompts: None if prompt tokens (VPT) can be inserted after the prefix tokens; otherwise
            the one-line reason they cannot (windowed attention, tokens on a 2-D grid).
        head: attribute path of the classifier the task heads replace (``head``, ``head.fc``).
        output: ``(block output, block) -> what the block's forward returns`` (Hugging Face
            layers return tuples in some versions).
        mask_kwarg: the keyword the block's attention takes an additive attention mask under
            (mixed batches mask padded prompt slots through it); None if it takes none.
        prompt_context: optional ``(block, x, args, kwargs) -> context manager`` entered around
            every adapted block's residual, where ``x`` may hold prompt tokens after the prefix
            (e.g. RoPE must count them as prefix tokens).
        prepare_lora: optional ``block -> None`` run when LoRA is first added to a block (e.g.
            make an attention that calls ``F.linear`` on a fused weight call the module). It must
            leave the block's outputs unchanged; it is not undone when LoRA is removed.
        prefix_tokens: ``model -> tokens before the patch tokens`` (class and register tokens).
        note: one line for the docs' support table (e.g. where a post-norm block's adapter reads).
    """

    name: str
    block_types: tuple[type[nn.Module], ...]
    blocks: Callable[[nn.Module], Sequence[nn.Module] | None]
    attn_branch: Callable[..., torch.Tensor]
    mlp_branch: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    width: Callable[[nn.Module], int]
    lora_targets: Callable[[nn.Module], tuple[str, ...]] = lambda block: ("attn.qkv",)
    prompts: str | None = None
    head: str = "head"
    output: Callable[[torch.Tensor, nn.Module], Any] = lambda out, block: out
    mask_kwarg: str | None = "attn_mask"
    prompt_context: Callable[..., Any] | None = None
    prepare_lora: Callable[[nn.Module], None] | None = None
    prefix_tokens: Callable[[nn.Module], int] = lambda model: int(
        getattr(model, "num_prefix_tokens", 0) or 0
    )
    note: str = ""
    examples: tuple[str, ...] = field(default=())

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled (and deep-copied) by name: a spec holds functions, and the registered spec
        is the one every adapted block of that family points to."""
        return (family_named, (self.name,))

    def accepts(self, block: nn.Module) -> bool:
        """Whether ``block`` is one of this family's classes with its forward not overridden."""
        from ..inject import AdaptedBlock  # the adapted subclass of an accepted block

        if isinstance(block, AdaptedBlock):
            return block.family == self
        return any(
            isinstance(block, t) and type(block).forward is t.forward for t in self.block_types
        )


def family_named(name: str) -> BlockFamily:
    """The registered family called ``name`` (how pickled models find their spec again)."""
    from . import FAMILIES

    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(
        f"no transformer family named {name!r} is registered; register_family() its spec "
        "before loading a model adapted with it"
    )


def pre_norm_residual(
    block: nn.Module, x: torch.Tensor, delta: Delta, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """A block's two residual steps plus the adapter outputs ``delta`` returns.

    The one place the adapter family's rules are written, for every transformer family, for a
    single task and for mixed-task batches alike. Every update lands outside drop-path and
    layer-scale (they are part of the family's branches):

    - ``attn``: reads the attention branch, added before the MLP (Houlsby's first adapter);
    - ``parallel``: reads the stream after attention, before the MLP branch (AdaptFormer, from its
      reference code; the paper's figure is wrong), added to the block output;
    - ``sequential``: reads the MLP branch, added to the block output (Houlsby's second);
    - ``post``: reads the block output and adds to it, ``x + s*A(x)`` (Adapter+, Pfeiffer).

    Post-norm blocks (Swin V2, EVA post-norm) fit the same two steps: their norm sits inside the
    branch (``x + norm(attn(x))``), so ``parallel`` still reads the stream the MLP branch reads.
    """
    family: BlockFamily = block.family
    a = family.attn_branch(block, x, *args, **kwargs)
    d = delta("attn", a)
    x = x + a if d is None else x + a + d
    mlp = family.mlp_branch(block, x)
    out = x + mlp
    for point, src in (("parallel", x), ("sequential", mlp)):
        d = delta(point, src)
        if d is not None:
            out = out + d
    d = delta("post", out)
    return out if d is None else out + d


def get_path(root: nn.Module, path: str) -> Any:
    """``root.a.b`` for ``path='a.b'`` (None if a part is missing)."""
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    """Set ``root.a.b = value`` for ``path='a.b'``."""
    parent, _, leaf = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, leaf, value)
