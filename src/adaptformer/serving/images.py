"""Uploaded bytes to model inputs, treating every upload as hostile.

Decoding happens on worker threads, never on the model thread or the event loop. What can go
wrong with an upload is a :class:`BadImage` whose message names the problem and the image, so
the server answers 4xx and keeps serving everyone else:

- not an image, or a truncated one: PIL's decode errors (:data:`DECODE_ERRORS`, the set the
  data loaders use);
- a decompression bomb: the pixel count in the header is checked against ``max_pixels`` BEFORE
  anything is decoded (a 100-byte PNG can claim 50,000 x 50,000 pixels), which is stricter than
  PIL's own limit (a warning at 89 M pixels, an error only at twice that);
- a decoder outside the allow-list (:data:`~adaptformer.data.safe.IMAGE_FORMATS`: JPEG, PNG, WebP, GIF, BMP, TIFF;
  EPS would hand PostScript to Ghostscript) is never reached: "not a JPEG, PNG, ..." (422);
- a thin image (a 467-byte PNG of 1 x 200,000 pixels, which a short-side resize would turn
  into 51 M pixels) is refused from its header, before decoding: at most
  :data:`~adaptformer.data.safe.MAX_ASPECT_RATIO`:1 (422);
- 16-bit images are scaled to 8 bits, not clipped, as in training (``to_rgb``).
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable

import torch
from PIL import Image

from ..data.safe import DECODE_ERRORS, ImageShapeError, open_image, to_rgb

# 40 M pixels: a 7,000 x 5,700 photo fits, a bomb (and ~120 MiB of RGB per image) does not.
DEFAULT_MAX_PIXELS = 40_000_000


class BadImage(ValueError):
    """An upload that cannot be used as an image; ``status`` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def decode(data: bytes, what: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decode ``data`` as RGB after checking its declared size.

    Args:
        data: the uploaded bytes.
        what: how the error names this image (``"image 2 (cat.jpg)"``).
        max_pixels: width x height allowed at most.

    Raises:
        BadImage: empty, not an image, truncated, or too many pixels (413).
    """
    if not data:
        raise BadImage(f"{what} is empty")
    try:
        with open_image(io.BytesIO(data)) as img:
            pixels = img.width * img.height
            if pixels > max_pixels:
                raise BadImage(
                    f"{what} declares {img.width}x{img.height} = {pixels:,} pixels, more than "
                    f"the {max_pixels:,} this server decodes (a decompression bomb?)",
                    status=413,
                )
            img.load()  # decode everything now: a truncated file fails here, not later
            return to_rgb(img)
    except BadImage:
        raise
    except ImageShapeError as err:
        raise BadImage(f"{what} is {err}") from err
    except Image.DecompressionBombError as err:  # PIL's own limit, met in the header
        raise BadImage(f"{what} is a decompression bomb ({err})", status=413) from err
    except DECODE_ERRORS as err:
        raise BadImage(f"{what} is not a readable image ({type(err).__name__}: {err})") from err


def from_base64(text: object, what: str) -> bytes:
    """The bytes of a base64 string from a JSON request, as people produce them: the standard
    or URL-safe alphabet, wrapped in lines (the ``base64`` tool breaks every 76 columns) or
    not, padded or not. Any other character is refused."""
    if not isinstance(text, str):
        raise BadImage(f"{what} must be a base64 string, got {type(text).__name__}")
    # line breaks and spaces go; padding is implied by the length, so it is put back below
    compact = "".join(text.split()).rstrip("=").replace("-", "+").replace("_", "/")
    try:
        if len(compact) % 4 == 1:
            raise ValueError("its length is one more than a multiple of 4: characters are missing")
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadImage(f"{what} is not valid base64 ({err})") from err


def preprocess(
    data: bytes,
    what: str,
    transform: Callable[[Image.Image], torch.Tensor],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Decoded, resized and normalised as the registry's backbone expects: ``(C, H, W)``."""
    return transform(decode(data, what, max_pixels))
