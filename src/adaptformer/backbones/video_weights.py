"""Video model weights: VideoMAE's released checkpoints, and inflation of image ViTs.

VideoMAE (https://github.com/MCG-NJU/VideoMAE) saves weights under ``model`` (or ``module``);
pre-training checkpoints prefix the encoder with ``encoder.`` and add a decoder, fine-tuned ones
do not. Its attention stores ``q_bias``/``v_bias`` next to a bias-free ``qkv``, and LayerScale
as ``gamma_1``/``gamma_2``. Loading is strict as for images: every backbone weight must come
from the file, otherwise a ``ValueError`` lists the keys (the reference loads non-strictly and
trains whatever was missing).

Inflation turns an image ViT into a video model for video data: the 2D patch kernel is spread
over the tubelet (each of its ``t`` slices is ``W / t``) and the image position embedding is
repeated over time, so a static clip gives every token the image's embedding. Together with the
per-time-slot prefix tokens of :class:`VideoVisionTransformer` (see its module docstring) the
inflated model's features on a static clip equal the image model's on that frame.

Why one module of this size: the three ways a video ViT gets its weights (by size name, from a
VideoMAE file, inflated from an image ViT) share the key renaming and the strict check, and
keeping them together keeps the model module (``video.py``) free of checkpoint formats.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import LayerScale, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from .create import check_state_dict, read_state_dict
from .video import _SIZE_ALIASES, VIDEO_SIZES, VideoVisionTransformer, sinusoid_table

_log = logging.getLogger(__name__)

# Pre-training parts that are not the encoder: decoder, its projection, the mask token.
_PRETRAIN_ONLY = re.compile(r"^(decoder\.|decoder_|encoder_to_decoder\.|mask_token$)")


@dataclass
class LoadReport:
    """What a checkpoint load did, for logs and run records.

    Attributes:
        kind: ``pretrain`` (encoder of a pre-training checkpoint) or ``finetune``.
        loaded: model keys filled from the checkpoint.
        fresh: model keys left at their initialisation (the head; ``fc_norm`` for pre-training
            checkpoints, which have no pooling norm).
        discarded: checkpoint keys not used (decoder, a head of another task, ...).
    """

    kind: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)


def _strip(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Remove wrapper prefixes; True when this is a pre-training checkpoint (``encoder.``)."""
    out = dict(sd)
    if out and all(k.startswith("module.") for k in out):  # saved from a DDP-wrapped model
        out = {k.removeprefix("module."): v for k, v in out.items()}
    pretrain = any(k.startswith("encoder.") for k in out)
    if pretrain:
        out = {k.removeprefix("encoder."): v for k, v in out.items()}
    if any(k.startswith("backbone.") for k in out):
        out = {k.removeprefix("backbone."): v for k, v in out.items()}
    return out, pretrain


def read_videomae_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a VideoMAE checkpoint file, unwrapped from ``model``/``module``.

    Checkpoints saved during VideoMAE training also pickle the ``argparse.Namespace`` of the
    run; it is allowed through ``torch.load(weights_only=True)``, nothing else is.
    """
    path = Path(path)
    if path.suffix not in (".pth", ".pt", ".bin") or not path.is_file():
        return read_state_dict(path)  # safetensors, and the clear errors for missing files
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(obj, dict):
        for wrapper in ("model", "module"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} holds no state dict of tensors under model/module")
    return dict(obj)


def convert_videomae_state_dict(
    sd: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], bool, list[str]]:
    """VideoMAE key names -> this package's (timm) names.

    Returns:
        The converted tensors, whether the source is a pre-training checkpoint, and the source
        keys dropped as decoder-only.
    """
    sd, pretrain = _strip(sd)
    dropped = sorted(k for k in sd if _PRETRAIN_ONLY.match(k))
    out: dict[str, torch.Tensor] = {}
    biases: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if _PRETRAIN_ONLY.match(key):
            continue
        m = re.match(r"^(blocks\.\d+\.attn)\.(q_bias|v_bias)$", key)
        if m:
            biases.setdefault(m.group(1), {})[m.group(2)] = value
            continue
        key = re.sub(r"^(blocks\.\d+)\.gamma_([12])$", r"\1.ls\2.gamma", key)
        out[key] = value
    for attn, parts in biases.items():
        if set(parts) != {"q_bias", "v_bias"}:
            raise ValueError(f"{attn} has {sorted(parts)} but VideoMAE stores q_bias and v_bias")
        q, v = parts["q_bias"], parts["v_bias"]
        out[f"{attn}.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])  # no key bias
    return out, pretrain, dropped


def load_videomae_checkpoint(
    model: VideoVisionTransformer,
    checkpoint: str | Path | Mapping[str, torch.Tensor],
) -> LoadReport:
    """Load a VideoMAE checkpoint (pre-training or fine-tuned) into ``model``, strictly.

    Every backbone weight must come from the checkpoint. The head is loaded only when it fits
    the model's classes; a pre-training checkpoint has no ``fc_norm`` (its encoder ends in a
    ``norm`` on all tokens), so ``fc_norm`` starts at identity, as in VideoMAE's fine-tuning,
    and the encoder ``norm`` is discarded when the model pools with ``fc_norm``.

    Args:
        model: the video model, built with the checkpoint's width, depth and position type.
        checkpoint: a ``.pth``/``.safetensors`` path, or an already loaded dict (optionally
            wrapped under ``model``/``module``).

    Returns:
        A :class:`LoadReport`.

    Raises:
        ValueError: listing missing, unexpected and wrongly shaped keys.
    """
    if isinstance(checkpoint, (str, Path)):
        source = f"checkpoint {checkpoint}"
        raw = read_videomae_file(checkpoint)
    else:
        source = "state dict"
        raw = dict(checkpoint)
        for wrapper in ("model", "module"):
            if isinstance(raw.get(wrapper), Mapping):
                raw = dict(raw[wrapper])
                break
    sd, pretrain, discarded = convert_videomae_state_dict(raw)
    report = LoadReport(kind="pretrain" if pretrain else "finetune", discarded=discarded)
    own = model.state_dict()

    pos = sd.pop("pos_embed", None)
    if pos is not None and "pos_embed" in own:
        sd["pos_embed"] = pos  # learned positions: checked like any other weight below
    elif pos is not None:
        table = sinusoid_table(pos.shape[1], pos.shape[-1])
        if pos.shape != model.pos_embed.shape or not torch.allclose(pos.float(), table, atol=1e-4):
            raise ValueError(
                f"{source} has learned position embeddings {tuple(pos.shape)}; build the model "
                "with pos_embed='learned' and the checkpoint's num_frames / img_size"
            )
        report.discarded.append("pos_embed")  # the fixed table itself: nothing to load
    if pretrain and isinstance(model.norm, nn.Identity):
        # the encoder's norm on all tokens; a mean-pooling model normalises after pooling
        for k in [k for k in sd if k.startswith("norm.")]:
            del sd[k]
            report.discarded.append(k)
    head = {k for k in sd if k.startswith("head.")}
    if head and any(k not in own or own[k].shape != sd[k].shape for k in head):
        _log.info(
            "checkpoint head does not fit %d classes: keeping a fresh head", model.num_classes
        )
        report.discarded.extend(sorted(head))
        sd = {k: v for k, v in sd.items() if k not in head}

    allowed_fresh = {k for k in own if k.startswith("head.")}
    if pretrain:
        allowed_fresh |= {k for k in own if k.startswith("fc_norm.")}
    if model.time_embed is not None:
        allowed_fresh.add("time_embed")  # zero-initialised addition, never in a checkpoint
    check_state_dict(own, sd, allowed_fresh, source, "the video model")
    model.load_state_dict(sd, strict=False)
    report.loaded = sorted(sd)
    report.fresh = sorted(k for k in own if k not in sd)
    _log.info(
        "loaded VideoMAE %s %s: %d tensors; fresh: %s; discarded %d",
        report.kind,
        source,
        len(report.loaded),
        ", ".join(report.fresh) or "none",
        len(report.discarded),
    )
    return report


def is_video_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    """True for a video checkpoint (5-D tubelet kernel), False for an image one (4-D kernel).

    Decided from the tensors, never from the file name (the reference guesses from the name).
    """
    sd, _ = _strip(sd)
    kernel = sd.get("patch_embed.proj.weight")
    if kernel is None:
        raise ValueError("checkpoint has no patch_embed.proj.weight: not a ViT checkpoint")
    return kernel.ndim == 5


def inflate_image_state_dict(
    sd: Mapping[str, torch.Tensor],
    *,
    tubelet_size: int,
    num_time_slots: int,
    grid_size: tuple[int, int],
    num_prefix_tokens: int,
    pos_embed_has_prefix: bool,
    temporal_embed: bool = False,
) -> dict[str, torch.Tensor]:
    """An image ViT state dict (timm names) -> a :class:`VideoVisionTransformer` state dict.

    - ``patch_embed.proj.weight`` ``[D, C, p, p]`` -> ``[D, C, t, p, p]``, each slice ``W / t``:
      a static clip then gives exactly the image's patch embedding.
    - ``pos_embed``: the spatial grid is resampled to ``grid_size`` (bicubic, no antialiasing,
      which reproduces the shared DINOv2 backbone) and repeated over the ``num_time_slots``.
    - A class/register position stored in ``pos_embed`` is folded into ``cls_token`` /
      ``reg_token`` (the same sum the image model computes at run time).

    Args:
        sd: image model weights in timm names.
        tubelet_size: frames per token.
        num_time_slots: ``num_frames // tubelet_size``.
        grid_size: the video model's spatial token grid ``(h, w)``.
        num_prefix_tokens: class + register tokens of the image model.
        pos_embed_has_prefix: the image ``pos_embed`` starts with prefix positions (timm's
            ``no_embed_class=False``, e.g. DINOv2 and the original ViT).
        temporal_embed: add a zero ``time_embed`` for a model built with ``temporal_embed``.
    """
    out = {k: v for k, v in sd.items()}
    kernel = out["patch_embed.proj.weight"]
    if kernel.ndim != 4:
        raise ValueError(
            f"patch_embed.proj.weight has shape {tuple(kernel.shape)}; inflation needs an image "
            "checkpoint's 4-D kernel (a 5-D kernel is a video checkpoint already)"
        )
    out["patch_embed.proj.weight"] = (
        kernel.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    )
    pos = out["pos_embed"]
    prefix_pos = pos[:, :num_prefix_tokens] if pos_embed_has_prefix else None
    spatial = pos[:, num_prefix_tokens:] if pos_embed_has_prefix else pos
    side = round(spatial.shape[1] ** 0.5)
    if side * side != spatial.shape[1]:
        raise ValueError(f"image pos_embed {tuple(pos.shape)} is not a square grid + prefix")
    if (side, side) != tuple(grid_size):
        spatial = resample_abs_pos_embed(
            spatial.float(), new_size=list(grid_size), num_prefix_tokens=0, antialias=False
        ).to(pos.dtype)
    out["pos_embed"] = spatial.repeat(1, num_time_slots, 1)
    if prefix_pos is not None:
        start = 0
        for name in ("cls_token", "reg_token"):
            if name in out:
                n = out[name].shape[1]
                out[name] = out[name] + prefix_pos[:, start : start + n]
                start += n
        if start != num_prefix_tokens:
            raise ValueError(
                f"pos_embed has {num_prefix_tokens} prefix positions but the checkpoint has "
                f"{start} class/register tokens"
            )
    if temporal_embed:
        dim = pos.shape[-1]
        out["time_embed"] = torch.zeros(1, num_time_slots, 1, dim, dtype=pos.dtype)
    return out


def _image_architecture(image_model: nn.Module) -> dict[str, object]:
    """Constructor arguments of a :class:`VideoVisionTransformer` matching a timm image ViT."""
    blocks = getattr(image_model, "blocks", None)
    proj = getattr(getattr(image_model, "patch_embed", None), "proj", None)
    problems = []
    if not isinstance(proj, nn.Conv2d):
        problems.append("no Conv2d patch_embed.proj")
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not len(blocks):
        problems.append("no `blocks`")
    elif not all(type(b) is Block for b in blocks):
        problems.append("blocks are not timm's plain `Block`")
    if getattr(image_model, "pos_embed", None) is None:
        problems.append("no absolute pos_embed (RoPE models cannot be inflated this way)")
    if getattr(image_model, "attn_pool", None) is not None:
        problems.append("attention pooling ('map') is not supported")
    if getattr(image_model, "global_pool", None) not in ("avg", "token"):
        problems.append(f"global_pool={getattr(image_model, 'global_pool', None)!r}")
    if not problems and not isinstance(image_model.patch_embed.norm, nn.Identity):
        problems.append("a norm after the patch embedding is not supported")
    if not problems:
        attn = blocks[0].attn
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.norm, nn.Identity)):
            problems.append("qk-norm / attention-output norm is not supported")
    if problems:
        raise ValueError(
            f"cannot inflate {type(image_model).__name__}: "
            + "; ".join(problems)
            + ". Supported: timm VisionTransformer (ViT, DeiT, DINOv2, MAE, CLIP-style)"
        )
    block = blocks[0]
    patch = proj.kernel_size
    if patch[0] != patch[1]:
        raise ValueError(f"non-square patches {patch} are not supported")
    return {
        "patch_size": patch[0],
        "in_chans": proj.in_channels,
        "embed_dim": image_model.embed_dim,
        "depth": len(blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / image_model.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "init_values": 1.0 if isinstance(block.ls1, LayerScale) else None,  # loaded anyway
        "class_token": image_model.cls_token is not None,
        "reg_tokens": image_model.reg_token.shape[1] if image_model.reg_token is not None else 0,
        "global_pool": image_model.global_pool,
        "fc_norm": not isinstance(image_model.fc_norm, nn.Identity),
        "norm_pre": not isinstance(image_model.norm_pre, nn.Identity),
        "patch_bias": proj.bias is not None,
        "norm_eps": block.norm1.eps,
        "norm_layer": type(block.norm1),
        "act_layer": type(block.mlp.act),
        "mlp_layer": type(block.mlp),
    }


def video_model_from_image(
    image_model: nn.Module,
    *,
    num_frames: int = 8,
    tubelet_size: int = 2,
    img_size: int | None = None,
    num_classes: int | None = None,
    temporal_embed: bool = True,
    drop_path_rate: float = 0.0,
) -> VideoVisionTransformer:
    """Build a :class:`VideoVisionTransformer` from a timm image ViT with its weights.

    The architecture (width, depth, heads, patch size, class/register tokens, LayerScale,
    pooling, norms) is read from ``image_model``; weights are inflated by
    :func:`inflate_image_state_dict` and loaded strictly. On a static clip the result equals
    ``image_model`` on that frame (features and logits).

    Args:
        image_model: a timm ``VisionTransformer`` holding the pretrained weights.
        num_frames: frames per clip.
        tubelet_size: frames per token; the 2D kernel is averaged over it.
        img_size: clip height/width; None keeps the image model's. Positions are resampled.
        num_classes: head classes; None keeps the image model's head and its weights.
        temporal_embed: add a zero-initialised learnable per-time-slot embedding. Without it
            (or while it stays frozen at zero) every time slot has the same position, and the
            inflated model cannot tell the order of frames: train ``time_embed`` with the
            adapters when the task depends on temporal order.
        drop_path_rate: stochastic depth of the video model.
    """
    arch = _image_architecture(image_model)
    grid = tuple(image_model.patch_embed.grid_size)
    img_size = img_size or grid[0] * arch["patch_size"]
    cfg = dict(getattr(image_model, "pretrained_cfg", None) or {})
    keep_head = num_classes is None
    classes = int(getattr(image_model, "num_classes", 0)) if keep_head else num_classes
    model = VideoVisionTransformer(
        img_size=img_size,
        num_frames=num_frames,
        tubelet_size=tubelet_size,
        num_classes=classes,
        pos_embed="learned",
        temporal_embed=temporal_embed,
        drop_path_rate=drop_path_rate,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        **arch,
    ).to(image_model.pos_embed.device, image_model.pos_embed.dtype)
    prefix = int(image_model.num_prefix_tokens)
    sd = inflate_image_state_dict(
        image_model.state_dict(),
        tubelet_size=tubelet_size,
        num_time_slots=model.num_time_slots,
        grid_size=model.patch_embed.grid_size[1:],
        num_prefix_tokens=prefix,
        pos_embed_has_prefix=not getattr(image_model, "no_embed_class", False),
        temporal_embed=temporal_embed,
    )
    if not keep_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    own = model.state_dict()
    fresh = {k for k in own if k.startswith("head.")} if not keep_head else set()
    check_state_dict(own, sd, fresh, "inflated image weights", "the video model")
    model.load_state_dict(sd, strict=False)
    model.default_cfg["architecture"] = (
        f"inflated_{cfg.get('architecture', type(image_model).__name__)}"
    )
    _log.info(
        "inflated image model %s into a video model: %d frames, tubelet %d (2D kernel averaged "
        "over it), %dx%d positions repeated over %d time slots, %d prefix token(s) per slot",
        cfg.get("architecture", type(image_model).__name__),
        num_frames,
        tubelet_size,
        *model.patch_embed.grid_size[1:],
        model.num_time_slots,
        prefix,
    )
    return model


def create_video_model(
    size: str = "base",
    *,
    num_classes: int = 0,
    num_frames: int = 8,
    img_size: int = 224,
    checkpoint: str | None = None,
    **kwargs: Any,
) -> VideoVisionTransformer:
    """A VideoMAE-layout video ViT by size name, optionally with weights from a checkpoint.

    Args:
        size: ``small``/``base``/``large``/``huge`` or ``vit_s``/``vit_b``/``vit_l``/``vit_h``
            (patch 16, tubelet 2, as released by VideoMAE).
        num_classes: classes of the head; 0 gives pooled features.
        num_frames: frames per clip (8 in AdaptFormer's recipe; VideoMAE released 16-frame
            models; the sinusoidal table follows num_frames).
        img_size: input height and width.
        checkpoint: a VideoMAE checkpoint (pre-training or fine-tuned), loaded strictly.
        **kwargs: any other :class:`VideoVisionTransformer` argument.
    """
    name = _SIZE_ALIASES.get(size, size)
    if name not in VIDEO_SIZES:
        choices = ", ".join([*VIDEO_SIZES, *_SIZE_ALIASES])
        raise ValueError(f"unknown video model size {size!r}; choose one of {choices}")
    args = {"patch_size": 16, "tubelet_size": 2, **VIDEO_SIZES[name], **kwargs}
    model = VideoVisionTransformer(
        img_size=img_size, num_frames=num_frames, num_classes=num_classes, **args
    )
    model.default_cfg["architecture"] = f"videomae_vit_{name}"
    if checkpoint is not None:
        load_videomae_checkpoint(model, checkpoint)
    return model
