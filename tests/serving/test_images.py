"""Uploads as untrusted bytes: every way they can be bad is a BadImage naming the problem."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from adaptformer.serving.images import BadImage, decode, from_base64

from .conftest import png


def test_a_good_image_decodes_to_rgb():
    img = decode(png(size=(48, 40)), "image 0")
    assert img.mode == "RGB" and img.size == (48, 40)


def test_16_bit_images_are_scaled_not_clipped():
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(buf, format="PNG")
    img = decode(buf.getvalue(), "image 0")
    assert np.asarray(img)[0, 0].tolist() == [128, 128, 128]  # 32768 / 257, not 255


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 422, "image 0 is empty"),
        (b"GIF89a but not really", 422, "image 0 is not a readable image"),
        (png()[:-60], 422, "is not a readable image"),
    ],
)
def test_unusable_bytes(data, status, words):
    with pytest.raises(BadImage, match=words) as err:
        decode(data, "image 0")
    assert err.value.status == status


def test_a_decompression_bomb_is_refused_before_decoding():
    for size, words in (
        ((10_000, 5_000), "declares 10000x5000 = 50,000,000 pixels"),  # over our 40 M
        ((20_000, 20_000), "is a decompression bomb"),  # over PIL's own limit too
    ):
        buf = io.BytesIO()
        Image.new("1", size).save(buf, format="PNG")
        assert len(buf.getvalue()) < 200_000  # a few KiB that would decode to 150+ MiB
        with pytest.raises(BadImage, match=words) as err:
            decode(buf.getvalue(), "image 0")
        assert err.value.status == 413
    with pytest.raises(BadImage, match="decompression bomb"):
        decode(png(size=(48, 40)), "image 0", max_pixels=1000)


def test_base64():
    assert from_base64(base64.b64encode(b"\xfb\xff").decode(), "x") == b"\xfb\xff"
    assert from_base64(base64.urlsafe_b64encode(b"\xfb\xff").decode(), "x") == b"\xfb\xff"
    with pytest.raises(BadImage, match="image 1 is not valid base64"):
        from_base64("abc!", "image 1")
    with pytest.raises(BadImage, match="must be a base64 string, got int"):
        from_base64(3, "image 1")


# -- issue 24: thin images (item 2) and the decoder allow-list (item 17) -------------------------


def _png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(1, 200_000), (1, 1_000_000), (4_000_000, 1), (21, 1)])
def test_thin_uploads_are_refused_before_decoding(monkeypatch, size):
    from PIL import ImageFile

    data = _png(size)
    assert len(data) < 100_000

    def load(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(BadImage, match=r"aspect ratio .*at most 20:1") as err:
        decode(data, "image 0")
    assert err.value.status == 422 and "\n" not in str(err.value)


def test_eps_upload_is_refused_without_ghostscript(monkeypatch):
    from PIL import EpsImagePlugin

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was invoked")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n%%EOF\n"
    with pytest.raises(BadImage, match="not a JPEG, PNG, WebP, GIF, BMP or TIFF") as err:
        decode(eps, "image 0")
    assert err.value.status == 422


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_upload_formats_decode(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (10, 200, 30)).save(buf, format=fmt)
    assert decode(buf.getvalue(), "image 0").size == (12, 10)
