"""The optimizer's parameter groups: weight decay, layer-wise lr decay, new-parameter multiplier.

Video fine-tuning recipes (MAE/VideoMAE ``param_groups_lrd``, timm's
``param_groups_layer_decay``) do not give a whole pretrained ViT one learning rate: block ``i``
of ``depth`` trains at ``lr * decay**(depth - i)``, what comes before the first block (patch and
position embeddings, class token) at ``decay**(depth + 1)``, what comes after the last (final
norm) and the head at the full ``lr`` (``--layer-decay``, VideoMAE: 0.75). An image model
inflated to video also holds parameters no checkpoint provided: its zero-initialised
``time_embed``, without which it cannot tell frame order, and the new classifier. A learning
rate small enough for pretrained weights barely moves them, so ``--new-params-lr-scale``
multiplies their learning rate.

"New" means the head and the backbone's fresh parameters (``fresh_parameters``), not the
adapter tensors of AdaptFormer, LoRA or VPT: those are new too, but each method's learning rate
was chosen for them (``DEFAULT_BLR``), so scaling them would only change that choice. Adapter
tensors sit inside a block and get that block's layer decay, as in timm (which groups by name).

Which block a parameter belongs to comes from the family's block list
(:func:`adaptformer.adapters.inject.model_blocks`), so every family works; a backbone parameter
outside every block is placed by its order in ``named_parameters`` (registration order): before
the first block one step below it (``depth + 1`` steps down: the embeddings), between two blocks
the rate of the block before it (e.g. a Swin stage's patch merging), after the last block the
full rate (final norms). Weight decay stays on matrices only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..adapters.inject import active_head, model_blocks, unwrap
from ..adapters.trainable import fresh_parameters


def new_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters the checkpoint did not provide: the head's and the fresh ones."""
    model = unwrap(model)
    ids = {id(p) for p in active_head(model).parameters()}
    ids |= {id(p) for p in fresh_parameters(model).values()}
    return [k for k, p in model.named_parameters() if id(p) in ids]


# How far AdamW must be able to move a zero-initialised fresh tensor for it to be learnt. AdamW
# moves an entry by at most about its learning rate per step, so a run's reach is the sum of the
# tensor's learning rates over its steps. On docs/video.md's motion benchmark full fine-tuning
# stayed at chance with a time_embed reach of 0.004 (defaults; largest entry kept: 0.0007) and
# of 0.015 (lr 1e-4, the 2026-11-26 table), and learned frame order with 0.037 (x10, largest
# entry 0.029). The line sits between them. A reach above it is necessary, not sufficient (at lr
# 1e-3, reach 0.15, the whole backbone trained too fast and stayed at chance as well).
MIN_FRESH_REACH = 0.02


def fresh_reach_warning(
    model: nn.Module,
    optimizer: str,
    new_scale: float,
    lr_at: Callable[[float], float],
    steps_per_epoch: int,
    epochs: int,
) -> str | None:
    """A warning when a trainable zero-initialised fresh tensor (an inflated video model's
    ``time_embed``) cannot move far enough under AdamW over the whole run to be learnt;
    ``lr_at(epoch)`` is the schedule. None when it can, or with SGD (no such bound)."""
    if optimizer != "adamw":
        return None
    fresh = fresh_parameters(model)  # unwraps DDP/compile itself
    zero = [k for k, p in fresh.items() if p.requires_grad and not p.any()]
    if not zero:
        return None
    total = steps_per_epoch * epochs
    reach = new_scale * sum(lr_at(step / steps_per_epoch) for step in range(total))
    if reach >= MIN_FRESH_REACH:
        return None
    return (
        f"{', '.join(zero)} starts at zero and AdamW moves an entry by at most about its "
        f"learning rate per step: {reach:.2g} over this whole run at x{new_scale:g}, below "
        f"{MIN_FRESH_REACH:g} (docs/video.md: full fine-tuning learned frame order at 0.037, not "
        "at 0.015); raise it with --new-params-lr-scale (video recipes: --layer-decay 0.75 "
        "--new-params-lr-scale 100)"
    )


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's layer id (0 = before the first block, ``i + 1`` = block ``i``,
    ``depth + 1`` = after the last) and the number of layers, ``depth + 1`` (MAE's
    ``get_layer_id_for_vit``, with blocks found through the family)."""
    model = unwrap(model)
    blocks = model_blocks(model)
    block_of = {id(p): i for i, b in enumerate(blocks) for p in b.parameters()}
    ids: dict[str, int] = {}
    seen = 0  # blocks whose parameters came before, in registration order
    for name, p in model.named_parameters():
        if id(p) in block_of:
            ids[name] = block_of[id(p)] + 1
            seen = max(seen, block_of[id(p)] + 1)
        else:
            ids[name] = seen if seen < len(blocks) else len(blocks) + 1
    return ids, len(blocks) + 1


def lr_scales(model: nn.Module, layer_decay: float, new_scale: float) -> dict[str, float]:
    """Learning-rate multiplier of every trainable parameter, by name."""
    model = unwrap(model)
    ids, layers = layer_ids(model)
    new = set(new_parameter_names(model))
    return {
        name: new_scale if name in new else layer_decay ** (layers - ids[name])
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float = 1.0, new_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer groups: one per (lr multiplier, weight decay), each with its ``lr_scale``.

    Weight decay on matrices only (nanoGPT/MAE convention): never on biases, norms, scales.
    With both options at 1 this is two groups (decay, no decay) in that order, as before, so
    checkpoints of older runs resume.
    """
    model = unwrap(model)
    scales = lr_scales(model, layer_decay, new_scale)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for decay in (True, False):
        for name, p in model.named_parameters():
            if name not in scales or (p.ndim >= 2) != decay:
                continue
            key = (scales[name], decay)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "weight_decay": weight_decay if decay else 0.0,
                    "lr_scale": scales[name],
                }
            groups[key]["params"].append(p)
    return list(groups.values())


def describe_lr_scales(model: nn.Module, layer_decay: float, new_scale: float) -> str:
    """The clause of the schedule line that says which parameters train at which multiple."""
    model = unwrap(model)
    trains = {k for k, p in model.named_parameters() if p.requires_grad}
    new = [k for k in new_parameter_names(model) if k in trains]
    parts = []
    if layer_decay == 1.0:
        parts.append("no layer decay")
    else:
        _, layers = layer_ids(model)
        depth = layers - 1
        parts.append(
            f"layer decay {layer_decay:g} (embeddings x{layer_decay**layers:.3g}, block 0 "
            f"x{layer_decay**depth:.3g} ... block {depth - 1} x{layer_decay:.3g}, after it x1)"
        )
    shown = ", ".join(new) if len(new) <= 4 else f"{', '.join(new[:4])} and {len(new) - 4} more"
    parts.append(f"new parameters ({shown or 'none'}) x{new_scale:g}")
    return "lr multipliers: " + "; ".join(parts)
