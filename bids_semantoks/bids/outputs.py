"""Outputs: BIDS derivative names, atomic writes, and the dataset-level files.

Every file is written to a temporary name in the same folder and renamed into
place (``os.replace`` is atomic on POSIX), so a killed job never leaves a
half-written file under its final name. Dataset-level files shared by parallel
participant jobs (``dataset_description.json``, ``.bidsignore``,
``logs/CITATION.md``) are updated under a file lock.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from filelock import FileLock

from bids_semantoks import __version__
from bids_semantoks.bids.layout import ENTITY_KEYS, RunInputs
from bids_semantoks.errors import OutputError

BIDSIGNORE_LINES = ("*_embedding.tsv", "*_embedding.json", "*_tokens.npz", "*_tokens.json", "models/", "group/", "logs/", "work/", "sub-*/log/", ".bids_semantoks.lock")


def sanitize_label(value: str) -> str:
    """Turn any string into a BIDS label (alphanumeric only)."""
    out = "".join(ch for ch in str(value) if ch.isalnum())
    return out or "unnamed"


def run_dir(output_dir: Path, run: RunInputs) -> Path:
    parts = [f"sub-{run.entities['subject']}"]
    if run.entities.get("session"):
        parts.append(f"ses-{run.entities['session']}")
    return Path(output_dir, *parts, "func")


def run_stem(run: RunInputs, atlas: str, space: str | None) -> str:
    """``<source entities>[_space-<space>][_res-<res>]_atlas-<atlas>``.

    ``res`` is kept: two resolutions of one run (fMRIPrep ``--output-spaces X:res-1 X:res-2``)
    are two inputs, and their outputs must not overwrite each other.
    """
    stem = run.name
    if space:
        stem += f"_space-{space}"
    if space and run.res:
        stem += f"_res-{run.res}"
    return f"{stem}_atlas-{atlas}"


def timeseries_path(output_dir: Path, run: RunInputs, atlas: str, space: str | None, strategy: str) -> Path:
    return run_dir(output_dir, run) / f"{run_stem(run, atlas, space)}_desc-{strategy}_timeseries.tsv"


def embedding_path(output_dir: Path, run: RunInputs, atlas: str, space: str | None, model: str) -> Path:
    return run_dir(output_dir, run) / f"{run_stem(run, atlas, space)}_desc-{model}_embedding.tsv"


def subject_embedding_path(output_dir: Path, subject: str, session: str | None, atlas: str, model: str) -> Path:
    parts = [f"sub-{subject}"] + ([f"ses-{session}"] if session else [])
    name = "_".join(parts) + f"_atlas-{atlas}_desc-{model}_embedding.tsv"
    return Path(output_dir, *parts, "func", name)


def sidecar_of(path: Path) -> Path:
    name = path.name
    for ext in (".tsv", ".npz", ".nii.gz"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the target folder; rename it to ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot write here ({exc.strerror}); check permissions and free space") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise OutputError(f"{path}: cannot write ({exc.strerror}); free space or fix permissions") from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path, recursive: bool = False) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files a killed job left in ``folder``.

    Call it only where no other process may be writing: a subject's folders in that
    subject's job, the dataset-level files under the OUTPUT_DIR lock.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")) if p.is_file()]
    for p in found:
        try:
            p.unlink(missing_ok=True)
        except OSError:  # best effort: a read-only folder fails later with a clear message
            pass
    return found


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_text_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` unless the file already holds exactly it (keeps reruns byte- and mtime-stable)."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    write_text(path, text)
    return True


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def write_tsv(path: Path, frame: pd.DataFrame, float_format: str = "%.6g") -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format=float_format)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def generated_by() -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Name": "bids_semantoks",
        "Version": __version__,
        "CodeURL": "https://github.com/bids-semantoks/bids_semantoks",
    }
    image = os.environ.get("BIDS_SEMANTOKS_CONTAINER_IMAGE")
    if image:
        entry["Container"] = {"Type": os.environ.get("BIDS_SEMANTOKS_CONTAINER_TYPE", "docker"), "Tag": image}
    return entry


def init_output_dataset(output_dir: Path, input_dir: Path, input_description: dict[str, Any], citation: str | None = None) -> None:
    """Create or update OUTPUT_DIR's dataset-level files, safely under concurrency."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create OUTPUT_DIR ({exc.strerror}); choose a writable folder") from exc
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"{output_dir}: OUTPUT_DIR is not writable; fix its permissions or choose another folder")
    lock = FileLock(str(output_dir / ".bids_semantoks.lock"))
    with lock:
        for folder in (output_dir, output_dir / "logs"):  # written only under this lock: safe to clean
            remove_stale_temporaries(folder)
        desc_path = output_dir / "dataset_description.json"
        ours = generated_by()
        chain = [g for g in input_description.get("GeneratedBy", []) if isinstance(g, dict)]
        legacy = input_description.get("PipelineDescription")  # fMRIPrep 1.x (BIDS < 1.4)
        if not chain and isinstance(legacy, dict) and legacy.get("Name"):
            chain = [{k: v for k, v in legacy.items() if k in ("Name", "Version", "CodeURL", "Description")}]
        desc = {
            "Name": "bids_semantoks derivatives",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [ours] + [g for g in chain if g.get("Name") != "bids_semantoks"],
            "DatasetLinks": {"input": Path(input_dir).resolve().as_uri()},
            "SourceDatasets": [{"URL": Path(input_dir).resolve().as_uri()}]
            + [s for s in input_description.get("SourceDatasets", []) if isinstance(s, dict)],
        }
        if desc_path.is_file():
            try:
                existing = json.loads(desc_path.read_text())
            except json.JSONDecodeError:
                existing = None
            if existing == _jsonable(desc):
                desc = None
        if desc is not None:
            write_json(desc_path, desc)
        ignore_path = output_dir / ".bidsignore"
        lines = ignore_path.read_text().splitlines() if ignore_path.is_file() else []
        missing = [line for line in BIDSIGNORE_LINES if line not in lines]
        if missing:
            write_text(ignore_path, "\n".join(lines + missing) + "\n")
        if citation is not None:
            cit = output_dir / "logs" / "CITATION.md"
            if not cit.is_file() or cit.read_text() != citation:
                write_text(cit, citation)
