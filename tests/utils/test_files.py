"""Untrusted safetensors files are checked before anything is allocated; writes survive a full
disk with the old file kept."""

from __future__ import annotations

import errno
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from adaptformer.utils.errors import UserFacingError
from adaptformer.utils.files import (
    atomic_path,
    atomic_write_text,
    read_json,
    read_safetensors,
    read_yaml_mapping,
    safetensors_header,
)

from ..helpers import refusal_without_hanging


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.ones(3, 4), "b": torch.zeros(2, dtype=torch.int64)}, str(path))
    return path


def _with_header(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_header_describes_a_good_file(good):
    header = safetensors_header(good)
    assert header["a"].shape == (3, 4) and header["a"].dtype == "F32"
    assert header["b"].dtype == "I64"
    assert torch.equal(read_safetensors(good)["a"], torch.ones(3, 4))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"", "too short for a header"),
        (lambda b: b[:5], "too short for a header"),
        (lambda b: b[:40], "header claims"),
        (lambda b: b[:-4], "does not fit bytes"),
        (lambda b: b"\x00" * 200, "not JSON"),
        (lambda b: struct.pack("<Q", 10**15) + b[8:], "header claims"),
        (lambda b: b"garbage!" * 50, "header claims"),
    ],
)
def test_damaged_files_are_one_line_value_errors(good, damage, message):
    good.write_bytes(damage(good.read_bytes()))
    with pytest.raises(ValueError, match=message) as err:
        read_safetensors(good)
    assert "\n" not in str(err.value) and str(good) in str(err.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 16]}, "does not fit"),
        ({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 10**12]}, "does not fit"),
        ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "not a list of sizes"),
        ({"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}, "not a list of sizes"),
        ({"dtype": "OBJ", "shape": [4], "data_offsets": [0, 16]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [16]}, "data_offsets"),
        ([1, 2, 3], "not a mapping"),
    ],
)
def test_sizes_in_the_header_must_be_backed_by_bytes(tmp_path, entry, message):
    """A header may claim any shape; it is refused unless the file holds its bytes."""
    path = tmp_path / "big.safetensors"
    _with_header(path, {"x": entry}, b"\x00" * 16)
    with pytest.raises(ValueError, match=message):
        safetensors_header(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        safetensors_header(tmp_path / "none.safetensors")


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("file write failed: os error 28"),
    ],
)
def test_a_full_disk_says_so_and_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "f.txt"
    target.write_text("old")
    full = "no space left on device .*previous version is kept"
    with pytest.raises(UserFacingError, match=full), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_other_write_errors_pass_through(tmp_path):
    with pytest.raises(PermissionError), atomic_path(tmp_path / "f.txt"):
        raise PermissionError("no")
    atomic_write_text(tmp_path / "f.txt", "new")
    assert (tmp_path / "f.txt").read_text() == "new"


# -- deeply nested JSON/YAML (issue 24, item 11): one line, never a RecursionError ---------------

DEEP_JSON = ["[" * 200_000, "{\"a\":" * 100_000, "[" * 150 + "]" * 150]
DEEP_YAML = [*DEEP_JSON, "".join(" " * i + "a:\n" for i in range(3000)), "a: &x [*x]\n"]


@pytest.mark.parametrize("text", DEEP_JSON, ids=["brackets", "objects", "150-deep"])
def test_deep_json_is_one_line_error(tmp_path, text):
    path = tmp_path / "adapter_config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="nest") as err:
        read_json(path, "an adapter config")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("text", DEEP_YAML, ids=["flow", "objects", "150-deep", "block", "loop"])
def test_deep_yaml_is_one_line_error(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="nest") as err:
        read_yaml_mapping(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_deep_safetensors_header_is_one_line_error(tmp_path):
    path = tmp_path / "w.safetensors"
    raw = b"[" * 200_000
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(ValueError, match="nest") as err:
        read_safetensors(path)
    assert "\n" not in str(err.value)


def test_ordinary_nesting_is_read(tmp_path):
    from adaptformer.utils.files import loads_json

    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"a": [[{"b": [1, 2]}]]}))
    assert read_json(path, "x") == {"a": [[{"b": [1, 2]}]]}
    assert loads_json('{"k": [1, {"x": null}]}', "a request") == {"k": [1, {"x": None}]}


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_a_5000_digit_number_is_one_line(tmp_path, suffix):
    """Python refuses to convert ints of more than 4,300 digits with a bare ValueError."""
    path = tmp_path / f"f.{suffix}"
    path.write_text('{"a": ' + "1" * 5000 + "}" if suffix == "json" else "a: " + "1" * 5000)
    read = read_json if suffix == "json" else read_yaml_mapping
    with pytest.raises(ValueError, match=str(path)) as err:
        read(path, "x") if suffix == "json" else read(path)
    assert "\n" not in str(err.value)


# -- item 9 of issue #24: only regular files of bounded size are opened -----------------------


def _non_regular(tmp_path, kind):
    import os

    path = tmp_path / "adapter_model.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:  # a link to a device that never ends
        path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_non_regular_files_are_refused_before_opening(tmp_path, kind):
    """A FIFO as adapter_model.safetensors hung PUT (read_bytes() blocked on it)."""
    from adaptformer.utils.files import read_regular_bytes, regular_file_size

    path = _non_regular(tmp_path, kind)
    for call in (
        lambda: regular_file_size(path, 1000, "an adapter file"),
        lambda: read_regular_bytes(path, 1000, "an adapter file"),
        lambda: safetensors_header(path),
        lambda: read_safetensors(path),
    ):
        with pytest.raises(ValueError, match="not a regular file") as err:
            call()
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_readers_refuse_non_regular_json_and_yaml(tmp_path):
    import os

    from adaptformer.utils.files import read_json, read_yaml_mapping

    os.mkfifo(tmp_path / "registry.json")
    os.mkfifo(tmp_path / "config.yaml")
    with pytest.raises(ValueError, match="not a regular file"):
        read_json(tmp_path / "registry.json", "a registry")
    with pytest.raises(ValueError, match="not a regular file"):
        read_yaml_mapping(tmp_path / "config.yaml")


def test_files_over_the_size_bound_are_refused_unread(tmp_path):
    from adaptformer.utils.files import read_regular_bytes, regular_file_size

    path = tmp_path / "big.json"
    path.write_bytes(b"x" * 2001)
    with pytest.raises(ValueError, match=r"2,001 bytes.*at most 2,000"):
        regular_file_size(path, 2000, "a registry")
    with pytest.raises(ValueError, match=r"at most 2,000"):
        read_regular_bytes(path, 2000, "a registry")
    assert read_regular_bytes(path, 5000, "a registry") == b"x" * 2001
    with pytest.raises(FileNotFoundError):
        regular_file_size(tmp_path / "missing", 10, "a registry")


def test_a_fifo_checkpoint_is_refused_without_hanging(tmp_path):
    import os

    from adaptformer.training.run_folder import read_checkpoint

    path = tmp_path / "checkpoint.pt"
    os.mkfifo(path)
    error = refusal_without_hanging(lambda: read_checkpoint(path), path, "reading a checkpoint")
    assert "not a regular file" in str(error)
