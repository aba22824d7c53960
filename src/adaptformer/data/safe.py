"""Unreadable image files: found before training starts, never deep inside a DataLoader worker.

A data set of many thousand JPEGs downloaded from the web usually holds a few that are empty,
truncated or not images at all. Found at step 40,000 inside worker 3 they kill the run with a
trace that names neither the file nor the fix. So file-based data sets are decoded once up
front (:func:`scan_images`): unreadable files are dropped, counted and their paths logged, or,
with ``strict=True``, the build fails naming them. :func:`load_image` is the loader used
afterwards; it raises :class:`UnreadableImageError` naming the path, so the data set's runtime
guard can report (or replace) a file that changed after the scan.

Every image file and upload is opened by :func:`open_image`: only the decoders of
:data:`IMAGE_FORMATS` may read it (PIL's other plugins include EPS, which hands PostScript to
Ghostscript), and a shape no transform can resize sanely (:data:`MAX_ASPECT_RATIO`) is refused
from the header, before a pixel is decoded.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..utils.files import open_regular

_log = logging.getLogger(__name__)

# What PIL raises for bad files: UnidentifiedImageError and "image file is truncated" are
# OSErrors; some decoders raise SyntaxError, ValueError or struct.error on garbage headers.
# An image file is read only if it is a regular file of at most this size: a FIFO or a device
# (/dev/zero) named as an image, or planted in a data folder, would hang or never end the read.
# 1 GiB is far above any photo; PIL's decompression-bomb limit bounds the pixels separately.
MAX_IMAGE_BYTES = 2**30
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    Image.DecompressionBombError,
)
# Paths shown in one log message; the full list is returned to the caller.
_LOG_PATHS = 50
# The only decoders untrusted bytes reach (PIL format names): the common photo and web formats.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_NAMES = "a JPEG, PNG, WebP, GIF, BMP or TIFF file"
# Long side / short side at most. Transforms resize the SHORT side to about the input size, so a
# 1 x 200,000 strip (a 467-byte PNG) would become 256 x 51 M pixels; at 20:1 the evaluation
# resize of the largest img_size (1024 -> 1170) stays under 28 M pixels (82 MB as RGB).
MAX_ASPECT_RATIO = 20


class UnreadableImageError(OSError):
    """An image file could not be opened or decoded; the message names the file and the fix."""


class ImageShapeError(ValueError):
    """An image whose shape (read from its header) no transform may resize; says the limit."""


def shape_problem(width: int, height: int) -> str | None:
    """Why an image of ``width x height`` must not be resized, or None if it may be."""
    short, long = min(width, height), max(width, height)
    if short < 1:
        return f"{width}x{height} pixels: the image is empty"
    if long > MAX_ASPECT_RATIO * short:
        return (
            f"{width}x{height} pixels, an aspect ratio of {long / short:,.0f}:1; images of at "
            f"most {MAX_ASPECT_RATIO}:1 are resized (crop or pad it)"
        )
    return None


def open_image(fp: str | os.PathLike | IO[bytes]) -> Image.Image:
    """``Image.open`` limited to :data:`IMAGE_FORMATS`, with the header's shape checked.

    Nothing is decoded yet (PIL decodes on ``load``), so a hostile file costs a header read.

    Raises:
        UnidentifiedImageError: not one of the allowed formats (EPS, PSD, ... included).
        ImageShapeError: the header's size is outside :func:`shape_problem`'s limits.
    """
    try:
        img = Image.open(fp, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise UnidentifiedImageError(
            f"not {_FORMAT_NAMES} (the only formats decoded)"
        ) from None
    problem = shape_problem(img.width, img.height)
    if problem:
        img.close()
        raise ImageShapeError(problem)
    return img


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode one image file as RGB.

    Decoding happens here (``convert`` forces it) rather than lazily in the first transform,
    so every decode error surfaces at this call, with the path attached.

    Raises:
        UnreadableImageError: the file is missing, not an image, or truncated.
    """
    try:
        with open_regular(path, MAX_IMAGE_BYTES, "an image file") as f:
            return to_rgb(open_image(f))
    except DECODE_ERRORS as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, 16-bit grayscale scaled down rather than clipped.

    PIL's ``convert("RGB")`` clips 16-bit values (0..65535) at 255, so a 16-bit PNG came out
    almost white; here ``I;16*`` (and ``I`` holding values above 255) is divided by 257 first.
    """
    if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
        values = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257
        img = Image.fromarray(np.round(values).astype(np.uint8), "L")
    return img.convert("RGB")


def check_image(path: str | os.PathLike) -> str | None:
    """Decode one file cheaply; return None if it is a readable image, else the reason.

    JPEGs are decoded at 1/8 scale (``draft``), which still reads the whole entropy-coded
    stream, so truncation is caught at a fraction of the cost of a full decode.
    """
    try:
        with open_regular(path, MAX_IMAGE_BYTES, "an image file") as f, open_image(f) as img:
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def scan_images(
    paths: Sequence[str | os.PathLike],
    strict: bool = False,
    what: str = "images",
    num_threads: int | None = None,
) -> tuple[list[bool], list[str]]:
    """Decode every file once; report the unreadable ones.

    Args:
        paths: image files to check.
        strict: raise on any unreadable file instead of returning it as skipped.
        what: name of the file set for log messages ("cifar10 train images").
        num_threads: decoder threads (PIL releases the GIL while decoding); None uses up to
            8, bounded by the CPU count.

    Returns:
        ``(ok, skipped)``: one flag per path (True if readable) and the unreadable paths.

    Raises:
        UnreadableImageError: ``strict`` is set and at least one file is unreadable.
    """
    if not paths:
        return [], []
    workers = num_threads or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(check_image, paths, chunksize=64),
                total=len(paths),
                desc=f"checking {what}",
                unit="img",
                disable=None,  # off when stderr is not a terminal
                leave=False,
            )
        )
    bad = [(str(p), reason) for p, reason in zip(paths, results, strict=True) if reason]
    if bad and strict:
        listing = "; ".join(f"{p} ({r})" for p, r in bad[:_LOG_PATHS])
        more = f"; and {len(bad) - _LOG_PATHS} more" if len(bad) > _LOG_PATHS else ""
        raise UnreadableImageError(
            f"{len(bad)} of {len(paths)} {what} are unreadable: {listing}{more}. Delete or "
            "replace them, or drop strict_data (--strict-data) to skip them"
        )
    if bad:
        _log.warning(
            "skipped %d of %d %s that cannot be read:\n%s%s",
            len(bad),
            len(paths),
            what,
            "\n".join(f"  {p} ({r})" for p, r in bad[:_LOG_PATHS]),
            f"\n  ... and {len(bad) - _LOG_PATHS} more" if len(bad) > _LOG_PATHS else "",
        )
    return [r is None for r in results], [p for p, _ in bad]
