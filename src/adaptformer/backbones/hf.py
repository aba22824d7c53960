"""Hugging Face ``transformers`` vision encoders as timm-style backbones (``--model hf:FOLDER``).

:class:`HFVisionBackbone` wraps a ``ViTModel``, ``Dinov2Model`` or ``Dinov2WithRegistersModel``
(or their ``*ForImageClassification``) in the interface the rest of adaptformer uses on timm
models: ``forward_features`` (the last hidden state after the final LayerNorm), ``forward_head``
(class-token pooling, as timm's ``vit_small_patch14_dinov2``), ``head`` / ``get_classifier`` /
``reset_classifier``, ``num_features``, ``num_prefix_tokens`` (class + register tokens),
``patch_embed`` (patch size, grid, input size) and ``pretrained_cfg`` (normalisation and resize
filter for ``adaptformer.transforms`` and export sidecars). It keeps the HF model's own
``embeddings``, ``encoder`` and ``layernorm`` modules, so its backbone keys are the HF ones
(``encoder.layer.3.attention.attention.query.weight``) and HF's layer code runs unchanged;
the adapter specs for its layers are in :mod:`adaptformer.adapters.families.hf`, and task files
use the same canonical keys (``blocks.3.adaptmlp...``) as on timm, so a task trained through
one implementation of DINOv2 loads into the other.

:func:`load_hf_backbone` reads a local ``save_pretrained`` folder without running code from it:
``config.json`` is parsed as JSON and passed to the config class of an allow-listed
``model_type`` (``auto_map`` / ``trust_remote_code`` are never used); weights come from
``model.safetensors`` (or its shards) or from ``pytorch_model.bin`` through
``torch.load(weights_only=True)``; every key and shape is checked against a copy of the model
built on the ``meta`` device before any real memory is allocated, and anything missing,
unexpected or wrongly shaped is one ``ValueError`` listing the keys.

Position embeddings are resampled once, at construction, to ``img_size`` exactly as the timm
path does (timm's ``resample_abs_pos_embed``, bicubic, ``antialias=False``), so HF's runtime
interpolation is a no-op and the same weights give the same features through both.
"""

from __future__ import annotations

import logging
import re
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.errors import UserFacingError
from ..utils.files import MAX_TENSOR_BYTES, read_json, read_safetensors, regular_file_size

_log = logging.getLogger(__name__)

PREFIX = "hf:"  # --model hf:FOLDER
MIN_VERSION = (4, 56)  # layers return tensors (not tuples) and take (hidden_states, head_mask)
# model_type -> (config class, encoder class) in transformers; nothing else is ever built.
MODEL_TYPES = {
    "vit": ("ViTConfig", "ViTModel"),
    "dinov2": ("Dinov2Config", "Dinov2Model"),
    "dinov2_with_registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel"),
}
# Attribute of the encoder inside the *ForImageClassification models, and saved-key prefixes.
_BASE_ATTRS = ("vit", "dinov2", "dinov2_with_registers")
# Preprocessing when the folder has no preprocessor_config.json: the defaults of HF's own image
# processors for these models (ViTImageProcessor; BitImageProcessor as DINOv2's configs set it).
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_DEFAULT_STATS = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"),
    "dinov2": (*_IMAGENET, "bicubic"),
    "dinov2_with_registers": (*_IMAGENET, "bicubic"),
}
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Config fields that set tensor sizes, and bounds well above any released encoder: an
# untrusted config cannot make the meta-device check build something absurd.
_SIZE_FIELDS = {
    "hidden_size": 16384,
    "num_hidden_layers": 256,
    "num_attention_heads": 1024,
    "intermediate_size": 65536,
    "image_size": 4096,
    "patch_size": 1024,
    "num_channels": 16,
    "num_register_tokens": 64,
}


def _transformers() -> Any:
    """The ``transformers`` package, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserFacingError(
            "Hugging Face backbones need transformers: pip install 'adaptformer[hf]'"
        ) from None
    found = tuple(int(p) for p in re.findall(r"\d+", transformers.__version__)[:2])
    if found < MIN_VERSION:
        raise UserFacingError(
            f"Hugging Face backbones need transformers >= {'.'.join(map(str, MIN_VERSION))} "
            f"(found {transformers.__version__}): pip install 'adaptformer[hf]'"
        )
    return transformers


def register_families() -> None:
    """Make the HF layer specs known to ``family_of`` (once; they import transformers)."""
    from ..adapters.families import FAMILIES, register_family
    from ..adapters.families.hf import HF_FAMILIES

    for family in HF_FAMILIES:
        if all(f is not family for f in FAMILIES):
            register_family(family)


def _encoder_of(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """The encoder (``ViTModel``/``Dinov2Model``...) in ``model`` and its classifier, if any."""
    base = next((getattr(model, a) for a in _BASE_ATTRS if hasattr(model, a)), model)
    wanted = {encoder for _, encoder in MODEL_TYPES.values()}
    if type(base).__name__ not in wanted or type(base).__module__.split(".")[0] != "transformers":
        raise TypeError(
            f"HFVisionBackbone wraps transformers' {', '.join(sorted(wanted))} or their "
            f"*ForImageClassification, not {type(model).__name__}"
        )
    classifier = getattr(model, "classifier", None) if base is not model else None
    return base, classifier


class HFVisionBackbone(nn.Module):
    """A Hugging Face ViT / DINOv2 encoder with the timm backbone interface adaptformer uses.

    Args:
        model: a ``ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel`` or one of their
            ``*ForImageClassification`` (its encoder is taken; its modules are shared, not
            copied).
        img_size: input height and width; the position embeddings are resampled to it
            (bicubic, no antialiasing) when it differs from the model's. None keeps the model's.
        num_classes: classes of the head on the class token (0: features, ``nn.Identity``).
            A ``ViTForImageClassification`` classifier of that size is kept with its weights.
        pretrained_cfg: normalisation and resize filter (``mean``, ``std``, ``interpolation``);
            None uses the defaults of HF's image processor for the model type.
    """

    global_pool = "token"

    def __init__(
        self,
        model: nn.Module,
        img_size: int | None = None,
        num_classes: int = 0,
        pretrained_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _transformers()
        base, classifier = _encoder_of(model)
        config = base.config
        if getattr(config, "_attn_implementation", "eager") not in ("eager", "sdpa"):
            config._attn_implementation = "sdpa"  # flash/flex kernels: not on CPU, not traceable
        self.config = config
        self.model_type: str = config.model_type
        self.embeddings = base.embeddings
        self.encoder = base.encoder
        self.layernorm = base.layernorm
        self.embed_dim = self.num_features = int(config.hidden_size)
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.grad_checkpointing = False
        self.patch_size = int(config.patch_size)
        self._set_img_size(int(img_size or config.image_size))
        self.num_classes = num_classes
        self.head: nn.Module = _head(classifier, self.num_features, num_classes)
        mean, std, interpolation = _DEFAULT_STATS[self.model_type]
        cfg = {"mean": mean, "std": std, "interpolation": interpolation, **(pretrained_cfg or {})}
        self.pretrained_cfg: dict[str, Any] = {
            "architecture": f"hf-{self.model_type}",
            "input_size": (3, self.img_size, self.img_size),
            "crop_pct": 1.0,
            "num_classes": num_classes,
            **cfg,
        }
        self.default_cfg = self.pretrained_cfg
        register_families()

    # -- input size ---------------------------------------------------------------------------
    @property
    def patch_embed(self) -> types.SimpleNamespace:
        """timm's ``patch_embed`` facts (``check_whole_patches``, export, transforms read them)."""
        grid = self.img_size // self.patch_size
        return types.SimpleNamespace(
            patch_size=(self.patch_size, self.patch_size),
            grid_size=(grid, grid),
            img_size=(self.img_size, self.img_size),
            num_patches=grid * grid,
        )

    def _set_img_size(self, img_size: int) -> None:
        """Resample the position grid to ``img_size`` (once, here) and tell HF's embeddings."""
        from .create import check_whole_patches

        self.img_size = img_size
        check_whole_patches(self, img_size)
        grid = img_size // self.patch_size
        emb = self.embeddings
        pos = emb.position_embeddings
        if pos.shape[1] != 1 + grid * grid:
            with torch.no_grad():
                new = resample_position_embeddings(pos.detach(), grid)
            emb.position_embeddings = nn.Parameter(new, requires_grad=pos.requires_grad)
            _log.info(
                "resampled position_embeddings %s -> %s (antialias=False)",
                tuple(pos.shape),
                tuple(new.shape),
            )
        patches = emb.patch_embeddings
        patches.image_size = (img_size, img_size)  # ViT refuses inputs of another size
        patches.num_patches = grid * grid
        self.config.image_size = img_size
        if hasattr(emb, "interpolate_pos_encoding") and "interpolate_pos_encoding" not in vars(emb):
            emb.interpolate_pos_encoding = types.MethodType(_grid_as_resampled, emb)

    # -- timm's interface ---------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the final LayerNorm, ``(B, prefix + patches, width)``."""
        x = self.embeddings(x)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class-token pooling, then the head (timm's ``global_pool='token'``)."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "token"):
            raise ValueError(f"HFVisionBackbone pools the class token, not {global_pool!r}")
        self.num_classes = num_classes
        self.head = _head(None, self.num_features, num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in backward (HF's ``GradientCheckpointingLayer`` mechanism)."""
        import functools

        from torch.utils.checkpoint import checkpoint

        self.grad_checkpointing = enable
        for layer in self.encoder.layer:
            layer.gradient_checkpointing = enable
            layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)


def _grid_as_resampled(
    self: nn.Module, embeddings: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """DINOv2's ``interpolate_pos_encoding`` without the traced-only resampling.

    The grid was resampled once at construction, so at that grid HF's method returns the
    embeddings as they are, except while tracing, where it always interpolates (with
    antialiasing for DINOv2 with registers, which ONNX cannot export). At that grid this
    returns them as eager mode does; at any other grid it is HF's own method.
    """
    if embeddings.shape[1] == self.position_embeddings.shape[1] and height == width:
        return self.position_embeddings
    return type(self).interpolate_pos_encoding(self, embeddings, height, width)


def _head(classifier: nn.Module | None, width: int, num_classes: int) -> nn.Module:
    """A Linear on the class token (timm's init), or the model's own classifier when it is one
    of the same shape (``ViTForImageClassification``; DINOv2's reads class + mean tokens)."""
    if num_classes <= 0:
        return nn.Identity()
    if isinstance(classifier, nn.Linear) and (classifier.in_features, classifier.out_features) == (
        width,
        num_classes,
    ):
        return classifier
    if isinstance(classifier, nn.Linear):
        _log.info("the model's classifier does not fit %d classes on the class token", num_classes)
    head = nn.Linear(width, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def resample_position_embeddings(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, 1 + g*g, d)`` -> ``(1, 1 + grid*grid, d)`` with the timm path's resampling."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(
        pos.float(), new_size=[grid, grid], num_prefix_tokens=1, antialias=False
    ).to(pos.dtype)


# -- loading a save_pretrained folder ---------------------------------------------------------


def hf_folder(model: str) -> Path | None:
    """The folder of ``--model hf:FOLDER`` (None for any other model name)."""
    return Path(model[len(PREFIX) :]).expanduser() if model.startswith(PREFIX) else None


def load_hf_backbone(
    folder: str | Path, img_size: int | None = None, num_classes: int = 0
) -> HFVisionBackbone:
    """The encoder saved in ``folder`` (``save_pretrained``), wrapped, weights strictly checked.

    Args:
        folder: holds ``config.json`` and ``model.safetensors`` (or shards with
            ``model.safetensors.index.json``, or ``pytorch_model.bin``); a
            ``preprocessor_config.json`` beside them sets mean, std and resize filter.
        img_size: input size; position embeddings are resampled to it. None: the config's.
        num_classes: classes of a fresh head on the class token (0: features).

    Raises:
        FileNotFoundError: no such folder or no weights in it.
        ValueError: a model type adaptformer does not wrap, a bad config, or weights that do
            not match the config (missing, unexpected or wrongly shaped keys, listed).
    """
    transformers = _transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds no config.json: pass a folder written by save_pretrained()"
        )
    raw = read_json(folder / "config.json", "a Hugging Face model config")
    config = _config(transformers, raw, folder)
    sd = _strip(read_hf_weights(folder))
    classifier = {
        k.removeprefix("classifier."): v for k, v in sd.items() if k.startswith("classifier.")
    }
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    stored_size = int(config.image_size)
    if img_size is not None:
        from .create import check_whole_patches

        patch = types.SimpleNamespace(patch_size=int(config.patch_size))
        check_whole_patches(types.SimpleNamespace(patch_embed=patch), int(img_size))
        config.image_size = int(img_size)
    sd = _resampled(sd, int(config.image_size) // int(config.patch_size))
    model_cls = getattr(transformers, MODEL_TYPES[config.model_type][1])
    kwargs = {"add_pooling_layer": False} if config.model_type == "vit" else {}
    with torch.device("meta"):  # shapes only: nothing allocated before the weights are checked
        own = model_cls(config, **kwargs).state_dict()
    sd = _check(own, sd, folder)
    model = model_cls(config, **kwargs)
    model.load_state_dict(sd, strict=False)  # _check proved every needed key is there
    wrapper = HFVisionBackbone(
        model, num_classes=num_classes, pretrained_cfg=_preprocessing(folder)
    )
    if classifier and num_classes > 0:
        _load_classifier(wrapper, classifier)
    if stored_size != wrapper.img_size:
        _log.info("%s: built for %d px, runs at %d px", folder, stored_size, wrapper.img_size)
    return wrapper


def _resampled(sd: dict[str, torch.Tensor], grid: int) -> dict[str, torch.Tensor]:
    """``sd`` with its class + square position grid resampled to ``grid`` x ``grid`` (anything
    else is left for the strict check to report)."""
    pos = sd.get("embeddings.position_embeddings")
    if not isinstance(pos, torch.Tensor) or pos.ndim != 3 or pos.shape[1] == 1 + grid * grid:
        return sd
    if ((pos.shape[1] - 1) ** 0.5) % 1:
        return sd
    _log.info("resampled position_embeddings %s to a %dx%d grid (antialias=False)",
              tuple(pos.shape), grid, grid)  # fmt: skip
    return {**sd, "embeddings.position_embeddings": resample_position_embeddings(pos, grid)}


def _config(transformers: Any, raw: Any, folder: Path) -> Any:
    """The transformers config of an allow-listed model type, its sizes bounded."""
    if not isinstance(raw, dict):
        raise ValueError(f"{folder}/config.json is not a JSON object; save the model again")
    kind = raw.get("model_type")
    if kind not in MODEL_TYPES:
        raise ValueError(
            f"{folder}: model_type {kind!r} is not one adaptformer wraps "
            f"({', '.join(MODEL_TYPES)}); VideoMAE and other models are not supported"
        )
    bad = [
        f"{k}={raw[k]!r}"
        for k, limit in _SIZE_FIELDS.items()
        if k in raw
        and not (isinstance(raw[k], int) and not isinstance(raw[k], bool) and 0 < raw[k] <= limit)
    ]
    if bad:
        raise ValueError(f"{folder}/config.json has impossible sizes: {', '.join(bad)}")
    fields = {k: v for k, v in raw.items() if k not in ("auto_map", "architectures")}
    try:
        config = getattr(transformers, MODEL_TYPES[kind][0]).from_dict(fields)
    except Exception as e:  # a field of the wrong type fails inside transformers
        raise ValueError(f"{folder}/config.json does not describe a {kind} model: {e}") from None
    if hasattr(config, "use_mask_token"):
        config.use_mask_token = False  # masked-image pre-training only; the encoder never uses it
    config._attn_implementation = "sdpa"
    return config


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``save_pretrained`` folder: safetensors (single or sharded) or a
    ``pytorch_model.bin`` read with ``weights_only=True``."""
    from .create import read_state_dict

    single = folder / "model.safetensors"
    if single.is_file():
        return read_safetensors(single)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            raw = read_json(index, "a Hugging Face weight index")
            mapping = raw.get("weight_map") if isinstance(raw, dict) else None
            if not isinstance(mapping, dict) or not all(
                isinstance(v, str) for v in mapping.values()
            ):
                raise ValueError(f"{index} has no weight_map of file names; save the model again")
            out: dict[str, torch.Tensor] = {}
            for name in sorted(set(mapping.values())):
                shard = folder / name
                if Path(name).name != name:
                    raise ValueError(f"{index} names a shard outside its folder: {name!r}")
                regular_file_size(shard, MAX_TENSOR_BYTES, "a weight shard")
                out.update(read_state_dict(shard))
            return out
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        regular_file_size(bin_file, MAX_TENSOR_BYTES, "a Hugging Face weight file")
        return read_state_dict(bin_file)
    raise FileNotFoundError(
        f"{folder} holds no model.safetensors or pytorch_model.bin: pass a folder written by "
        "save_pretrained()"
    )


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encoder keys without the ``vit.``/``dinov2.`` prefix of classification models; the
    pooler and the mask token (not part of the encoder's forward) dropped with a log line."""
    for prefix in (f"{a}." for a in _BASE_ATTRS):
        if any(k.startswith(prefix) for k in sd):
            sd = {k.removeprefix(prefix): v for k, v in sd.items()}
    dropped = sorted(k for k in sd if k.startswith("pooler."))
    if dropped:
        _log.info("dropping %s (the pooler is not part of the encoder)", ", ".join(dropped))
    return {k: v for k, v in sd.items() if k not in dropped}


def _check(
    own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], folder: Path
) -> dict[str, torch.Tensor]:
    """``sd`` without an unused mask token, after the strict key and shape check."""
    from .create import check_state_dict

    # Masked-image pre-training's token: the encoder's forward never reads it, so it may be
    # absent on either side (DINOv2 with registers always builds one).
    unused = {"embeddings.mask_token"}
    sd = {k: v for k, v in sd.items() if k in own or k not in unused}
    check_state_dict(
        own, sd, unused & own.keys(), source=f"weights in {folder}", target="its config.json"
    )
    return sd


def _load_classifier(wrapper: HFVisionBackbone, classifier: dict[str, torch.Tensor]) -> None:
    head = wrapper.head
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    if {k: tuple(v.shape) for k, v in classifier.items()} == shapes:
        head.load_state_dict(classifier)
    else:
        _log.info("the saved classifier does not fit %d classes: keeping a fresh head",
                  wrapper.num_classes)  # fmt: skip


def _preprocessing(folder: Path) -> dict[str, Any]:
    """``mean``/``std``/``interpolation`` from ``preprocessor_config.json`` when present."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    raw = read_json(path, "a Hugging Face image processor config")
    out: dict[str, Any] = {}
    for key, field in (("mean", "image_mean"), ("std", "image_std")):
        v = raw.get(field) if isinstance(raw, dict) else None
        if v is not None:
            if not (
                isinstance(v, list) and len(v) == 3 and all(isinstance(x, int | float) for x in v)
            ):
                raise ValueError(f"{path}: {field} must be 3 numbers, not {v!r}")
            out[key] = tuple(float(x) for x in v)
    resample = raw.get("resample") if isinstance(raw, dict) else None
    if resample is not None:
        if resample not in _PIL_FILTERS:
            raise ValueError(f"{path}: resample {resample!r} is not a PIL filter number")
        out["interpolation"] = _PIL_FILTERS[resample]
    return out


# -- timm -> Hugging Face (the same weights through two implementations) ----------------------

# Per-block timm names -> HF names of each layer class (the inverse of create.convert_hf_vit).
_TIMM_TO_HF_LAYER = {
    "vit": {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    },
    "dinov2": {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "ls1": "layer_scale1",
        "ls2": "layer_scale2",
    },
}
_TIMM_TO_HF_GLOBAL = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def timm_to_hf_state_dict(sd: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` keys -> HF ``ViTModel``/``Dinov2Model`` keys (``qkv`` split
    into query, key and value; ``ls1.gamma`` -> ``layer_scale1.lambda1``); the head is dropped."""
    names = _TIMM_TO_HF_LAYER["vit" if model_type == "vit" else "dinov2"]
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        if key in _TIMM_TO_HF_GLOBAL:
            out[_TIMM_TO_HF_GLOBAL[key]] = v
            continue
        if key.startswith("head."):
            continue
        m = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if m is None:
            raise ValueError(f"no Hugging Face {model_type} name for timm key {key!r}")
        i, part, kind = m.groups()
        layer = f"encoder.layer.{i}"
        if part == "attn.qkv":
            for name, chunk in zip(("query", "key", "value"), v.chunk(3), strict=True):
                out[f"{layer}.attention.attention.{name}.{kind}"] = chunk.clone()
        elif part in names:
            out[f"{layer}.{names[part]}.{'lambda1' if kind == 'gamma' else kind}"] = v
        else:
            raise ValueError(f"no Hugging Face {model_type} name for timm key {key!r}")
    return out


def save_timm_as_hf(
    model: nn.Module,
    folder: str | Path,
    model_type: str = "dinov2",
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a timm ``VisionTransformer`` as a Hugging Face ``save_pretrained`` folder.

    The converse of loading HF weights into timm: used to check that the two implementations
    give the same outputs on the same weights (tests, ``benchmarks/hf_parity.py``). Plain
    pre-norm blocks with GELU MLPs and no register tokens only (ViT, DeiT, DINOv2 with or without
    LayerScale). ``dtype`` stores the tensors in that type (``torch.float16`` for weights
    that came from a float16 file: the position grid is then resampled from the same values
    on both paths).
    """
    from timm.models.vision_transformer import Block

    transformers = _transformers()
    blocks = list(getattr(model, "blocks", []))
    if not blocks or not all(type(b) is Block for b in blocks):
        raise TypeError("save_timm_as_hf converts timm VisionTransformers with plain Blocks")
    b = blocks[0]
    if not isinstance(b.mlp.act, nn.GELU) or b.mlp.act.approximate != "none":
        raise ValueError("the Hugging Face models here use exact GELU; this model's MLP does not")
    if int(getattr(model, "num_reg_tokens", 0) or 0) or getattr(model, "no_embed_class", False):
        raise ValueError(
            "register tokens / no_embed_class are not converted: timm and Hugging Face give "
            "them (and the class token) position embeddings differently"
        )
    extras = [getattr(model, "norm_pre", None), model.patch_embed.norm, b.attn.q_norm, b.attn.norm]
    if getattr(model, "cls_token", None) is None or not all(
        isinstance(m, nn.Identity) for m in extras
    ):
        raise ValueError(
            "only ViTs with a class token and no extra norms (pre-norm, patch norm, qk-norm) "
            "have a Hugging Face ViT/DINOv2 twin"
        )
    if model_type not in ("vit", "dinov2"):
        raise ValueError(f"model_type must be vit or dinov2, not {model_type!r}")
    if model_type == "vit" and not isinstance(b.ls1, nn.Identity):
        raise ValueError("HF ViTModel has no LayerScale: use model_type dinov2")
    common = {
        "hidden_size": int(model.embed_dim),
        "num_hidden_layers": len(blocks),
        "num_attention_heads": int(b.attn.num_heads),
        "image_size": int(model.patch_embed.img_size[0]),
        "patch_size": int(model.patch_embed.patch_size[0]),
        "qkv_bias": b.attn.qkv.bias is not None,
        "layer_norm_eps": float(b.norm1.eps),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if model_type == "vit":
        config = transformers.ViTConfig(**common, intermediate_size=int(b.mlp.fc1.out_features))
    else:
        config = transformers.Dinov2Config(
            **common, mlp_ratio=b.mlp.fc1.out_features / model.embed_dim
        )
    kwargs = {"add_pooling_layer": False} if model_type == "vit" else {}
    hf = getattr(transformers, MODEL_TYPES[model_type][1])(config, **kwargs)
    sd = timm_to_hf_state_dict(model.state_dict(), model_type)
    own = hf.state_dict()
    sd = {k: v.to(own[k].dtype) if k in own else v for k, v in sd.items()}
    from .create import check_state_dict

    check_state_dict(
        own, sd, {"embeddings.mask_token"}, "converted timm weights", type(hf).__name__
    )
    hf.load_state_dict(sd, strict=False)
    if dtype is not None:
        hf.to(dtype)
    folder = Path(folder)
    hf.save_pretrained(folder, safe_serialization=True)
    return folder
