"""Put named adapters (AdaptMLPs, VPT prompts, LoRA, task heads) into a timm Vision Transformer.

Each supported transformer block is replaced by an :class:`AdaptedBlock` that adopts the
block's own submodules under their own names, so every backbone key (``blocks.3.attn.qkv.weight``)
is unchanged and pretrained checkpoints keep loading. The parallel AdaptMLP follows the reference
code, not the paper's figure (the authors confirmed the figure is wrong): it reads the residual
stream after attention, before ``norm2``, and is added outside drop-path and layer-scale.

Heads: the active task's head is ``model.head`` (so timm's ``forward_head`` and
``reset_classifier`` act on it); the other tasks' heads wait in ``model.task_heads`` and are
swapped in by :func:`set_adapter`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .config import AdapterConfig, method_rule
from .layers import AdaptMLP, LoRALinear, make_head, make_prompts

_log = logging.getLogger(__name__)

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


@dataclass
class AdapterState:
    """Bookkeeping kept on the model (``model.adaptformer``): configs, heads, active name."""

    configs: dict[str, AdapterConfig] = field(default_factory=dict)
    num_classes: dict[str, int] = field(default_factory=dict)
    active: str | None = None


class AdaptedBlock(nn.Module):
    """A timm pre-norm ``Block`` with named AdaptMLPs and VPT prompts beside it."""

    # Set only while a mixed-task batch runs (``adaptformer.adapters.routing.routed``): each row then uses
    # its own task's prompts and AdaptMLP instead of the active adapter.
    routing = None

    def __init__(self, block: nn.Module, num_prefix_tokens: int) -> None:
        super().__init__()
        for part in _BLOCK_PARTS:
            self.add_module(part, getattr(block, part))
        self.adaptmlp = nn.ModuleDict()
        # The first adapter of the houlsby position (on the attention output); the second one,
        # on the MLP output, is the task's ``adaptmlp`` entry.
        self.attn_adapter = nn.ModuleDict()
        self.prompts = nn.ParameterDict()
        self.num_prefix_tokens = num_prefix_tokens
        # Shallow VPT: prompts inserted at one block, kept, and removed after the last block.
        self.keep_prompts: set[str] = set()
        self.drop_prompts_after: dict[str, int] = {}
        self.active_adapter: str | None = None
        self.adapters_enabled = True

    def _insert(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        p = prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        n = self.num_prefix_tokens
        return torch.cat([x[:, :n], p, x[:, n:]], dim=1)

    def _remove(self, x: torch.Tensor, count: int) -> torch.Tensor:
        n = self.num_prefix_tokens
        return torch.cat([x[:, :n], x[:, n + count :]], dim=1)

    def residual(
        self,
        x: torch.Tensor,
        delta: Callable[[str, torch.Tensor], torch.Tensor | None],
        attn_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """timm's two pre-norm residual steps plus the adapter outputs ``delta`` returns.

        The one place the adapter family's rules are written, for a single task and for
        mixed-task batches alike. ``delta(point, src)`` is the update of the adapters reading
        ``point`` (None if there are none); every update lands outside drop-path and layer-scale:

        - ``attn``: reads the attention branch, added before the MLP (Houlsby's first adapter);
        - ``parallel``: reads the stream after attention, before ``norm2`` (AdaptFormer, from its
          reference code; the paper's figure is wrong), added to the block output;
        - ``sequential``: reads the MLP branch, added to the block output (Houlsby's second);
        - ``post``: reads the block output and adds to it, ``x + s*A(x)`` (Adapter+, Pfeiffer).
        """
        a = self.drop_path1(self.ls1(self.attn(self.norm1(x), **attn_kwargs)))
        d = delta("attn", a)
        x = x + a if d is None else x + a + d
        mlp = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        out = x + mlp
        for point, src in (("parallel", x), ("sequential", mlp)):
            d = delta(point, src)
            if d is not None:
                out = out + d
        d = delta("post", out)
        return out if d is None else out + d

    def adapters_of(self, name: str | None) -> list[nn.Module]:
        """Task ``name``'s adapters in this block (none, one, or two for houlsby)."""
        if name is None:
            return []
        return [d[name] for d in (self.attn_adapter, self.adaptmlp) if name in d]

    def remove(self, name: str) -> None:
        """Forget task ``name``'s AdaptMLP and prompts (nothing happens if it has none here)."""
        for d in (self.adaptmlp, self.attn_adapter):
            if name in d:
                del d[name]
        if name in self.prompts:
            del self.prompts[name]
        self.keep_prompts.discard(name)
        self.drop_prompts_after.pop(name, None)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if self.routing is not None:
            return self.routing.block_forward(self, x, attn_mask, is_causal)
        name = self.active_adapter if self.adapters_enabled else None
        prompts = self.prompts[name] if name is not None and name in self.prompts else None
        if prompts is not None:
            x = self._insert(x, prompts)
        kwargs = {}
        if attn_mask is not None:
            kwargs["attn_mask"] = attn_mask
        if is_causal:
            kwargs["is_causal"] = True
        adapters = {a.reads: a for a in self.adapters_of(name)}

        def delta(point: str, src: torch.Tensor) -> torch.Tensor | None:
            return adapters[point](src) if point in adapters else None

        x = self.residual(x, delta, kwargs)
        if prompts is not None and name not in self.keep_prompts:
            x = self._remove(x, prompts.shape[0])
        if name is not None and name in self.drop_prompts_after:
            x = self._remove(x, self.drop_prompts_after[name])
        return x


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / ``torch.compile`` wrapper (or the model itself)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def adapter_state(model: nn.Module) -> AdapterState:
    """The model's :class:`AdapterState`; an error if nothing was injected."""
    state = getattr(unwrap(model), "adaptformer", None)
    if not isinstance(state, AdapterState):
        raise ValueError("this model has no adapters; call adaptformer.inject(model, config) first")
    return state


def _blocks(model: nn.Module) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise TypeError(
            f"{type(model).__name__} has no `blocks` sequence of transformer blocks; adaptformer "
            "supports timm VisionTransformer-family models (ViT, DeiT, DINOv2, BEiT-free ViTs) "
            "and adaptformer's video ViT"
        )
    return blocks


def _check_block(block: nn.Module, index: int) -> None:
    if isinstance(block, AdaptedBlock):
        return
    supported = (
        isinstance(block, Block)
        and type(block).forward is Block.forward
        and all(hasattr(block, p) for p in _BLOCK_PARTS)
        and not list(block.named_parameters(recurse=False))
    )
    if not supported:
        raise TypeError(
            f"block {index} is a {type(block).__module__}.{type(block).__name__}, which adaptformer "
            "cannot adapt: only timm's pre-norm `Block` (ViT, DeiT, DINOv2, EVA-free ViTs) has the "
            "attention/MLP residual layout the AdaptFormer formula assumes"
        )


def _head_dim(model: nn.Module) -> int:
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _head_classes(head: nn.Module) -> int:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


def get_head(model: nn.Module, name: str) -> nn.Module:
    """The head of task ``name``, wherever it currently sits."""
    model = unwrap(model)
    state = adapter_state(model)
    if name not in state.configs:
        raise KeyError(f"no adapter named {name!r}; have {sorted(state.configs)}")
    return model.head if name == state.active else model.task_heads[name]


def inject(
    model: nn.Module,
    config: AdapterConfig | None = None,
    name: str = "default",
    num_classes: int | None = None,
) -> nn.Module:
    """Add adapter ``name`` to ``model`` in place and make it the active one.

    Args:
        model: a timm ``VisionTransformer``-family model (or adaptformer's video ViT).
        config: what to add; ``AdapterConfig()`` (AdaptFormer-64, the paper's setting) if None.
        name: the task name; several names can live in one model.
        num_classes: classes of this task's head. None keeps the model's current head for the
            first adapter and gives later ones a fresh head of the same size.

    Returns:
        The same model, for chaining.
    """
    config = config or AdapterConfig()
    if not name or not isinstance(name, str) or "." in name:
        raise ValueError(f"adapter name {name!r} must be a non-empty string without dots")
    model = unwrap(model)
    blocks = _blocks(model)
    for i, block in enumerate(blocks):
        _check_block(block, i)
    state = getattr(model, "adaptformer", None)
    if isinstance(state, AdapterState) and name in state.configs:
        raise ValueError(f"an adapter named {name!r} exists already; delete_adapter() it first")
    # Everything that can be refused is checked before the model changes...
    layers = config.resolve_layers(len(blocks))
    if config.method == "lora":
        for i in layers:
            if not isinstance(getattr(blocks[i].attn, "qkv", None), nn.Linear):
                raise TypeError(f"block {i}'s attention has no fused `qkv` Linear for LoRA")
    # ...and whatever still fails (memory, a layer's constructor) is undone: all or nothing.
    undo = _Undo(model, blocks)
    try:
        _add_adapter(model, blocks, config, name, layers, num_classes)
    except BaseException:
        undo.restore(name)
        raise
    _log.info("injected %s adapter %r into %d blocks", config.method, name, len(layers))
    return model


def _add_adapter(
    model: nn.Module,
    blocks: nn.Module,
    config: AdapterConfig,
    name: str,
    layers: list[int],
    num_classes: int | None,
) -> None:
    """The changes :func:`inject` makes, after its checks passed."""
    depth = len(blocks)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    dim = _head_dim(model)
    for i in range(depth):
        if not isinstance(blocks[i], AdaptedBlock):
            blocks[i] = AdaptedBlock(blocks[i], prefix)
    embed_dim = int(getattr(model, "embed_dim", dim))
    if method_rule(config.method).bottleneck_adapter:
        for i in layers:
            blocks[i].adaptmlp[name] = AdaptMLP(embed_dim, config)
            if config.position == "houlsby":
                blocks[i].attn_adapter[name] = AdaptMLP(embed_dim, config, reads="attn")
    elif config.method == "vpt":
        if config.prompt_mode == "deep":
            for i in layers:
                blocks[i].prompts[name] = make_prompts(config.prompt_tokens, embed_dim)
        else:
            first = layers[0]
            blocks[first].prompts[name] = make_prompts(config.prompt_tokens, embed_dim)
            blocks[first].keep_prompts.add(name)
            blocks[depth - 1].drop_prompts_after[name] = config.prompt_tokens
    elif config.method == "lora":
        for i in layers:
            attn = blocks[i].attn
            if not isinstance(attn.qkv, LoRALinear):
                attn.qkv = LoRALinear(attn.qkv)
            attn.qkv.add(name, config.bottleneck, config.lora_alpha)

    state = getattr(model, "adaptformer", None)
    if not isinstance(state, AdapterState):
        state = AdapterState()
    head_needed = num_classes is not None or config.head_batchnorm or state.configs
    if head_needed:
        classes = _head_classes(model.head) if num_classes is None else num_classes
        new_head = make_head(dim, classes, config.head_batchnorm)
    else:
        new_head = model.head
    if state.active is not None:
        _park_active_head(model, state)
    model.head = new_head
    model.train(model.training)  # new modules start in train mode; follow the model's mode
    model.adaptformer = state
    state.configs[name] = config
    state.num_classes[name] = _head_classes(new_head)
    state.active = name
    _set_active(model, name)


class _Undo:
    """What :func:`inject` may change, recorded before it starts, to put back if it fails."""

    def __init__(self, model: nn.Module, blocks: nn.Module) -> None:
        self.model, self.blocks = model, blocks
        self.block_list = list(blocks)
        self.qkv = [(b.attn, b.attn.qkv) for b in blocks if hasattr(b.attn, "qkv")]
        self.head = model.head
        self.had_task_heads = "task_heads" in model._modules
        self.task_heads = dict(model.task_heads) if self.had_task_heads else {}
        self.state = model.__dict__.get("adaptformer")
        self.bookkeeping = (
            (dict(self.state.configs), dict(self.state.num_classes), self.state.active)
            if isinstance(self.state, AdapterState)
            else None
        )
        self.active = [(m, m.active_adapter) for m in _adapted_modules(model)]
        self.modes = [(m, m.training) for m in model.modules()]
        self.num_classes = model.__dict__.get("num_classes")

    def restore(self, name: str) -> None:
        model = self.model
        for m in _adapted_modules(model):
            m.remove(name)
        for attn, qkv in self.qkv:
            if attn.qkv is not qkv:
                attn.qkv = qkv
        for i, block in enumerate(self.block_list):
            if self.blocks[i] is not block:
                self.blocks[i] = block
        model.head = self.head
        if self.had_task_heads:
            for key in [k for k in model.task_heads if k not in self.task_heads]:
                del model.task_heads[key]
        elif "task_heads" in model._modules:
            del model.task_heads
        if self.bookkeeping is None:
            model.__dict__.pop("adaptformer", None)
        else:
            configs, num_classes, active = self.bookkeeping
            model.adaptformer = self.state
            self.state.configs, self.state.num_classes = configs, num_classes
            self.state.active = active
        for m, active in self.active:
            m.active_adapter = active
        for m, mode in self.modes:
            m.training = mode
        if self.num_classes is not None:
            model.num_classes = self.num_classes


def _park_active_head(model: nn.Module, state: AdapterState) -> None:
    if not hasattr(model, "task_heads"):
        model.task_heads = nn.ModuleDict()
    model.task_heads[state.active] = model.head


def _adapted_modules(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        if isinstance(m, (AdaptedBlock, LoRALinear)):
            yield m


def adapter_pieces(model: nn.Module, name: str) -> Iterator[tuple[str, nn.Module | nn.Parameter]]:
    """Every piece adapter ``name`` added to the backbone, with its path minus the task name.

    ``blocks.3.adaptmlp`` (an AdaptMLP), ``blocks.3.attn_adapter`` (Houlsby's first AdaptMLP),
    ``blocks.3.prompts`` (a Parameter),
    ``blocks.3.attn.qkv.lora_A`` and ``.lora_B`` (Linears). This is the one walk over adapted
    modules: parameter names inside the model are ``<path>.<name>[.<key>]``, the keys of a task
    file ``<path>[.<key>]``.
    """
    for path, m in unwrap(model).named_modules():
        if isinstance(m, AdaptedBlock):
            if name in m.attn_adapter:
                yield f"{path}.attn_adapter", m.attn_adapter[name]
            if name in m.adaptmlp:
                yield f"{path}.adaptmlp", m.adaptmlp[name]
            if name in m.prompts:
                yield f"{path}.prompts", m.prompts[name]
        elif isinstance(m, LoRALinear) and name in m.lora_A:
            yield f"{path}.lora_A", m.lora_A[name]
            yield f"{path}.lora_B", m.lora_B[name]


def _set_active(model: nn.Module, name: str) -> None:
    for m in _adapted_modules(model):
        m.active_adapter = name
    state = adapter_state(model)
    if hasattr(model, "num_classes"):
        model.num_classes = state.num_classes[name]


def set_adapter(model: nn.Module, name: str) -> None:
    """Make ``name`` the active task: its adapters run and its head becomes ``model.head``."""
    model = unwrap(model)
    state = adapter_state(model)
    if name not in state.configs:
        raise KeyError(f"no adapter named {name!r}; have {sorted(state.configs)}")
    if name == state.active:
        return
    _park_active_head(model, state)
    model.head = model.task_heads[name]
    del model.task_heads[name]
    state.active = name
    _set_active(model, name)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the bare backbone inside the block: no AdaptMLP, prompts or LoRA (the head stays)."""
    model = unwrap(model)
    with temporarily_set(model, "adapters_enabled", False):
        yield model


@contextlib.contextmanager
def temporarily_set(model: nn.Module, attr: str, value: Any) -> Iterator[None]:
    """Set ``attr`` on every adapted module of ``model`` for the enclosed block, then restore it.

    Modules are collected once on entry, so the previous values are restored even if the
    block raises.
    """
    modules = list(_adapted_modules(model))
    before = [getattr(m, attr, None) for m in modules]
    for m in modules:
        setattr(m, attr, value)
    try:
        yield
    finally:
        for m, old in zip(modules, before, strict=True):
            setattr(m, attr, old)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` and its head.

    Deleting the active task activates the first remaining one (sorted by name); deleting the
    last task leaves the model a plain backbone whose ``head`` is that task's head.
    """
    model = unwrap(model)
    state = adapter_state(model)
    if name not in state.configs:
        raise KeyError(f"no adapter named {name!r}; have {sorted(state.configs)}")
    for m in _adapted_modules(model):
        m.remove(name)
    del state.configs[name]
    del state.num_classes[name]
    if state.active == name:
        state.active = None
        remaining = sorted(state.configs)
        if remaining:
            model.head = model.task_heads[remaining[0]]
            del model.task_heads[remaining[0]]
            state.active = remaining[0]
            _set_active(model, remaining[0])
        else:  # no task left: keep the last head as the plain model head, forget the state
            del model.adaptformer
            for m in _adapted_modules(model):
                m.active_adapter = None
    else:
        del model.task_heads[name]
