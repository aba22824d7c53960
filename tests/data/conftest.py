"""Fixtures for the data tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks the official files' md5; synthetic files only need to exist."""

    def exists(fpath: str, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    for module in ("cifar", "svhn", "flowers102"):
        monkeypatch.setattr(f"torchvision.datasets.{module}.check_integrity", exists)
