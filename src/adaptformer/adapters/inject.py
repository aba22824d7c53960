"""Put named adapters (AdaptMLPs, VPT prompts, LoRA, task heads) into a transformer.

Which transformers, and how their blocks compute, is the business of one declared spec per
family (:mod:`adaptformer.adapters.families`: timm ViT, EVA, BEiT, Swin, Hugging Face ViT and
DINOv2, or your own). Each block of the model keeps its own class and submodules: its class is
switched to an :class:`AdaptedBlock` subclass of it that holds the named adapters, so every
backbone key (``blocks.3.attn.qkv.weight``) is unchanged and pretrained checkpoints keep loading.
The parallel AdaptMLP follows the reference code, not the paper's figure (the authors confirmed
the figure is wrong): it reads the residual stream after attention, before the MLP branch, and is
added outside drop-path and layer-scale (``families.base.pre_norm_residual``).

Heads: the active task's head sits where the family's classifier sits (``model.head``, Swin's
``model.head.fc``), so timm's ``forward_head`` and ``reset_classifier`` act on it; the other
tasks' heads wait in ``model.task_heads`` and are swapped in by :func:`set_adapter`.

Task files name every piece by its block's depth index (``blocks.7.adaptmlp``,
``blocks.7.attn.qkv.lora_A``) whatever the family calls the block, so a task trained on one
implementation of an architecture (timm's DINOv2) loads into another (Hugging Face's).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import AdapterConfig, method_rule
from .context import current_routing
from .families import BlockFamily, family_of, pre_norm_residual
from .families.base import Delta, get_path, set_path
from .layers import AdaptMLP, LoRALinear, make_head, make_prompts

_log = logging.getLogger(__name__)

# What an adapted block adds to the block it was; a block class that already has one of these
# names cannot be adapted without clobbering it.
_ADDED = (
    "adaptmlp",
    "attn_adapter",
    "prompts",
    "num_prefix_tokens",
    "keep_prompts",
    "drop_prompts_after",
    "active_adapter",
    "adapters_enabled",
)
# The canonical place of LoRA in a task file, whether the family fuses q, k, v or not.
LORA_PATH = "attn.qkv"


@dataclass
class AdapterState:
    """Bookkeeping kept on the model (``model.adaptformer``): configs, heads, active name."""

    configs: dict[str, AdapterConfig] = field(default_factory=dict)
    num_classes: dict[str, int] = field(default_factory=dict)
    active: str | None = None
    family: BlockFamily | None = None
    generation: int = 0  # bumped whenever a task is added or removed (banks.TaskBanks watches it)


class AdaptedBlock(nn.Module):
    """A transformer block with named AdaptMLPs and VPT prompts beside it.

    Never built directly: :func:`adapted_class` derives ``Adapted<BlockClass>`` from this class
    and the block's own class, and :func:`adapt_block` switches a block to it in place.
    """

    family: BlockFamily  # set on each derived class
    original_class: type[nn.Module]

    def _init_adapters(self, num_prefix_tokens: int) -> None:
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

    def prompt_scope(
        self, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> contextlib.AbstractContextManager[Any]:
        """What the family needs while prompt tokens may sit in ``x`` (e.g. EVA's RoPE counting
        them as prefix tokens); nothing for most families."""
        hook = self.family.prompt_context
        return hook(self, x, args, kwargs) if hook is not None else contextlib.nullcontext()

    def residual(self, x: torch.Tensor, delta: Delta, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The block's residual steps plus the adapter outputs ``delta`` returns
        (``families.base.pre_norm_residual``: the one place the rules are written)."""
        return pre_norm_residual(self, x, delta, *args, **kwargs)

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

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        routing = current_routing()  # a mixed-task batch: each row its own task's adapters
        if routing is not None and routing.covers(self):
            return self.family.output(routing.block_forward(self, x, args, kwargs), self)
        name = self.active_adapter if self.adapters_enabled else None
        prompts = self.prompts[name] if name is not None and name in self.prompts else None
        if prompts is not None:
            x = self._insert(x, prompts)
        adapters = {a.reads: a for a in self.adapters_of(name)}

        def delta(point: str, src: torch.Tensor) -> torch.Tensor | None:
            return adapters[point](src) if point in adapters else None

        with self.prompt_scope(x, args, kwargs):
            x = self.residual(x, delta, *args, **kwargs)
        if prompts is not None and name not in self.keep_prompts:
            x = self._remove(x, prompts.shape[0])
        if name is not None and name in self.drop_prompts_after:
            x = self._remove(x, self.drop_prompts_after[name])
        return self.family.output(x, self)


_ADAPTED_CLASSES: dict[tuple[type[nn.Module], BlockFamily], type[AdaptedBlock]] = {}


def adapted_class(cls: type[nn.Module], family: BlockFamily) -> type[AdaptedBlock]:
    """``Adapted<cls>``: ``cls`` with the adapter points of :class:`AdaptedBlock` (made once,
    kept in this module's namespace so pickling a model finds it by name)."""
    key = (cls, family)
    if key not in _ADAPTED_CLASSES:
        name = f"Adapted{cls.__name__}_{family.name.replace('-', '_')}"
        while name in globals() and globals()[name] is not None:
            name += "_"
        made = type(
            name,
            (AdaptedBlock, cls),
            {"family": family, "original_class": cls, "__module__": __name__, "__qualname__": name},
        )
        globals()[name] = made
        _ADAPTED_CLASSES[key] = made
    return _ADAPTED_CLASSES[key]


def adapt_block(block: nn.Module, family: BlockFamily, num_prefix_tokens: int) -> AdaptedBlock:
    """Switch ``block`` in place to its adapted class (no adapters yet); returns it."""
    if isinstance(block, AdaptedBlock):
        return block
    clash = [a for a in _ADDED if a in dir(block)]
    if clash:
        raise TypeError(
            f"{type(block).__name__} already has attribute(s) {clash} that adaptformer would add"
        )
    block.__class__ = adapted_class(type(block), family)
    block._init_adapters(num_prefix_tokens)
    return block


def unadapt_block(block: nn.Module) -> None:
    """Undo :func:`adapt_block`: the block is its original class again, without adapter slots."""
    if not isinstance(block, AdaptedBlock):
        return
    for attr in ("adaptmlp", "attn_adapter", "prompts"):
        delattr(block, attr)
    for attr in _ADDED[3:8]:
        block.__dict__.pop(attr, None)
    block.__class__ = type(block).original_class


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


def model_family(model: nn.Module) -> BlockFamily:
    """The family of ``model``'s blocks (remembered once adapters are injected)."""
    state = getattr(model, "adaptformer", None)
    if isinstance(state, AdapterState) and state.family is not None:
        return state.family
    return family_of(model)


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """``model``'s transformer blocks in depth order (index ``i`` is ``blocks.i`` in task files)."""
    model = unwrap(model)
    blocks = model_family(model).blocks(model)
    assert blocks is not None
    return list(blocks)


def block_widths(model: nn.Module) -> list[int]:
    """The residual-stream width of each block (one value repeated for plain ViTs)."""
    family = model_family(unwrap(model))
    return [int(family.width(b)) for b in model_blocks(model)]


def head_width(model: nn.Module) -> int:
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _head_classes(head: nn.Module) -> int:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


def active_head(model: nn.Module) -> nn.Module:
    """The classifier module at the family's head position (the active task's head)."""
    model = unwrap(model)
    return get_path(model, model_family(model).head)


def put_head(model: nn.Module, head: nn.Module) -> None:
    set_path(model, model_family(model).head, head)


def get_head(model: nn.Module, name: str) -> nn.Module:
    """The head of task ``name``, wherever it currently sits."""
    model = unwrap(model)
    state = adapter_state(model)
    if name not in state.configs:
        raise KeyError(f"no adapter named {name!r}; have {sorted(state.configs)}")
    return active_head(model) if name == state.active else model.task_heads[name]


def inject(
    model: nn.Module,
    config: AdapterConfig | None = None,
    name: str = "default",
    num_classes: int | None = None,
) -> nn.Module:
    """Add adapter ``name`` to ``model`` in place and make it the active one.

    Args:
        model: a transformer of a supported family (timm ViT, EVA, BEiT, Swin, a Hugging Face
            ViT/DINOv2 through ``adaptformer.backbones.hf``, adaptformer's video ViT, or one
            declared with ``register_family``).
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
    family = model_family(model)
    blocks = model_blocks(model)
    state = getattr(model, "adaptformer", None)
    if isinstance(state, AdapterState) and name in state.configs:
        raise ValueError(f"an adapter named {name!r} exists already; delete_adapter() it first")
    # Everything that can be refused is checked before the model changes...
    layers = config.resolve_layers(len(blocks))
    if config.method == "vpt" and family.prompts:
        raise ValueError(f"VPT cannot be used on {family.name} models: {family.prompts}")
    if config.method == "lora":
        for i in layers:
            _lora_bases(blocks[i], family, i)
    if get_path(model, family.head) is None:
        raise TypeError(f"{type(model).__name__} has no classifier at `{family.head}`")
    # ...and whatever still fails (memory, a layer's constructor) is undone: all or nothing.
    undo = _Undo(model, blocks, family)
    try:
        _add_adapter(model, family, blocks, config, name, layers, num_classes)
    except BaseException:
        undo.restore(name)
        raise
    _log.info("injected %s adapter %r into %d %s blocks", config.method, name, len(layers),
              family.name)  # fmt: skip
    return model


def _lora_bases(block: nn.Module, family: BlockFamily, index: int) -> list[nn.Linear]:
    """The Linear(s) LoRA wraps in ``block``: one fused qkv, or q, k and v."""
    paths = family.lora_targets(block)
    found = [get_path(block, p) for p in paths]
    if len(paths) not in (1, 3) or not all(isinstance(m, nn.Linear) for m in found):
        raise TypeError(
            f"block {index}'s attention has no fused `qkv` Linear or q/k/v Linears for LoRA "
            f"(the {family.name} family names {list(paths)})"
        )
    return found


def _add_lora(block: nn.Module, family: BlockFamily, name: str, config: AdapterConfig) -> None:
    paths = family.lora_targets(block)
    layers = [get_path(block, p) for p in paths]
    if not isinstance(layers[0], LoRALinear):
        if family.prepare_lora is not None:
            family.prepare_lora(block)
        wrapped = [LoRALinear(layer) for layer in layers]
        owner = wrapped[0]
        owner.lora_rows = sum(w.out_features for w in wrapped)
        start = 0
        for path, w in zip(paths, wrapped, strict=True):
            w.share(owner, start)
            start += w.out_features
            set_path(block, path, w)
        layers = wrapped
    layers[0].add(name, config.bottleneck_for(int(family.width(block))), config.lora_alpha)


def _add_adapter(
    model: nn.Module,
    family: BlockFamily,
    blocks: list[nn.Module],
    config: AdapterConfig,
    name: str,
    layers: list[int],
    num_classes: int | None,
) -> None:
    """The changes :func:`inject` makes, after its checks passed."""
    depth = len(blocks)
    prefix = family.prefix_tokens(model)
    dim = head_width(model)
    for block in blocks:
        adapt_block(block, family, prefix)
    if method_rule(config.method).bottleneck_adapter:
        for i in layers:
            width = int(family.width(blocks[i]))
            blocks[i].adaptmlp[name] = AdaptMLP(width, config)
            if config.position == "houlsby":
                blocks[i].attn_adapter[name] = AdaptMLP(width, config, reads="attn")
    elif config.method == "vpt":
        if config.prompt_mode == "deep":
            for i in layers:
                blocks[i].prompts[name] = make_prompts(
                    config.prompt_tokens, int(family.width(blocks[i]))
                )
        else:
            first = layers[0]
            width = int(family.width(blocks[first]))
            blocks[first].prompts[name] = make_prompts(config.prompt_tokens, width)
            blocks[first].keep_prompts.add(name)
            blocks[depth - 1].drop_prompts_after[name] = config.prompt_tokens
    elif config.method == "lora":
        for i in layers:
            _add_lora(blocks[i], family, name, config)

    state = getattr(model, "adaptformer", None)
    if not isinstance(state, AdapterState):
        state = AdapterState(family=family)
    current = get_path(model, family.head)
    head_needed = num_classes is not None or config.head_batchnorm or state.configs
    if head_needed:
        classes = _head_classes(current) if num_classes is None else num_classes
        new_head = make_head(dim, classes, config.head_batchnorm)
    else:
        new_head = current
    if state.active is not None:
        _park_active_head(model, state)
    put_head(model, new_head)
    model.train(model.training)  # new modules start in train mode; follow the model's mode
    model.adaptformer = state
    state.configs[name] = config
    state.num_classes[name] = _head_classes(new_head)
    state.active = name
    state.generation += 1
    _set_active(model, name)


class _Undo:
    """What :func:`inject` may change, recorded before it starts, to put back if it fails."""

    def __init__(self, model: nn.Module, blocks: list[nn.Module], family: BlockFamily) -> None:
        self.model, self.blocks, self.family = model, blocks, family
        self.classes = [type(b) for b in blocks]
        self.lora = [
            (b, p, get_path(b, p)) for b in blocks for p in family.lora_targets(b)
        ]  # fmt: skip
        self.head = get_path(model, family.head)
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
        for block, path, layer in self.lora:
            if get_path(block, path) is not layer:
                set_path(block, path, layer)
        for block, cls in zip(self.blocks, self.classes, strict=True):
            if type(block) is not cls:
                unadapt_block(block)
        set_path(model, self.family.head, self.head)
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
    model.task_heads[state.active] = active_head(model)


def _adapted_modules(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        if isinstance(m, (AdaptedBlock, LoRALinear)):
            yield m


def adapter_pieces(model: nn.Module, name: str) -> Iterator[tuple[str, nn.Module | nn.Parameter]]:
    """Every piece adapter ``name`` added to the backbone, with its path minus the task name.

    ``blocks.3.adaptmlp`` (an AdaptMLP), ``blocks.3.attn_adapter`` (Houlsby's first AdaptMLP),
    ``blocks.3.prompts`` (a Parameter),
    ``blocks.3.attn.qkv.lora_A`` and ``.lora_B`` (Linears). ``3`` is the block's depth index,
    whatever the family calls it (``layers.1.blocks.1`` in Swin, ``encoder.layer.3`` in Hugging
    Face), and LoRA is ``attn.qkv`` whether the family fuses q, k and v or not. This is the one
    walk over adapted modules: parameter names are ``<path>.<name>[.<key>]``, the keys of a task
    file ``<path>[.<key>]``.
    """
    model = unwrap(model)
    if not isinstance(getattr(model, "adaptformer", None), AdapterState):
        return
    for i, block in enumerate(model_blocks(model)):
        if not isinstance(block, AdaptedBlock):
            continue
        path = f"blocks.{i}"
        if name in block.attn_adapter:
            yield f"{path}.attn_adapter", block.attn_adapter[name]
        if name in block.adaptmlp:
            yield f"{path}.adaptmlp", block.adaptmlp[name]
        if name in block.prompts:
            yield f"{path}.prompts", block.prompts[name]
        for m in block.modules():
            if isinstance(m, LoRALinear) and m.owns(name):
                yield f"{path}.{LORA_PATH}.lora_A", m.lora_A[name]
                yield f"{path}.{LORA_PATH}.lora_B", m.lora_B[name]


def _set_active(model: nn.Module, name: str) -> None:
    for m in _adapted_modules(model):
        m.active_adapter = name
    state = adapter_state(model)
    if hasattr(model, "num_classes"):
        model.num_classes = state.num_classes[name]


def set_adapter(model: nn.Module, name: str) -> None:
    """Make ``name`` the active task: its adapters run and its head becomes the model's head."""
    model = unwrap(model)
    state = adapter_state(model)
    if name not in state.configs:
        raise KeyError(f"no adapter named {name!r}; have {sorted(state.configs)}")
    if name == state.active:
        return
    _park_active_head(model, state)
    put_head(model, model.task_heads[name])
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
    last task leaves the model a plain backbone whose head is that task's head.
    """
    model = unwrap(model)
    state = adapter_state(model)
    if name not in state.configs:
        raise KeyError(f"no adapter named {name!r}; have {sorted(state.configs)}")
    for m in _adapted_modules(model):
        m.remove(name)
    del state.configs[name]
    del state.num_classes[name]
    state.generation += 1
    if state.active == name:
        state.active = None
        remaining = sorted(state.configs)
        if remaining:
            put_head(model, model.task_heads[remaining[0]])
            del model.task_heads[remaining[0]]
            state.active = remaining[0]
            _set_active(model, remaining[0])
        else:  # no task left: keep the last head as the plain model head, forget the state
            del model.adaptformer
            for m in _adapted_modules(model):
                m.active_adapter = None
    else:
        del model.task_heads[name]
