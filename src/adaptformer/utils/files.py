"""Reading files that may be damaged or hostile, and writing files so a crash keeps the old one.

Adapter files, run folders and backbone checkpoints are copied between machines and
downloaded, so every reader here treats its file as untrusted: nothing is executed, sizes are
checked against the file before anything is allocated, and whatever is wrong becomes a
one-line ``ValueError`` naming the file (the CLI prints it and exits 2). See docs/security.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from .errors import UserFacingError

# Bytes per element of each safetensors dtype (the format's own names).
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
# The JSON header of a real file is a few hundred bytes per tensor; 100 MB is the format's cap.
_MAX_HEADER = 100_000_000
# Deepest nesting of lists/mappings accepted in a JSON or YAML file we read. Ours nest at most 4
# deep; the parsers recurse once per level, so '[' * 200000 would end in a RecursionError.
MAX_NESTING = 64
# Size bounds of the files read here, checked before they are opened (docs/security.md).
# Text files (registry.json, adapter_config.json, config.yaml) are kilobytes; 16 MiB holds an
# adapter_config.json with 100,000 class names.
MAX_TEXT_BYTES = 16 * 2**20
# Tensor files (adapters, checkpoint.pt, backbones): a full fine-tune of ViT-g with its Adam
# state is about 18 GB; 64 GiB bounds them without refusing a real file.
MAX_TENSOR_BYTES = 64 * 2**30


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it (nothing is read or allocated)."""

    dtype: str
    shape: tuple[int, ...]


def safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """The tensors a ``.safetensors`` file declares, checked against the file's size.

    Every tensor's byte range must lie inside the file and match its dtype and shape, so a
    shape read from here is backed by real bytes and is safe to allocate.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, truncated or not a safetensors file.
    """
    path = Path(path)
    with open_regular(path, MAX_TENSOR_BYTES, "a .safetensors file") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(path, f"{size} bytes, too short for a header")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise _damaged(path, f"its header claims {length} bytes of a {size}-byte file")
        raw = f.read(length)
    try:
        header = loads_json(raw, "it")
    except ValueError as e:
        raise _damaged(path, f"its header is not JSON we read ({e})") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a mapping")
    header.pop("__metadata__", None)
    data = size - 8 - length
    return {name: _tensor_info(path, name, entry, data) for name, entry in header.items()}


def _tensor_info(path: Path, name: str, entry: Any, data: int) -> TensorInfo:
    """One header entry, checked: known dtype, integer shape, byte range inside the file."""
    if not isinstance(entry, dict):
        raise _damaged(path, f"the entry of {name} is not a mapping")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise _damaged(path, f"{name} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise _damaged(path, f"{name} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_count(o) for o in offsets)):
        raise _damaged(path, f"{name} has data_offsets {offsets!r}")
    begin, end = offsets
    if not begin <= end <= data or end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
        raise _damaged(
            path, f"{name} ({dtype} {tuple(shape)}) does not fit bytes {begin}..{end} of {data}"
        )
    return TensorInfo(dtype, tuple(shape))


def is_count(x: Any) -> bool:
    """A whole number >= 0 (``bool`` is not one), as sizes in untrusted files must be."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _damaged(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} is not a valid safetensors file ({problem}); it is damaged or truncated: "
        "copy or write it again"
    )


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file, after :func:`safetensors_header` checked it."""
    from safetensors.torch import load_file

    safetensors_header(path)
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError and friends: the header passed, the data did not
        raise _damaged(Path(path), first_line(e)) from None


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file, with a one-line error naming it (and ``what`` it should be) if it is not."""
    path = Path(path)
    raw = read_regular_bytes(path, MAX_TEXT_BYTES, what)  # a FIFO or a huge file: refused here
    try:
        return loads_json(raw, "the file")
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it should be {what}") from None


def loads_json(text: str | bytes, what: str, max_digits: int | None = None) -> Any:
    """Parse untrusted JSON: every problem, nesting too deep included, is one ``ValueError``.

    ``json.loads`` raises ``RecursionError`` (not a ``ValueError``) on ``'[' * 200000``, and a
    document just under Python's limit would break later recursive code (dumping, copying), so
    nesting is bounded at :data:`MAX_NESTING`. ``max_digits`` bounds integers more tightly
    than Python's own conversion limit (4,300 digits), with a message of ours.
    """

    def bounded_int(digits: str) -> int:
        if max_digits is not None and len(digits.lstrip("-")) > max_digits:
            raise ValueError(f"a number of {len(digits.lstrip('-')):,} digits is too long")
        return int(digits)

    try:
        value = json.loads(text, parse_int=bounded_int)
    except RecursionError:
        raise ValueError(_too_deep(what)) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an int of 5,000 digits
        raise ValueError(first_line(e)) from None
    check_nesting(value, what)
    return value


def check_nesting(value: Any, what: str, limit: int = MAX_NESTING) -> None:
    """Raise ``ValueError`` if lists/mappings in ``value`` nest deeper than ``limit``.

    Walks level by level without recursion, visiting each container once per level (YAML
    aliases can share one list many times, or make it contain itself: that is "too deep").
    """
    level: list[Any] = [value]
    for _ in range(limit + 1):
        children: dict[int, Any] = {}
        for node in level:
            items = node.values() if isinstance(node, dict) else node
            for child in items:
                if isinstance(child, (dict, list)):
                    children[id(child)] = child
        if not children:
            return
        level = list(children.values())
    raise ValueError(_too_deep(what, limit))


def _too_deep(what: str, limit: int = MAX_NESTING) -> str:
    return f"{what} is nested too deeply: lists or mappings more than {limit} deep; no valid file does"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory, so the final ``os.replace`` is atomic on
    POSIX and Windows: readers see either the old file or the complete new one. On error the
    temporary file is removed and ``path`` is left untouched; a full disk is a
    :class:`UserFacingError` saying so instead of a traceback.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes 0600 (and writers may recreate the file): give the usual mode.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except Exception as e:
        if not disk_full(e):
            raise
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        raise UserFacingError(
            f"no space left on device while writing {path} ({kept}); free some space and run "
            "the command again (training: add --resume)"
        ) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` means the disk (or quota) is full; libraries that write through their
    own code (torch's zip writer, safetensors' Rust) report it as text, not as an errno."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left on device" in text or "os error 28" in text


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping with string keys, parsed without running code
    (``yaml.safe_load``); anything else is one ``ValueError`` line naming the file."""
    import yaml

    raw = read_regular_bytes(path, MAX_TEXT_BYTES, "a YAML config file")
    try:
        data = yaml.safe_load(raw.decode()) or {}
    except RecursionError:
        raise ValueError(f"config file {_too_deep(str(path))}: fix or replace it") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: bad UTF-8, an int of 5,000 digits
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ValueError(f"config file {path} is not valid YAML{line}: fix or replace it") from None
    try:
        check_nesting(data, str(path))
    except ValueError as e:
        raise ValueError(f"config file {e}: fix or replace it") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    return data


def regular_file_size(path: str | Path, limit: int, what: str) -> int:
    """The size of ``path`` if it is a regular file (links followed) of at most ``limit`` bytes.

    Checked before a file is opened: opening a FIFO blocks until someone writes to it, and a
    device such as ``/dev/zero`` never ends, so a planted non-regular file would hang the
    reader (issue #24, item 9).

    Raises:
        FileNotFoundError: nothing is there.
        ValueError: it is a folder, FIFO, socket or device, or larger than ``limit``.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; it should be {what}") from None
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror}); it should be {what}") from None
    return _check_regular(path, info, limit, what)


def _check_regular(path: Path, info: os.stat_result, limit: int, what: str) -> int:
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f"{path} is not a regular file (it is a {_file_kind(info.st_mode)}); it should be "
            f"{what}: replace it with a real file"
        )
    if info.st_size > limit:
        raise ValueError(
            f"{path} holds {info.st_size:,} bytes; {what} may hold at most {limit:,}: it is not "
            "one, replace it"
        )
    return info.st_size


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


@contextlib.contextmanager
def open_regular(path: str | Path, limit: int, what: str) -> Iterator[IO[bytes]]:
    """``path`` opened for binary reading after :func:`regular_file_size` accepted it.

    The open itself does not block (``O_NONBLOCK``) and the opened file is checked again, so a
    FIFO swapped in between the check and the open is refused instead of hanging the reader.
    """
    path = Path(path)
    regular_file_size(path, limit, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _check_regular(path, os.fstat(fd), limit, what)
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular_bytes(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (:func:`open_regular`);
    a file that grows past ``limit`` while it is read is refused too."""
    with open_regular(path, limit, what) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} holds more than {limit:,} bytes; {what} may hold at most that")
    return data
