"""Checksummed downloads into the atlas cache.

One idea: make sure a file with a known size and sha256 is present at a given path,
downloading it if needed, safely with respect to other processes filling the same cache.

- Downloads use :mod:`urllib` with a timeout and stream into a temporary file in the
  destination folder; size and sha256 are checked **before** the file is moved into place
  with :func:`os.replace`, so a file under its final name is always complete and verified.
- A :class:`filelock.FileLock` per file serialises concurrent jobs; after getting the lock
  the file is checked again, so only one job downloads. Lock files live in
  ``<atlas_dir>/.locks/<relpath>.lock`` (not beside the data, so the cache keeps the
  layout of ``../shared/atlases``; filelock leaves them behind on POSIX).
- Files already present are verified by sha256 on every call (the atlas files are small,
  about 1.7 MB in all, so hashing costs milliseconds; no verification cache is kept).
- Nothing is written when the file is already present and verifies, so a read-only,
  filled cache works.
- ``BIDS_SEMANTOKS_ATLAS_MIRROR`` (a base URL) replaces the upstream URLs: the file is
  then fetched only from ``<mirror>/<cache-relative path>``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from bids_semantoks.errors import DataError, MissingInputError

#: Environment variable: base URL replacing the upstream URLs (``<mirror>/<relpath>``).
MIRROR_ENV = "BIDS_SEMANTOKS_ATLAS_MIRROR"
#: Seconds to wait for a server to answer (connect and each read).
DOWNLOAD_TIMEOUT_S = 30.0
#: Seconds to wait for another process holding the lock of the same file.
LOCK_TIMEOUT_S = 600.0
_CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    """An upstream file: where it lives in the cache, where to get it, what it must be.

    Parameters
    ----------
    relpath : str
        Path relative to the atlas cache, with ``/`` separators
        (e.g. ``"buckner2011/Buckner2011_...nii.gz"``).
    urls : tuple of str
        Upstream URLs, tried in order.
    sha256 : str
        Expected sha256 (hex).
    size : int
        Expected size in bytes.
    """

    relpath: str
    urls: tuple[str, ...]
    sha256: str
    size: int

    @property
    def provenance(self) -> str:
        """First upstream URL with a pip-style ``#sha256=`` fragment."""
        return f"{self.urls[0]}#sha256={self.sha256}"


def sha256_of(path: str | Path) -> str:
    """Return the hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def is_valid(path: Path, size: int, sha256: str) -> bool:
    """True when ``path`` is a file with this size and sha256."""
    try:
        if not path.is_file() or path.stat().st_size != size:
            return False
        return sha256_of(path) == sha256
    except OSError:
        return False


def candidate_urls(remote: RemoteFile) -> list[str]:
    """URLs to try for ``remote``: the mirror only when one is set, else the upstream URLs."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        quoted = "/".join(urllib.parse.quote(p) for p in remote.relpath.split("/"))
        return [mirror.rstrip("/") + "/" + quoted]
    return list(remote.urls)


def lock_for(atlas_dir: Path, relpath: str) -> FileLock:
    """The inter-process lock guarding ``atlas_dir / relpath`` (``<atlas_dir>/.locks/<relpath>.lock``)."""
    lock_path = Path(atlas_dir) / ".locks" / f"{relpath}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S)


def ensure_file(remote: RemoteFile, atlas_dir: Path, *, download: bool = True) -> Path:
    """Return the verified local path of ``remote`` in ``atlas_dir``, downloading it if needed.

    Parameters
    ----------
    remote : RemoteFile
        The file to provide.
    atlas_dir : Path
        The atlas cache root.
    download : bool, default True
        Allow downloading when the file is missing or does not verify.

    Returns
    -------
    Path
        ``atlas_dir / remote.relpath``, present with the expected size and sha256.

    Raises
    ------
    MissingInputError
        The file is missing (or invalid) and cannot be downloaded (no network, download
        disallowed, read-only cache).
    DataError
        A downloaded file has the wrong size or sha256 (it is deleted), or a file in a
        read-only cache does not verify.
    """
    dest = Path(atlas_dir) / remote.relpath
    if is_valid(dest, remote.size, remote.sha256):
        return dest
    if dest.exists() and not _writable(dest.parent):
        raise DataError(
            f"{dest}: sha256 is not {remote.sha256} and the atlas cache is read-only; replace the "
            f"file with the one from {remote.urls[0]} or point BIDS_SEMANTOKS_ATLAS_DIR elsewhere"
        )
    if not download:
        raise MissingInputError(
            f"{dest}: atlas file missing or invalid and downloads are disabled; "
            f"{_offline_hint(remote, atlas_dir)}"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MissingInputError(
            f"{dest}: atlas file missing and the cache folder cannot be created ({exc.strerror}); "
            "set BIDS_SEMANTOKS_ATLAS_DIR or --data-dir to a writable folder"
        ) from exc
    if not _writable(dest.parent):
        raise MissingInputError(
            f"{dest}: atlas file missing and {dest.parent} is read-only; "
            "set BIDS_SEMANTOKS_ATLAS_DIR or --data-dir to a writable folder, or fill the cache"
        )
    try:
        with lock_for(atlas_dir, remote.relpath):
            # Another process may have finished while we waited for the lock.
            if is_valid(dest, remote.size, remote.sha256):
                return dest
            _download_verified(remote, dest, atlas_dir)
    except Timeout as exc:
        raise MissingInputError(
            f"{atlas_dir}/.locks/{remote.relpath}.lock: held by another process for over {LOCK_TIMEOUT_S:.0f} s; "
            "delete the lock file if no other bids_semantoks job is running"
        ) from exc
    return dest


def _download_verified(remote: RemoteFile, dest: Path, atlas_dir: Path) -> None:
    errors = []
    for url in candidate_urls(remote):
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                size, digest = _stream(url, out)
            if size != remote.size or digest != remote.sha256:
                raise DataError(
                    f"{dest.name}: download from {url} is corrupt (expected sha256 {remote.sha256}, "
                    f"{remote.size} B; got sha256 {digest}, {size} B); it was deleted, retry later "
                    "or fill the cache by hand"
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            errors.append(f"{url} ({reason})")
        finally:
            tmp.unlink(missing_ok=True)
    raise MissingInputError(
        f"{dest}: cannot download atlas file from {'; '.join(errors)}; {_offline_hint(remote, atlas_dir)}"
    )


def _stream(url: str, out) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"User-Agent": "bids_semantoks"})
    h = hashlib.sha256()
    size = 0
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _offline_hint(remote: RemoteFile, atlas_dir: Path) -> str:
    return (
        f"to work offline, put {remote.urls[0]} (sha256 {remote.sha256}) at "
        f"{Path(atlas_dir) / remote.relpath}, or set BIDS_SEMANTOKS_ATLAS_DIR to a filled atlas "
        f"cache, or {MIRROR_ENV} to a mirror"
    )


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
