"""Backbone creation and checkpoint loading that fails loudly.

The reference code loads checkpoints non-strictly and then trains "whatever was missing", so an
unconverted checkpoint silently leaves the backbone random. Here every backbone weight must come
from the checkpoint: anything missing, unexpected or of the wrong shape is a ``ValueError``
that lists the keys. Accepted formats: timm key names (``.safetensors``/``.pth``/``.pt``/``.bin``),
MAE's released ``.pth`` (weights under ``model``; decoder keys dropped), and Hugging Face
``ViTModel``/``Dinov2Model`` key names (converted).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import timm
import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torch import nn

from ..utils.files import read_safetensors
from ..utils.state_dicts import key_shape_problems

_log = logging.getLogger(__name__)

# Checkpoint parts that are not part of an encoder: MAE's decoder and mask token, DINOv2's mask
# token, HF's pooler. Dropped with a log line, never silently loaded anywhere.
_DROP = re.compile(r"^(decoder_|decoder\.|mask_token$|pooler\.)")
_WRAPPERS = ("model", "module", "state_dict", "model_state", "teacher")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``model``/``module``/``state_dict`` keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .safetensors/.pth path")
    if path.suffix == ".safetensors":
        sd: object = read_safetensors(path)  # damaged files: a one-line ValueError
    elif path.suffix in (".pth", ".pt", ".bin"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors come in many types
            raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    else:
        raise ValueError(
            f"checkpoint {path} has unknown type {path.suffix!r}; use .safetensors or .pth"
        )
    for _ in range(3):
        if isinstance(sd, dict):
            inner = next((sd[k] for k in _WRAPPERS if isinstance(sd.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in sd.values()):
                sd = inner
    if (
        not isinstance(sd, dict)
        or not sd
        or not all(isinstance(v, torch.Tensor) for v in sd.values())
    ):
        raise ValueError(f"checkpoint {path} holds no state dict of tensors")
    return dict(sd)


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "encoder.", "vit.", "dinov2.", "deit.", "backbone."):
        if all(k.startswith(prefix) or k.startswith("head") for k in sd) and any(
            k.startswith(prefix) for k in sd
        ):
            sd = {k.removeprefix(prefix): v for k, v in sd.items()}
    return sd


# Per-layer parts of Hugging Face ViT/DINOv2 checkpoints -> timm. Both the classic names
# (released files: ``encoder.layer.N.attention.attention.query``) and transformers v5's
# (``layers.N.attention.q_proj``) are accepted.
_HF_LAYER = {
    "layernorm_before": "norm1",  # ViT
    "layernorm_after": "norm2",
    "norm1": "norm1",  # DINOv2
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
_HF_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_HF_GLOBAL = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def is_hf_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in sd)


def convert_hf_vit(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``ViTModel`` / ``Dinov2Model`` key names -> timm ``VisionTransformer`` names.

    q, k and v are fused into ``qkv``; DINOv2's ``layer_scale{1,2}.lambda1`` become
    ``ls{1,2}.gamma``; the HF classifier becomes ``head``; pooler and mask token are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, v in sd.items():
        k = re.sub(r"^(vit|dinov2|deit)\.", "", key)
        if k in _HF_GLOBAL:
            out[_HF_GLOBAL[k]] = v
            continue
        if k in ("embeddings.mask_token",) or k.startswith("pooler."):
            continue
        m = re.match(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$", k)
        if m is None:
            raise ValueError(f"unrecognised Hugging Face key {key!r}")
        i, part, kind = int(m.group(1)), m.group(2), m.group(3)
        if part in _HF_QKV:
            qkv.setdefault((i, kind), {})[_HF_QKV[part]] = v
        elif part in _HF_LAYER:
            suffix = "gamma" if kind == "lambda1" else kind
            out[f"blocks.{i}.{_HF_LAYER[part]}.{suffix}"] = v
        else:
            raise ValueError(f"unrecognised Hugging Face key {key!r}")
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {i} has only {sorted(parts)} of q/k/v {kind}")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def to_timm_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported checkpoint layout -> timm key names (encoder only, decoder parts dropped)."""
    sd = _strip_prefixes(sd)
    if is_hf_state_dict(sd):
        _log.info("converting Hugging Face ViT/DINOv2 key names to timm")
        sd = convert_hf_vit(sd)
    dropped = sorted(k for k in sd if _DROP.match(k))
    if dropped:
        _log.info("dropping %d non-encoder tensors (e.g. %s)", len(dropped), dropped[0])
    return {k: v for k, v in sd.items() if k not in dropped}


def adapt_pos_embed(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resample the checkpoint's position grid to the model's, bicubic WITHOUT antialiasing.

    Antialiasing (timm's default) changes features noticeably when shrinking the grid: on the
    shared DINOv2 ViT-S/14 it moves features by up to 3.3 versus the model's original behaviour,
    while ``antialias=False`` reproduces it to 6e-5.
    """
    pos = sd.get("pos_embed")
    if pos is None or not hasattr(model, "pos_embed") or model.pos_embed is None:
        return sd
    target = model.pos_embed
    if pos.shape == target.shape:
        return sd
    prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    grid = list(model.patch_embed.grid_size)
    if pos.shape[-1] != target.shape[-1] or (pos.shape[1] - prefix) ** 0.5 % 1:
        return sd  # not a grid of this width: the strict check reports it with the other keys
    sd = dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(
        pos.float(), new_size=grid, num_prefix_tokens=prefix, antialias=False
    ).to(pos.dtype)
    _log.info(
        "resampled pos_embed %s -> %s (antialias=False)", tuple(pos.shape), tuple(target.shape)
    )
    return sd


# Buffers computed from the window and the input size (non-persistent in timm 1.0; older timm
# versions saved some of them): dropped from a checkpoint when the model does not keep them.
_DERIVED = ("relative_position_index", "relative_coords_table", "attn_mask")


def adapt_rel_pos_tables(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resample relative-position bias tables (BEiT, Swin) to the model's windows, with timm's
    own ``resize_rel_pos_bias_table`` (the interpolation of BEiT's fine-tuning code, which keeps
    the class-token entries, and the one Swin's ``checkpoint_filter_fn`` applies), so a
    checkpoint loads at another ``img_size``. At an input whose feature maps are smaller than a
    Swin stage's window, timm shrinks that window to the map, so its table is smaller too.

    Swin's ``checkpoint_filter_fn`` is not called: in timm 1.0.21 it takes any checkpoint without
    ``head.fc.weight`` (a headless timm file) for a Microsoft original and renumbers its
    ``downsample`` layers. Derived buffers (relative-position indices, attention masks) are the
    model's own: copies of them in the checkpoint are replaced or dropped.
    """
    own = model.state_dict()
    out = {k: v for k, v in sd.items() if k in own or k.rsplit(".", 1)[-1] not in _DERIVED}
    resampled = []
    for key, table in list(out.items()):
        if key.endswith("relative_position_index"):
            if key in own:
                out[key] = own[key]
            else:
                del out[key]
            continue
        target = own.get(key)
        if not key.endswith("relative_position_bias_table") or target is None:
            continue
        window = getattr(model.get_submodule(key.rpartition(".")[0]), "window_size", None)
        if target.shape == table.shape or window is None or table.ndim != 2:
            continue
        if table.shape[1] != target.shape[1]:
            continue  # another head count: the strict check reports it
        try:
            with warnings.catch_warnings():  # timm's interpolator: torch deprecation chatter
                warnings.filterwarnings("ignore", category=UserWarning, module="timm.layers")
                resized = resize_rel_pos_bias_table(
                    table.float(), new_window_size=tuple(window), new_bias_shape=target.shape
                )
            out[key] = resized.to(table.dtype)
        except (ValueError, AssertionError, RuntimeError):
            continue  # not a table of a square window: the strict check reports its shape
        resampled.append(f"{tuple(table.shape)} -> {tuple(target.shape)}")
    if resampled:
        _log.info("resampled %d relative-position tables %s", len(resampled), resampled[0])
    return out


def check_state_dict(
    own: dict[str, torch.Tensor],
    sd: dict[str, torch.Tensor],
    may_be_missing: set[str],
    source: str,
    target: str,
    shown: int = 12,
) -> None:
    """Raise a ``ValueError`` listing keys of ``own`` missing from ``sd`` (beyond
    ``may_be_missing``), keys of ``sd`` the model lacks, and shape mismatches."""
    parts = key_shape_problems(
        sd,
        own,
        may_be_missing=may_be_missing,
        labels=("missing (would stay randomly initialised)", "unexpected", "wrong shape"),
        sides=("checkpoint", "model"),
        shown=shown,
    )
    if parts:
        raise ValueError(f"{source} does not match {target}: " + "; ".join(parts))


def load_backbone_weights(
    model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load encoder weights strictly: every non-head parameter must come from ``sd``.

    The head is loaded only when its shape fits (same task); otherwise it keeps its fresh init.

    Raises:
        ValueError: listing missing, unexpected and wrongly shaped keys.
    """
    sd = adapt_rel_pos_tables(model, adapt_pos_embed(model, to_timm_state_dict(sd)))
    own = model.state_dict()
    classifier = model.get_classifier()
    # The classifier's own keys, wherever it sits (``head.weight``, Swin's ``head.fc.weight``).
    path = next((n for n, m in model.named_modules() if m is classifier), "head")
    head_keys = {f"{path}.{k}" for k in classifier.state_dict()}
    ckpt_head = {k for k in sd if k.startswith("head.")}
    if ckpt_head and any(k not in own or own[k].shape != sd[k].shape for k in ckpt_head):
        _log.info(
            "checkpoint head does not fit %d classes: keeping a fresh head", model.num_classes
        )
        sd = {k: v for k, v in sd.items() if k not in ckpt_head}
    check_state_dict(own, sd, may_be_missing=head_keys, source=source, target=type(model).__name__)
    model.load_state_dict(sd, strict=False)


def create_backbone(
    model_name: str,
    checkpoint: str | Path | None = None,
    img_size: int | None = None,
    num_classes: int = 0,
    pretrained: bool = False,
    **kwargs,
) -> nn.Module:
    """A timm model with weights from a local checkpoint (strictly checked) or timm's hub.

    Args:
        model_name: a timm model name (``vit_base_patch16_224``, ``vit_small_patch14_dinov2``).
        checkpoint: local weights: timm, MAE or Hugging Face key names.
        img_size: input size; position embeddings are resampled to it without antialiasing.
        num_classes: classes of the (fresh) head; 0 gives features.
        pretrained: download weights through timm's hub (needs internet; never implicit).
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    if checkpoint is not None and pretrained:
        raise ValueError("pass either checkpoint=PATH or pretrained=True, not both")
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(
            model_name, pretrained=pretrained, num_classes=num_classes, **kwargs
        )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(
                f"unknown timm model {model_name!r}: see timm.list_models('vit*')"
            ) from e
        raise
    if img_size is not None:
        check_whole_patches(model, img_size)
    if checkpoint is not None:
        load_backbone_weights(model, read_state_dict(checkpoint), source=f"checkpoint {checkpoint}")
    elif not pretrained:
        _log.warning("%s has random weights: pass checkpoint=PATH or pretrained=True", model_name)
    return model


def check_whole_patches(model: nn.Module, img_size: int) -> None:
    """Refuse an input size that is not a whole number of patches: the patch embedding would
    silently drop the remainder (100 px with 14-px patches runs at 98)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, tuple | list) else patch
    if not isinstance(patch, int) or patch < 1 or img_size % patch == 0:
        return
    below, above = (img_size // patch) * patch, (img_size // patch + 1) * patch
    sizes = f"{below} or {above}" if below else f"{above}"
    raise ValueError(
        f"--img-size {img_size} is not a multiple of the model's {patch}-pixel patches (it "
        f"would run at {below or 'zero'} px): use {sizes}"
    )


def backbone_source(model: str, checkpoint: str | None) -> tuple[str, str | None, bool]:
    """(timm architecture, local checkpoint, use timm's hub) for ``--model``/``--checkpoint``.

    A backbone without pretrained weights is refused: adapting random weights is a silent misuse.
    """
    import timm

    from .registry import get_model, resolve_checkpoint

    entry = get_model(model)
    arch = entry.architecture if entry else model
    if checkpoint:
        return arch, checkpoint, False
    if entry is None and model not in timm.list_pretrained():
        if not timm.is_model(model):
            raise ValueError(f"unknown model {model!r}{_close_matches(model)}")
        raise ValueError(
            f"--model {model!r} has no pretrained weights here: pass --checkpoint PATH, a "
            "registry name (`adaptformer models`) or a timm pretrained tag"
        )
    path = resolve_checkpoint(model)
    return arch, (str(path) if path else None), path is None


def _close_matches(name: str) -> str:
    """``; did you mean a, b or c?`` from the registry's names, timm's pretrained tags and
    architectures (a typo otherwise reads as "no pretrained weights", which misleads)."""
    import difflib

    import timm

    from .registry import MODELS

    known = [*MODELS, *timm.list_pretrained(), *timm.list_models()]
    close = difflib.get_close_matches(name, dict.fromkeys(known), n=3, cutoff=0.75)
    if not close:
        return "; `adaptformer models` lists the named backbones"
    return f"; did you mean {', '.join(close[:-1]) + ' or ' if len(close) > 1 else ''}{close[-1]}?"


def pretrained_backbone(
    model: str, checkpoint: str | None, img_size: int, num_classes: int = 0
) -> nn.Module:
    """The image backbone a run or a task registry names: a registry name, a timm tag or an
    architecture with a local ``checkpoint``, or ``hf:FOLDER``, a Hugging Face ViT/DINOv2
    ``save_pretrained`` folder (``backbones.hf``) (the one builder training and serving share)."""
    from .hf import hf_folder, load_hf_backbone  # transformers is imported only when used

    folder = hf_folder(model)
    if folder is not None:
        if checkpoint:
            raise ValueError(
                f"--model {model} reads its weights from its folder: drop --checkpoint"
            )
        return load_hf_backbone(folder, img_size, num_classes)
    arch, path, hub = backbone_source(model, checkpoint)
    return create_backbone(
        arch, checkpoint=path, img_size=img_size, num_classes=num_classes, pretrained=hub
    )
