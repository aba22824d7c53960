"""The small trainable modules each method adds: AdaptMLP, LoRA on a Linear, VPT prompts, heads.

AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition
(Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535); AdaptMLP follows
``Adapter`` in https://github.com/ShoufaChen/AdaptFormer/blob/main/models/adapter.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig


class AdaptMLP(nn.Module):
    """``down (d->r) -> ReLU -> dropout -> up (r->d) -> * scale``, with optional LayerNorm.

    ``up_proj`` starts at zero ("lora" init in the reference), so at step 0 the adapter adds
    exactly nothing and the adapted model equals the pretrained one.
    """

    def __init__(self, dim: int, config: AdapterConfig) -> None:
        super().__init__()
        self.position = config.position
        self.layernorm = config.layernorm
        self.dropout = config.dropout
        if config.layernorm != "none":
            self.layer_norm = nn.LayerNorm(dim)
        self.down_proj = nn.Linear(dim, config.bottleneck)
        self.up_proj = nn.Linear(config.bottleneck, dim)
        if config.scale == "learnable":
            self.scale = nn.Parameter(torch.ones(1))  # the reference initialises it at 1.0
        else:
            self.register_buffer("scale", torch.tensor(float(config.scale)), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))  # nn.Linear's default
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)  # zero update at init: adapted == pretrained
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm(x) if self.layernorm == "in" else x
        h = F.dropout(F.relu(self.down_proj(h)), p=self.dropout, training=self.training)
        h = self.up_proj(h) * self.scale
        return self.layer_norm(h) if self.layernorm == "out" else h


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` that adds named low-rank updates ``B(A(x)) * alpha / r``.

    It takes over the original layer's ``weight`` and ``bias`` Parameters under the same names,
    so backbone checkpoint keys (``...attn.qkv.weight``) do not change when LoRA is added.
    """

    # Set only while a mixed-task batch runs (``adaptformer.adapters.routing.routed``): each row then gets
    # its own task's update instead of the active adapter's.
    routing = None

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.adapters_enabled = True

    def add(self, name: str, rank: int, alpha: float) -> None:
        self.lora_A[name] = nn.Linear(self.in_features, rank, bias=False)
        self.lora_B[name] = nn.Linear(rank, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)  # zero update at init, as in the LoRA paper
        self.lora_scaling[name] = alpha / rank

    def remove(self, name: str) -> None:
        """Forget task ``name`` (nothing happens if it has no update here)."""
        if name in self.lora_A:
            del self.lora_A[name], self.lora_B[name]
            self.lora_scaling.pop(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.routing is not None:
            delta = self.routing.lora_delta(self, x)
            return out if delta is None else out + delta
        name = self.active_adapter
        if self.adapters_enabled and name is not None and name in self.lora_A:
            out = out + self.lora_B[name](self.lora_A[name](x)) * self.lora_scaling[name]
        return out


def make_prompts(num_tokens: int, dim: int) -> nn.Parameter:
    """VPT prompt tokens, xavier-uniform initialised as in the reference."""
    p = torch.empty(num_tokens, dim)
    nn.init.xavier_uniform_(p)
    return nn.Parameter(p)


def make_head(dim: int, num_classes: int, batchnorm: bool = False) -> nn.Module:
    """A task head initialised as in the reference: weight trunc_normal(std=0.01), bias 0.

    ``batchnorm=True`` gives MAE's linear-probe head, ``BatchNorm1d(affine=False) + Linear``.
    ``num_classes=0`` gives ``nn.Identity`` (features out), as in timm.
    """
    if num_classes <= 0:
        return nn.Identity()
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    if not batchnorm:
        return linear
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)
