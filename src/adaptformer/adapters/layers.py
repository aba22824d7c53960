"""The small trainable modules each method adds: AdaptMLP, LoRA on a Linear, VPT prompts, heads.

AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition
(Chen et al., NeurIPS 2022, https://arxiv.org/abs/2205.13535); AdaptMLP follows
``Adapter`` in https://github.com/ShoufaChen/AdaptFormer/blob/main/models/adapter.py and, for
the rest of the family (Adapter+, Houlsby, Pfeiffer), ``Adapter`` in the adapter-plus package.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig
from .context import current_routing

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


class AdaptMLP(nn.Module):
    """``[LN] -> down (d->r) -> act -> dropout -> up (r->d) -> drop-path -> * scale [-> LN]``.

    One module for the whole bottleneck-adapter family; the order of operations is that of
    AdaptFormer's ``Adapter`` and of adapter-plus's ``Adapter`` (which agree where they overlap).
    With the ``lora`` init ``up_proj`` starts at zero, so at step 0 the adapter adds exactly
    nothing and the adapted model equals the pretrained one; the ``houlsby`` and ``bert`` inits
    start near (not at) zero, as in their papers.

    ``reads`` is the point of the block it reads and writes (``AdaptedBlock.residual``):
    ``parallel`` / ``sequential`` / ``post``, or ``attn`` for the first adapter of the
    ``houlsby`` position.
    """

    def __init__(self, dim: int, config: AdapterConfig, reads: str | None = None) -> None:
        super().__init__()
        assert config.scale is not None
        bottleneck = config.bottleneck_for(dim)
        self.reads = reads or ("sequential" if config.position == "houlsby" else config.position)
        self.layernorm = config.layernorm
        self.dropout = config.dropout
        self.drop_path = config.drop_path
        self.activation = config.activation
        self.init = config.init
        if config.layernorm != "none":
            self.layer_norm = nn.LayerNorm(dim)
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        if config.scale == "learnable":
            self.scale = nn.Parameter(torch.ones(1))  # the reference initialises it at 1.0
        elif config.scale == "channel":
            self.scale = nn.Parameter(torch.ones(dim))  # Adapter+: one learnable gain per channel
        else:
            self.register_buffer("scale", torch.tensor(float(config.scale)), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.bias)
        if self.init == "lora":
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))  # nn.Linear's default
            nn.init.zeros_(self.up_proj.weight)  # zero update at init: adapted == pretrained
        elif self.init == "houlsby":  # near-identity adapter: both weights tiny (Houlsby 2019)
            for w in (self.down_proj.weight, self.up_proj.weight):
                nn.init.trunc_normal_(w, std=0.01, a=-0.02, b=0.02)
        else:  # "bert": AdapterHub's default
            for w in (self.down_proj.weight, self.up_proj.weight):
                nn.init.normal_(w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm(x) if self.layernorm == "in" else x
        h = _ACTIVATIONS[self.activation](self.down_proj(h))
        h = F.dropout(h, p=self.dropout, training=self.training)
        h = self.up_proj(h)
        if self.training and self.drop_path > 0:
            h = _drop_path(h, self.drop_path)
        h = h * self.scale
        return self.layer_norm(h) if self.layernorm == "out" else h


def _drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth: zero the whole update of a sample with probability p, scale the rest by
    1/(1-p) (timm's ``drop_path``; per row, so mixed-task batches draw per sample as well)."""
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` that adds named low-rank updates ``B(A(x)) * alpha / r``.

    It takes over the original layer's ``weight`` and ``bias`` Parameters under the same names,
    so backbone checkpoint keys (``...attn.qkv.weight``) do not change when LoRA is added.

    Families that keep q, k and v as three Linears get three ``LoRALinear``s that
    :meth:`share` one update: the first (the owner) holds ``A`` (r x d) and ``B`` (3d x r), and
    each layer adds its own rows of ``B A x``. That is exactly LoRA on the fused ``qkv`` matrix,
    so a task file holds the same tensors for both layouts.
    """

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_scaling: dict[str, float] = {}
        self.lora_rows = self.out_features  # rows of B: the fused output of every sharer
        self.active_adapter: str | None = None
        self.adapters_enabled = True
        self._rows: tuple[int, int] | None = None  # this layer's rows of the owner's B
        self._owner_ref: list[LoRALinear] = []  # a list, so the owner is not a submodule

    @property
    def owner(self) -> LoRALinear:
        """The layer holding the ``A``/``B`` this layer's update comes from (often itself)."""
        return self._owner_ref[0] if self._owner_ref else self

    def share(self, owner: LoRALinear, start: int) -> None:
        """Take this layer's update from rows ``start:start+out_features`` of ``owner``'s."""
        if owner is not self:
            self._owner_ref = [owner]
        self._rows = (start, start + self.out_features)

    def owns(self, name: str) -> bool:
        """Whether this layer holds task ``name``'s ``A`` and ``B`` (its sharers do not)."""
        return self.owner is self and name in self.lora_A

    def has(self, name: str) -> bool:
        """Whether task ``name`` changes this layer's output."""
        return name in self.owner.lora_A

    def add(self, name: str, rank: int, alpha: float) -> None:
        self.lora_A[name] = nn.Linear(self.in_features, rank, bias=False)
        self.lora_B[name] = nn.Linear(rank, self.lora_rows, bias=False)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)  # zero update at init, as in the LoRA paper
        self.lora_scaling[name] = alpha / rank

    def remove(self, name: str) -> None:
        """Forget task ``name`` (nothing happens if it has no update here)."""
        if name in self.lora_A:
            del self.lora_A[name], self.lora_B[name]
            self.lora_scaling.pop(name)

    def update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Task ``name``'s low-rank update of this layer's output for input ``x``."""
        owner = self.owner
        b = owner.lora_B[name].weight
        if self._rows is not None and (self._rows[0] or self._rows[1] != b.shape[0]):
            b = b[self._rows[0] : self._rows[1]]
        return F.linear(owner.lora_A[name](x), b) * owner.lora_scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        routing = current_routing()  # a mixed-task batch: each row its own task's update
        if routing is not None and routing.covers(self):
            delta = routing.lora_delta(self, x)
            return out if delta is None else out + delta
        name = self.active_adapter
        if self.adapters_enabled and name is not None and self.has(name):
            out = out + self.update(name, x)
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
