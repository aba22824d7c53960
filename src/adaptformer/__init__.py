"""adaptformer: AdaptFormer (NeurIPS 2022) for timm Vision Transformers.

AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition
(Chen et al., https://arxiv.org/abs/2205.13535; reference code
https://github.com/ShoufaChen/AdaptFormer).
"""

from .adapters.config import ADAPTER_PRESETS, METHODS, AdapterConfig, method_rule
from .adapters.files import load_adapter, read_adapter_config, save_adapter
from .adapters.inject import delete_adapter, disable_adapters, get_head, inject, set_adapter
from .adapters.trainable import (
    ParamCount,
    adapter_parameters,
    backbone_parameters,
    count_parameters,
    mark_trainable,
    trainable_parameters,
)
from .backbones.create import create_backbone, load_backbone_weights, read_state_dict
from .backbones.registry import list_models, resolve_checkpoint
from .serving.multitask import MultiTaskModel, MultiTaskOutput, forward_tasks
from .serving.store import TaskRegistry
from .training.transforms import transforms

__version__ = "0.1.0"

__all__ = [
    "ADAPTER_PRESETS",
    "METHODS",
    "AdapterConfig",
    "MultiTaskModel",
    "MultiTaskOutput",
    "ParamCount",
    "TaskRegistry",
    "adapter_parameters",
    "backbone_parameters",
    "count_parameters",
    "create_backbone",
    "delete_adapter",
    "disable_adapters",
    "forward_tasks",
    "get_head",
    "inject",
    "list_models",
    "load_adapter",
    "load_backbone_weights",
    "mark_trainable",
    "method_rule",
    "read_adapter_config",
    "read_state_dict",
    "resolve_checkpoint",
    "save_adapter",
    "set_adapter",
    "trainable_parameters",
    "transforms",
]
