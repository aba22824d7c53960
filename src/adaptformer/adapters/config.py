"""Configuration of one named adapter (AdaptFormer or a baseline method).

AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition
(Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535). Reference code:
https://github.com/ShoufaChen/AdaptFormer. Defaults are the paper's main image setting.

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

Method = Literal["adaptformer", "linear", "full", "vpt", "lora", "bitfit"]


@dataclass(frozen=True)
class MethodRule:
    """What a method does to a backbone. Every method-specific decision outside the layers that
    build it (what trains, what a task file holds, what may share a batch, what a spec such as
    ``adaptformer-64`` means) reads this table, so a method is described in one place."""

    adds_modules: bool  # per-task modules inside the backbone (AdaptMLP, prompts, LoRA)
    trains_backbone: Literal["all", "biases"] | None  # shared backbone weights it changes
    size_field: str | None  # the field a size suffix sets: ``adaptformer-64``, ``vpt-10``


METHOD_RULES: dict[str, MethodRule] = {
    "adaptformer": MethodRule(adds_modules=True, trains_backbone=None, size_field="bottleneck"),
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
    m = re.fullmatch(r"([a-z]+)(?:-(\d+))?", spec)
    if not m or m.group(1) not in METHOD_RULES:
        raise ValueError(
            f"method {spec!r}: use one of {', '.join(METHODS)}, with a size for "
            "adaptformer-R, lora-R (bottleneck/rank R) and vpt-N (N prompt tokens)"
        )
    method, size = m.group(1), m.group(2)
    if size is None:
        return {"method": method}
    field_name = METHOD_RULES[method].size_field
    if field_name is None or int(size) < 1:
        sized = [k for k, r in METHOD_RULES.items() if r.size_field]
        raise ValueError(f"method {spec!r}: only {', '.join(sized)} take a positive size")
    return {"method": method, field_name: int(size)}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


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
            "adaptformer (AdaptMLP beside each MLP), linear (head only), full (everything), "
            "vpt (learnable prompt tokens), lora (low-rank update of attention qkv), "
            "bitfit (biases only)"
        ),
    )
    bottleneck: int = field(
        default=64,
        metadata=_help("AdaptMLP hidden width r (adaptformer) or LoRA rank (lora)"),
    )
    scale: float | Literal["learnable"] = field(
        default=0.1,
        metadata=_help("fixed multiplier s on the AdaptMLP output, or 'learnable' (init 1.0)"),
    )
    dropout: float = field(
        default=0.1,
        metadata=_help("dropout after the AdaptMLP ReLU (0.1 images, 0.0 video in the paper)"),
    )
    layernorm: Literal["none", "in", "out"] = field(
        default="none",
        metadata=_help("LayerNorm inside the AdaptMLP: none (paper), in (before down), out"),
    )
    position: Literal["parallel", "sequential"] = field(
        default="parallel",
        metadata=_help("parallel: beside the MLP (paper); sequential: after the MLP (ablation)"),
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
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid AdapterConfig: " + "; ".join(problems))

    def _problems(self):
        if self.method not in METHODS:
            yield f"method={self.method!r} is unknown; choose one of {', '.join(METHODS)}"
        if not _is_positive_int(self.bottleneck):
            yield f"bottleneck={self.bottleneck!r} must be a positive integer (paper: 64)"
        if self.scale != "learnable" and not is_finite_number(self.scale):
            yield f"scale={self.scale!r} must be a finite number (paper: 0.1) or 'learnable'"
        if not is_finite_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            yield f"dropout={self.dropout!r} must be in [0, 1)"
        if self.layernorm not in ("none", "in", "out"):
            yield f"layernorm={self.layernorm!r} must be 'none', 'in' or 'out'"
        if self.position not in ("parallel", "sequential"):
            yield f"position={self.position!r} must be 'parallel' or 'sequential'"
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
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Help text of every field, for CLIs and docs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
