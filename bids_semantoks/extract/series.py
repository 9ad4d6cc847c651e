"""Finding and reading regional time series written by the participant level (or XCP-D).

The one place that knows what a time-series output is: pre-training
(:mod:`bids_semantoks.pretrain.data`) and the FC baseline of the probes
(:mod:`bids_semantoks.probe.features`) find the files with :func:`timeseries_files` on the
pybids layout of :func:`derivatives_layout`, and read them with :func:`read_series`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bids_semantoks.errors import DataError

__all__ = ["derivatives_layout", "timeseries_files", "read_series", "read_sidecar", "is_model_ready"]


def derivatives_layout(root: Path, participant_labels: Iterable[str] | None = None):
    """pybids layout of a derivatives folder (no validation), or None when it does not exist.

    Parameters
    ----------
    root : Path
        OUTPUT_DIR of the participant level, or an XCP-D-style derivatives folder.
    participant_labels : iterable of str, optional
        Index only these subjects (with or without ``sub-``); every other ``sub-*`` folder is
        skipped, so a few subjects of a large folder index quickly.
    """
    import bids  # imported lazily: pybids is slow to import

    root = Path(root)
    if not root.is_dir():
        return None
    ignore: list[Any] = [re.compile(r"^/(code|sourcedata|stimuli|logs|log|figures|work|models)(/|$)"),
                         re.compile(r"/\.")]
    if participant_labels:
        keep = "|".join(re.escape(str(p).removeprefix("sub-")) for p in participant_labels)
        ignore.append(re.compile(rf"^/sub-(?!(?:{keep})(?:/|$))[^/]+"))
    try:
        return bids.BIDSLayout(
            root, validate=False, config=["bids", "derivatives"],
            indexer=bids.BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False),
        )
    except Exception as exc:  # pybids raises plain ValueError variants
        raise DataError(f"{root}: pybids could not index the folder ({' '.join(str(exc).split())[:200]})") from exc


def timeseries_files(layout, participant_labels: Iterable[str] | None = None) -> list:
    """Regional time-series tables of a layout: ``sub-*_..._atlas-<A>_..._timeseries.tsv``.

    fMRIPrep/XCP-D confounds share the suffix and are left out (``desc-confounds``, or no
    ``atlas-`` entity). Sorted by path.
    """
    if layout is None:
        return []
    wanted = None if participant_labels is None else {str(p).removeprefix("sub-") for p in participant_labels}
    files = layout.get(suffix="timeseries", extension=".tsv")
    out = [f for f in files if "subject" in f.entities and "atlas" in f.entities
           and f.entities.get("desc") != "confounds"
           and (wanted is None or str(f.entities["subject"]) in wanted)]
    return sorted(out, key=lambda f: f.path)


def read_series(path: Path, columns: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a regional time-series table (``n/a`` -> NaN), rectangular and numeric.

    Parameters
    ----------
    path : Path
        ``*_timeseries.tsv``; header = region names.
    columns : list of str, optional
        Region order to return; every one must be in the header.

    Returns
    -------
    data : ndarray, shape (T, R), float64
    columns : list of str
    """
    from bids_semantoks.extract.signal import read_tsv

    frame = read_tsv(path, "time-series TSV", na_values=["n/a"], keep_default_na=False)
    if columns is None:
        columns = list(frame.columns)
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise DataError(
            f"{path}: region column(s) {absent[:3]} missing from the header; the time series "
            "must use the atlas' region names"
        )
    try:
        try:  # all numeric already (the common case): no per-column parsing
            data = frame[columns].to_numpy(dtype=np.float64)
        except (ValueError, TypeError):
            data = frame[columns].apply(_numeric).to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric values ({exc}); fix the file or rerun the participant level") from exc
    return data, list(columns)


def _numeric(col):
    import pandas as pd

    return pd.to_numeric(col, errors="raise")


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of a ``.tsv`` (empty when absent); invalid JSON is bad data."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{side}: cannot read JSON sidecar ({exc}); fix or regenerate it") from exc
    return meta if isinstance(meta, dict) else {}


def is_model_ready(meta: dict[str, Any], target_tr: float = 2.0) -> bool:
    """True for a participant-level output at ``target_tr`` (already cleaned and z-scored)."""
    if not meta.get("ModelReady") and "SettingsHash" not in meta:
        return False
    try:
        return abs(float(meta.get("RepetitionTime")) - target_tr) < 1e-3
    except (TypeError, ValueError):
        return False
