"""The released checkpoint on the HuggingFace hub, cached and checksummed in the data folder.

``<data_dir>/models/brainsemantoks_ckpt_epoch_100.pth`` is downloaded once with
``huggingface_hub.hf_hub_download`` (honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
``HF_TOKEN``). Its sha256 is recorded beside it in
``brainsemantoks_ckpt_epoch_100.pth.sha256.json`` and checked on every later use, so
a corrupted or replaced file is refused. A cached, verified file needs no network.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from filelock import FileLock

from bids_semantoks.atlas.fetch import sha256_of, write_atomic
from bids_semantoks.errors import DataError, OutputError
from bids_semantoks.model.checkpoint import ModelNotAvailable, _one_line

__all__ = ["fetch_official", "REPO_ID", "FILENAME", "sha256_file"]

REPO_ID = "SamGijsen/Brain-Semantoks"
FILENAME = "brainsemantoks_ckpt_epoch_100.pth"


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


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256.json")


def _write_record(target: Path, source: str) -> None:
    doc = {
        "file": target.name,
        "sha256": sha256_file(target),
        "size": target.stat().st_size,
        "source": source,
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomic(_record_path(target), (json.dumps(doc, indent=2) + "\n").encode())


def _verify(target: Path) -> None:
    record = _record_path(target)
    try:
        expected = json.loads(record.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{record}: unreadable checksum record; delete it and {target.name} to download again") from None
    if sha256_file(target) != expected:
        raise DataError(
            f"{target}: sha256 differs from the one recorded at download ({record.name}); "
            "the file is corrupt or was replaced: delete it to download it again"
        )


def fetch_official(data_dir: str | Path | None = None) -> Path:
    """Path of the released checkpoint, downloaded on first use and verified every time.

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
        The cached file does not match its recorded sha256.
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
        if not target.is_file():
            _download(models, target)
        _write_record(target, f"huggingface:{REPO_ID}/{FILENAME}")
    return target


def _download(models: Path, target: Path) -> None:
    from huggingface_hub import hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at huggingface_hub import
    try:
        if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
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
