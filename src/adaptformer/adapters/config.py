"""Configuration of one named adapter (AdaptFormer or a baseline method).

AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition
(Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535). Reference code:
https://github.com/ShoufaChen/AdaptFormer. Defaults are the paper's main image setting.

The bottleneck-adapter family (AdaptFormer, Adapter+, Houlsby, Pfeiffer) is one AdaptMLP with
knobs (where it sits, its scale, init, activation, drop-path). A named method is a preset of
those knobs (:data:`ADAPTER_PRESETS`); a knob left unset (None) takes the method's preset value,
a knob given explicitly wins, so ``--method adapter_plus --bottleneck 32`` is Adapter+ at r=32.

Every field's help text lives once, in its ``metadata["help"]``; the CLI reads it from there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..utils.files import loads_json, read_json

Method = Literal[
    "adaptformer", "adapter_plus", "houlsby", "pfeiffer", "linear", "full", "vpt", "lora", "bitfit"
]
Position = Literal["parallel", "sequential", "post", "houlsby"]
POSITIONS: tuple[str, ...] = ("parallel", "sequential", "post", "houlsby")
INITS: tuple[str, ...] = ("lora", "houlsby", "bert")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "silu")


@dataclass(frozen=True)
class AdapterPreset:
    """The published settings of one bottleneck adapter (what ``--method NAME`` fills in)."""

    bottleneck: int
    position: Position
    scale: float | Literal["learnable", "channel"]
    init: Literal["lora", "houlsby", "bert"]
    activation: Literal["relu", "gelu", "silu"]
    dropout: float
    drop_path: float
    layernorm: Literal["none", "in", "out"]
    paper: str


# Each row follows its paper *and* the code the paper's numbers came from; where they differ
# the code wins and docs/adapters.md says so.
ADAPTER_PRESETS: dict[str, AdapterPreset] = {
    # Chen et al., NeurIPS 2022 (github.com/ShoufaChen/AdaptFormer): beside the MLP, s=0.1.
    "adaptformer": AdapterPreset(
        bottleneck=64, position="parallel", scale=0.1, init="lora", activation="relu",
        dropout=0.1, drop_path=0.0, layernorm="none",
        paper="AdaptFormer (Chen et al., NeurIPS 2022)",
    ),
    # Steitz & Roth, CVPR 2024 (pypi adapter-plus, AdapterHub AdapterPlusConfig): after the
    # block, per-channel learnable scale, Houlsby init, no LayerNorm, adapter drop-path 0.1, r=8.
    "adapter_plus": AdapterPreset(
        bottleneck=8, position="post", scale="channel", init="houlsby", activation="gelu",
        dropout=0.0, drop_path=0.1, layernorm="none",
        paper="Adapter+ (Steitz & Roth, CVPR 2024)",
    ),
    # Houlsby et al., ICML 2019: one adapter after attention and one after the MLP, inside the
    # residual, near-identity init (trunc-normal std 0.01 as in adapter-plus), GELU as in the
    # paper's code (AdapterHub's DoubleSeqBnConfig defaults to swish: --activation silu).
    "houlsby": AdapterPreset(
        bottleneck=8, position="houlsby", scale=1.0, init="houlsby", activation="gelu",
        dropout=0.0, drop_path=0.0, layernorm="none",
        paper="Houlsby et al. (ICML 2019)",
    ),
    # Pfeiffer et al., EACL 2021 (AdapterHub SeqBnConfig): one adapter after the MLP reading the
    # block output, ReLU, BERT init (normal std 0.02), reduction factor 16 (r=48 at ViT-B's 768).
    "pfeiffer": AdapterPreset(
        bottleneck=48, position="post", scale=1.0, init="bert", activation="relu",
        dropout=0.0, drop_path=0.0, layernorm="none",
        paper="Pfeiffer et al. (EACL 2021)",
    ),
}  # fmt: skip
PRESET_FIELDS: tuple[str, ...] = (
    "bottleneck", "position", "scale", "init", "activation", "dropout", "drop_path", "layernorm"
)  # fmt: skip


@dataclass(frozen=True)
class MethodRule:
    """What a method does to a backbone. Every method-specific decision outside the layers that
    build it (what trains, what a task file holds, what may share a batch, what a spec such as
    ``adaptformer-64`` means) reads this table, so a method is described in one place."""

    adds_modules: bool  # per-task modules inside the backbone (AdaptMLP, prompts, LoRA)
    trains_backbone: Literal["all", "biases"] | None  # shared backbone weights it changes
    size_field: str | None  # the field a size suffix sets: ``adaptformer-64``, ``vpt-10``
    bottleneck_adapter: bool = False  # builds AdaptMLPs (the adapter family, ADAPTER_PRESETS)


_ADAPTER_RULE = MethodRule(
    adds_modules=True, trains_backbone=None, size_field="bottleneck", bottleneck_adapter=True
)
METHOD_RULES: dict[str, MethodRule] = {
    **{name: _ADAPTER_RULE for name in ADAPTER_PRESETS},
    "linear": MethodRule(adds_modules=False, trains_backbone=None, size_field=None),
    "full": MethodRule(adds_modules=False, trains_backbone="all", size_field=None),
    "vpt": MethodRule(adds_modules=True, trains_backbone=None, size_field="prompt_tokens"),
    "lora": MethodRule(adds_modules=True, trains_backbone=None, size_field="bottleneck"),
    "bitfit": MethodRule(adds_modules=False, trains_backbone="biases", size_field=None),
}
METHODS: tuple[str, ...] = tuple(METHOD_RULES)


def method_rule(method: str) -> MethodRule:
    if method not in METHOD_RULES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHOD_RULES[method]


def parse_method_spec(spec: str) -> dict[str, Any]:
    """``adaptformer-64`` -> ``{"method": "adaptformer", "bottleneck": 64}``; ``vpt-10`` -> ten
    prompt tokens; ``full`` -> ``{"method": "full"}``."""
    m = re.fullmatch(r"([a-z_]+)(?:-(\d+))?", spec)
    if not m or m.group(1) not in METHOD_RULES:
        raise ValueError(
            f"method {spec!r}: use one of {', '.join(METHODS)}, with a size for the adapters "
            "(adaptformer-R, adapter_plus-R, ...: bottleneck R), lora-R (rank R) and vpt-N "
            "(N prompt tokens)"
        )
    method, size = m.group(1), m.group(2)
    if size is None:
        return {"method": method}
    field_name = METHOD_RULES[method].size_field
    if field_name is None or int(size) < 1:
        sized = [k for k, r in METHOD_RULES.items() if r.size_field]
        raise ValueError(f"method {spec!r}: only {', '.join(sized)} take a positive size")
    return {"method": method, field_name: int(size)}


def _help(text: str, default: str | None = None) -> dict[str, str]:
    """Field metadata: its help, and how to describe a None default (``per method``)."""
    return {"help": text} if default is None else {"help": text, "default_text": default}


_PER_METHOD = "the method's preset"


def is_finite_number(x: Any) -> bool:
    """A real number that is not NaN or infinite (configs are read from untrusted JSON, which
    allows NaN); ``bool`` is not a number here."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


@dataclass
class AdapterConfig:
    """What one named adapter adds to a backbone and how it is initialised."""

    method: Method = field(
        default="adaptformer",
        metadata=_help(
            "adaptformer (AdaptMLP beside each MLP), adapter_plus / houlsby / pfeiffer (the "
            "bottleneck adapters of those papers), linear (head only), full (everything), "
            "vpt (learnable prompt tokens), lora (low-rank update of attention qkv), "
            "bitfit (biases only)"
        ),
    )
    bottleneck: int | None = field(
        default=None,
        metadata=_help(
            "adapter hidden width r or LoRA rank (adaptformer 64, adapter_plus 8, houlsby 8, "
            "pfeiffer 48, lora 64)",
            _PER_METHOD,
        ),
    )
    bottleneck_ratio: float | None = field(
        default=None,
        metadata=_help(
            "adapter hidden width / LoRA rank as a fraction of each block's width, instead of "
            "one bottleneck: r = max(1, round(ratio x width)), halves rounded up (0.083: "
            "64 at ViT-B's 768, dim // 12 at Swin-T's 96..768, the AdaptFormer author's advice "
            "for Swin); exclusive with bottleneck"
        ),
    )
    scale: float | Literal["learnable", "channel"] | None = field(
        default=None,
        metadata=_help(
            "multiplier on the adapter output: a number (adaptformer 0.1), 'learnable' (one "
            "scalar, init 1) or 'channel' (a learnable vector, init ones: Adapter+)",
            _PER_METHOD,
        ),
    )
    dropout: float | None = field(
        default=None,
        metadata=_help(
            "dropout after the adapter activation (adaptformer 0.1 images, 0.0 video)", _PER_METHOD
        ),
    )
    layernorm: Literal["none", "in", "out"] | None = field(
        default=None,
        metadata=_help(
            "LayerNorm inside the adapter: none (all presets), in (before down), out", _PER_METHOD
        ),
    )
    position: Position | None = field(
        default=None,
        metadata=_help(
            "parallel: beside the MLP, reading the stream after attention (AdaptFormer); "
            "sequential: on the MLP output; post: after the whole block, x + s*A(x) (Adapter+, "
            "Pfeiffer); houlsby: two adapters, on the attention and on the MLP output",
            _PER_METHOD,
        ),
    )
    init: Literal["lora", "houlsby", "bert"] | None = field(
        default=None,
        metadata=_help(
            "lora: down kaiming-uniform, up zero (exact at init; adaptformer); houlsby: both "
            "trunc-normal std 0.01, zero biases; bert: both normal std 0.02 (AdapterHub)",
            _PER_METHOD,
        ),
    )
    activation: Literal["relu", "gelu", "silu"] | None = field(
        default=None,
        metadata=_help("adapter activation: relu (adaptformer, pfeiffer), gelu, silu", _PER_METHOD),
    )
    drop_path: float | None = field(
        default=None,
        metadata=_help(
            "stochastic depth on the adapter output, per sample (adapter_plus 0.1)", _PER_METHOD
        ),
    )
    layers: list[int] | None = field(
        default=None,
        metadata=_help("block indices that get adapters/prompts/LoRA; None means all blocks"),
    )
    prompt_tokens: int = field(
        default=1,
        metadata=_help("VPT: learnable prompt tokens per block (deep) or in total (shallow)"),
    )
    prompt_mode: Literal["deep", "shallow"] = field(
        default="deep",
        metadata=_help("VPT: deep (new prompts at every selected block) or shallow (first only)"),
    )
    lora_alpha: float = field(
        default=16.0,
        metadata=_help("LoRA: the update is scaled by lora_alpha / bottleneck"),
    )
    head_batchnorm: bool = field(
        default=False,
        metadata=_help(
            "task head as BatchNorm1d(affine=False) + Linear (the reference's MAE head)"
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)
        # Unset knobs take the method's preset; methods outside the adapter family keep
        # AdaptFormer's (so ``lora`` still means rank 64 and old configs read back unchanged).
        preset = ADAPTER_PRESETS.get(self.method, ADAPTER_PRESETS["adaptformer"])
        both = self.bottleneck is not None and self.bottleneck_ratio is not None
        for name in PRESET_FIELDS:
            if name == "bottleneck" and self.bottleneck_ratio is not None:
                continue  # the widths decide it, block by block (bottleneck_for)
            if getattr(self, name) is None:
                setattr(self, name, getattr(preset, name))
        problems = list(self._problems())
        if both:
            problems.insert(
                0,
                f"bottleneck={self.bottleneck!r} and bottleneck_ratio={self.bottleneck_ratio!r} "
                "both set the adapter width: give one of them",
            )
        if problems:
            raise ValueError("invalid AdapterConfig: " + "; ".join(problems))

    def _problems(self):
        if self.method not in METHODS:
            yield f"method={self.method!r} is unknown; choose one of {', '.join(METHODS)}"
        if self.bottleneck_ratio is not None:
            ratio = self.bottleneck_ratio
            if not is_finite_number(ratio) or not 0.0 < ratio <= 1.0:
                yield f"bottleneck_ratio={ratio!r} must be a fraction in (0, 1] (Swin: 0.083)"
        elif not _is_positive_int(self.bottleneck):
            yield f"bottleneck={self.bottleneck!r} must be a positive integer (paper: 64)"
        if self.scale not in ("learnable", "channel") and not is_finite_number(self.scale):
            yield (
                f"scale={self.scale!r} must be a finite number (paper: 0.1), 'learnable' or "
                "'channel'"
            )
        for name in ("dropout", "drop_path"):
            value = getattr(self, name)
            if not is_finite_number(value) or not 0.0 <= value < 1.0:
                yield f"{name}={value!r} must be in [0, 1)"
        for name, allowed in (
            ("layernorm", ("none", "in", "out")),
            ("position", POSITIONS),
            ("init", INITS),
            ("activation", ACTIVATIONS),
        ):
            if getattr(self, name) not in allowed:
                yield f"{name}={getattr(self, name)!r} must be one of {', '.join(allowed)}"
        if self.layers is not None:
            items = self.layers if isinstance(self.layers, list) else [None]
            bad = [i for i in items if not isinstance(i, int) or isinstance(i, bool)]
            if bad or not items:
                yield f"layers={self.layers!r} must be a non-empty list of block indices or None"
            elif len(set(self.layers)) != len(self.layers):
                yield f"layers={self.layers!r} lists a block twice"
        if not _is_positive_int(self.prompt_tokens):
            yield f"prompt_tokens={self.prompt_tokens!r} must be a positive integer"
        if self.prompt_mode not in ("deep", "shallow"):
            yield f"prompt_mode={self.prompt_mode!r} must be 'deep' or 'shallow'"
        if not is_finite_number(self.lora_alpha) or self.lora_alpha <= 0:
            yield f"lora_alpha={self.lora_alpha!r} must be a positive finite number"
        if not isinstance(self.head_batchnorm, bool):
            yield f"head_batchnorm={self.head_batchnorm!r} must be true or false"

    def bottleneck_for(self, width: int) -> int:
        """The adapter hidden width (or LoRA rank) in a block of ``width`` channels.

        ``bottleneck`` when given; otherwise ``bottleneck_ratio x width`` rounded to the nearest
        integer, halves up, and at least 1. Nearest rather than floor, so 0.083 gives the
        paper's 64 at ViT-B's 768 (63.7) and the AdaptFormer author's ``dim // 12`` for Swin at
        Swin-T/S's 96, 192, 384, 768 (8, 16, 32, 64); it can differ from ``dim // 12`` by one
        at other widths (Swin-B's 128: 11, not 10).
        """
        if self.bottleneck_ratio is None:
            assert self.bottleneck is not None
            return self.bottleneck
        return max(1, math.floor(self.bottleneck_ratio * width + 0.5))

    def resolve_layers(self, depth: int) -> list[int]:
        """The sorted block indices this adapter touches in a model with ``depth`` blocks.

        Negative indices count from the end, as in Python. Out-of-range indices are an error
        rather than silently ignored, so a config written for ViT-L cannot quietly adapt only
        part of a ViT-S.
        """
        if self.layers is None:
            return list(range(depth))
        out = []
        for i in self.layers:
            if not -depth <= i < depth:
                raise ValueError(
                    f"layers contains block {i}, but the backbone has {depth} blocks "
                    f"(valid: 0..{depth - 1} or negative from the end)"
                )
            out.append(i % depth)
        if len(set(out)) != len(out):
            raise ValueError(f"layers={self.layers} names the same block twice for depth {depth}")
        return sorted(out)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown AdapterConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> AdapterConfig:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            return cls.from_dict(read_json(text_or_path, "an AdapterConfig"))
        return cls.from_dict(loads_json(text, "the AdapterConfig JSON"))

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Help text of every field, for CLIs and docs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
