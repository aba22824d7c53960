"""Fixtures shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..runs import make_checkpoint, make_image_folder


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> Path:
    """A folder with ``data/`` (a small image folder) and ``vit.safetensors`` (a tiny ViT)."""
    root = tmp_path_factory.mktemp("ckpt")
    make_image_folder(root / "data")
    make_checkpoint(root / "vit.safetensors")
    return root
