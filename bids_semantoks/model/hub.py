"""The released checkpoint on the HuggingFace hub, cached, checksummed and with its provenance.

``<data_dir>/models/brainsemantoks_ckpt_epoch_100.pth`` is downloaded once with
``huggingface_hub.hf_hub_download`` (honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
``HF_TOKEN``). A record beside it, ``brainsemantoks_ckpt_epoch_100.pth.sha256.json``, holds
its sha256 (checked on every later use, so a corrupted or replaced file is refused) and **how
the file arrived**:

- ``hub-download``: fetched by the hub client; the record keeps the hub revision (commit) it
  came from and the hub's LFS sha256 (its ETag), which must equal the file's sha256;
- ``user-placed``: the file was found in the cache without a download by the hub client
  (copied by hand for an offline site). Its outputs are labelled ``userplaced``, never
  ``official``, unless its sha256 equals the pinned one (``bids_semantoks/data/models.json``;
  not pinned today, see there) or ``python -m bids_semantoks.prefetch --verify`` found it
  equal to the hub's published sha256 (recorded as ``hub_verified``).

A cached, verified file needs no network.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path

from filelock import FileLock

from bids_semantoks.atlas.fetch import sha256_of, write_atomic
from bids_semantoks.errors import DataError, OutputError
from bids_semantoks.model.checkpoint import ModelNotAvailable, _one_line

__all__ = [
    "fetch_official", "official_provenance", "verify_official_with_hub", "ModelProvenance",
    "REPO_ID", "FILENAME", "OFFICIAL_LABEL", "USERPLACED_LABEL", "sha256_file", "pinned_official",
]

REPO_ID = "SamGijsen/Brain-Semantoks"
FILENAME = "brainsemantoks_ckpt_epoch_100.pth"
#: Model label (``desc-``/``model-`` in output names) of the released weights.
OFFICIAL_LABEL = "official"
#: Model label of a file placed in the cache by hand whose bytes were not shown to be the release.
USERPLACED_LABEL = "userplaced"
HUB_DOWNLOAD, USER_PLACED = "hub-download", "user-placed"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelProvenance:
    """Where the cached official checkpoint came from.

    Attributes
    ----------
    path : Path
        The cached file.
    label : str
        Model label for output names: :data:`OFFICIAL_LABEL` when the bytes are shown to be
        the release (hub download with matching LFS sha256, pinned sha256, or a ``--verify``
        match), else :data:`USERPLACED_LABEL`.
    how_obtained : str
        ``"hub-download"`` or ``"user-placed"``.
    source : str
        One-line provenance for sidecars and citations.
    sha256 : str
        sha256 of the file.
    size : int
        Size in bytes.
    revision : str or None
        Hub commit the file came from (hub downloads, or the revision ``--verify`` matched).
    hub_sha256 : str or None
        The hub's LFS sha256 of the file, when known.
    verified_by : str or None
        What shows the bytes are the release: ``"hub-download"``, ``"pinned-sha256"``,
        ``"prefetch --verify"``, or None.
    """

    path: Path
    label: str
    how_obtained: str
    source: str
    sha256: str
    size: int
    revision: str | None = None
    hub_sha256: str | None = None
    verified_by: str | None = None

    def as_dict(self) -> dict:
        """JSON-able form (``path`` as a string)."""
        out = asdict(self)
        out["path"] = str(self.path)
        return out


@lru_cache(maxsize=1)
def pinned_official() -> dict:
    """The ``official`` entry of ``bids_semantoks/data/models.json`` (sha256/size may be None)."""
    doc = json.loads(resources.files("bids_semantoks.data").joinpath("models.json").read_text())
    return dict(doc["official"])


def _data_dir(data_dir: str | Path | None) -> Path:
    from bids_semantoks.atlas.registry import resolve_data_dir

    return resolve_data_dir(data_dir)


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(path)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file (memoised per path, size and modification time within a process)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _normalise_etag(etag: str | None) -> str | None:
    if not etag:
        return None
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    etag = etag.strip('"').lower()
    return etag if _SHA256_RE.match(etag) else None


def _hub_download_metadata(models: Path) -> tuple[str, str | None] | None:
    """(commit, LFS sha256) that the hub client recorded when it downloaded the file into
    ``models`` (``.cache/huggingface/download/<file>.metadata``), or None.

    Read without the hub client's lock, so a read-only cache works. Like the hub client,
    metadata older than the file's last modification is ignored.
    """
    meta = models / ".cache" / "huggingface" / "download" / f"{FILENAME}.metadata"
    try:
        commit, etag, stamp = meta.read_text().splitlines()[:3]
        if (models / FILENAME).stat().st_mtime - 1 > float(stamp):
            return None
    except (OSError, ValueError):
        return None
    return commit.strip(), _normalise_etag(etag)


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256.json")


def _read_record(target: Path) -> dict:
    record = _record_path(target)
    try:
        doc = json.loads(record.read_text())
        if not isinstance(doc, dict) or not isinstance(doc["sha256"], str):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{record}: unreadable checksum record; delete it and {target.name} to download again") from None
    return doc


def _write_record(target: Path, downloaded: bool) -> None:
    """Record sha256 and provenance of a file just downloaded or found in the cache."""
    sha = sha256_file(target)
    hub = _hub_download_metadata(target.parent)
    if hub is not None and hub[1] is not None and hub[1] != sha:
        if downloaded:
            target.unlink(missing_ok=True)
            raise DataError(
                f"{target}: the downloaded file's sha256 ({sha}) differs from the hub's LFS sha256 "
                f"({hub[1]}); the download is corrupt: run again"
            )
        hub = None  # stale hub metadata of an earlier download: the file was replaced by hand
    doc = {
        "file": target.name,
        "sha256": sha,
        "size": target.stat().st_size,
        "repo_id": REPO_ID,
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if hub is not None:
        doc.update(how_obtained=HUB_DOWNLOAD, revision=hub[0] or None, hub_sha256=hub[1],
                   source=f"huggingface:{REPO_ID}@{hub[0] or 'unknown'}/{FILENAME}")
    else:
        doc.update(how_obtained=USER_PLACED, revision=None, hub_sha256=None, source=f"user-placed:{target}")
    write_atomic(_record_path(target), (json.dumps(doc, indent=2) + "\n").encode())


def _verify(target: Path) -> None:
    record = _record_path(target)
    expected = _read_record(target)["sha256"]
    if sha256_file(target) != expected:
        raise DataError(
            f"{target}: sha256 differs from the one recorded at download ({record.name}); "
            "the file is corrupt or was replaced: delete it to download it again"
        )


def fetch_official(data_dir: str | Path | None = None) -> Path:
    """Path of the released checkpoint, downloaded on first use and verified every time.

    A file already in ``<data_dir>/models/`` (put there by hand) is used without a
    download and recorded as ``user-placed`` (see :func:`official_provenance`).

    Parameters
    ----------
    data_dir : str or Path, optional
        Data folder (``--data-dir``); default ``$BIDS_SEMANTOKS_DATA`` or
        ``~/.cache/bids_semantoks``. The file goes to ``<data_dir>/models/``.

    Returns
    -------
    Path
        The cached ``brainsemantoks_ckpt_epoch_100.pth``.

    Raises
    ------
    ModelNotAvailable
        Not cached and cannot be downloaded (offline, hub unreachable).
    DataError
        The cached file does not match its recorded sha256, or a download does not match
        the hub's LFS sha256.
    """
    models = _data_dir(data_dir) / "models"
    target = models / FILENAME
    if target.is_file() and _record_path(target).is_file():
        _verify(target)
        return target
    if data_dir is None and os.environ.get("BIDS_SEMANTOKS_IMAGE_HAS_MODEL") == "0":  # image built WITH_MODEL=0
        raise ModelNotAvailable(f"this container image carries no model weights (built with WITH_MODEL=0; {target} is absent): "
                                "mount a data cache that holds them over its folder (filled with `python -m "
                                "bids_semantoks.prefetch`), pass --model DIR (a model folder) or --model none")
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{models}: cannot create the model cache ({exc.strerror}); pass a writable --data-dir") from None
    with FileLock(str(models / f".{FILENAME}.lock")):
        if target.is_file() and _record_path(target).is_file():
            _verify(target)
            return target
        downloaded = not target.is_file()
        if downloaded:
            _download(models, target)
        _write_record(target, downloaded)
    return target


def official_provenance(data_dir: str | Path | None = None) -> ModelProvenance:
    """Fetch (or find) the released checkpoint and say how it arrived and what its label is.

    Parameters
    ----------
    data_dir : str or Path, optional
        Data folder, as for :func:`fetch_official`.

    Returns
    -------
    ModelProvenance
        ``label`` is ``"official"`` only when the bytes are shown to be the release: a hub
        download whose sha256 equals the hub's LFS sha256, a sha256 equal to the pinned one,
        or a ``prefetch --verify`` match; a file placed by hand is ``"userplaced"``.

    Raises
    ------
    ModelNotAvailable, DataError
        As :func:`fetch_official`.
    """
    path = fetch_official(data_dir)
    doc = _read_record(path)
    sha, size = doc["sha256"], int(doc.get("size") or path.stat().st_size)
    how = doc.get("how_obtained")
    revision, hub_sha = doc.get("revision"), doc.get("hub_sha256")
    if how is None:  # a record written before provenance was kept: trust the hub client's metadata only
        hub = _hub_download_metadata(path.parent)
        if hub is not None and hub[1] == sha:
            how, revision, hub_sha = HUB_DOWNLOAD, hub[0] or None, hub[1]
        else:
            how = USER_PLACED
    pinned = pinned_official().get("sha256")
    verified = doc.get("hub_verified") if isinstance(doc.get("hub_verified"), dict) else None
    if how == HUB_DOWNLOAD and hub_sha == sha:
        verified_by = HUB_DOWNLOAD
    elif pinned and pinned == sha:
        verified_by = "pinned-sha256"
    elif verified and verified.get("sha256") == sha:
        verified_by, revision, hub_sha = "prefetch --verify", verified.get("revision") or revision, sha
    else:
        verified_by = None
    if how == HUB_DOWNLOAD:
        source = f"huggingface:{REPO_ID}@{revision or 'unknown'}/{FILENAME} (downloaded by the hub client, sha256 {sha})"
    else:
        source = f"user-placed:{path} (sha256 {sha}; "
        source += (f"equal to the release, {verified_by})" if verified_by else
                   "not verified to be the release: run python -m bids_semantoks.prefetch --verify)")
    label = OFFICIAL_LABEL if verified_by else USERPLACED_LABEL
    return ModelProvenance(path=path, label=label, how_obtained=how, source=source, sha256=sha, size=size,
                           revision=revision, hub_sha256=hub_sha, verified_by=verified_by)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def verify_official_with_hub(data_dir: str | Path | None = None, *, timeout: float = 10.0) -> tuple[bool, str]:
    """Compare the cached checkpoint with the sha256 the hub publishes for it.

    The revision recorded at download is asked for (``main`` for a file placed by hand).
    A match is recorded beside the file (``hub_verified``), which makes a hand-placed file
    count as the release.

    Parameters
    ----------
    data_dir : str or Path, optional
        Data folder, as for :func:`fetch_official`.
    timeout : float
        Seconds to wait for the hub.

    Returns
    -------
    (bool, str)
        True and a one-line message when the hub was reached and the sha256 matches; False
        and the reason when the hub could not be reached or publishes no sha256.

    Raises
    ------
    DataError
        The hub publishes a different sha256: the cached file is not the release.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    prov = official_provenance(data_dir)
    revision = prov.revision if prov.how_obtained == HUB_DOWNLOAD and prov.revision else "main"
    endpoint = os.environ.get("HF_ENDPOINT") or None
    if _offline():
        return False, "HF_HUB_OFFLINE is set: not compared with the hub"
    try:
        meta = get_hf_file_metadata(hf_hub_url(REPO_ID, FILENAME, revision=revision, endpoint=endpoint),
                                    timeout=timeout, endpoint=endpoint)
    except Exception as exc:  # network or HTTP error: the hub is not reachable for this file
        return False, f"the hub could not be reached ({_one_line(exc)[:120]}): not compared"
    hub_sha = _normalise_etag(meta.etag)
    if hub_sha is None:
        return False, f"the hub publishes no sha256 for {REPO_ID}@{revision}/{FILENAME}: not compared"
    if hub_sha != prov.sha256:
        raise DataError(
            f"{prov.path}: sha256 {prov.sha256} differs from the hub's published {hub_sha} "
            f"({REPO_ID}@{meta.commit_hash or revision}); it is not the released file: delete it "
            "and its .sha256.json, then run python -m bids_semantoks.prefetch again"
        )
    doc = _read_record(prov.path)
    doc["hub_verified"] = {"revision": meta.commit_hash or revision, "sha256": hub_sha,
                           "checked": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        write_atomic(_record_path(prov.path), (json.dumps(doc, indent=2) + "\n").encode())
    except (OSError, OutputError):
        pass  # a read-only cache: the match is reported, not recorded
    return True, f"sha256 equals the hub's published sha256 ({REPO_ID}@{meta.commit_hash or revision})"


def _download(models: Path, target: Path) -> None:
    from huggingface_hub import hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at huggingface_hub import
    try:
        if _offline():
            raise ConnectionError("HF_HUB_OFFLINE is set")
        path = hf_hub_download(REPO_ID, FILENAME, local_dir=models, endpoint=endpoint)
    except Exception as exc:  # network, offline mode, HTTP errors: try the local copy
        try:
            path = hf_hub_download(REPO_ID, FILENAME, local_dir=models, local_files_only=True)
        except Exception:
            raise ModelNotAvailable(
                f"{target}: the official model is not cached and could not be downloaded from "
                f"huggingface.co/{REPO_ID} ({_one_line(exc)[:120]}); connect to the internet once, "
                "or put the file there by hand"
            ) from None
    if Path(path).resolve() != target.resolve():  # pragma: no cover - hub layouts always use local_dir/filename
        os.replace(path, target)
