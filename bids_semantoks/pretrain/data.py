"""Pre-training data: model-ready runs, read from participant outputs, held compactly in memory.

A :class:`RunSeries` is one run already at TR 2 s and z-scored per region: a participant
output read as written, or any other series prepared by the participant level's own path
(:mod:`bids_semantoks.extract.prepare`). Missing
regions (``NaN``, written ``n/a`` in the time-series files) are set to 0 when the runs
are packed: 0 is the mean of a z-scored series, and it is what the participant level
feeds the model for such regions outside masking.

:class:`PretrainData` packs every run of every selected subject into one
``[sum of T, C]`` array (float16 by default: z-scored values lose < 1e-3 relative
precision) with an offset per run, so runs of different lengths cost no padding; the
array is moved to the training device once, and crops are gathered there with tensor
indexing (see :mod:`bids_semantoks.pretrain.augment`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bids_semantoks.bids.layout import read_tr
from bids_semantoks.errors import DataError, MissingInputError, NothingSelectedError

__all__ = [
    "RunSeries",
    "PretrainData",
    "prepare_timeseries",
    "load_runs_from_derivatives",
    "select_subjects",
    "TARGET_TR",
]

logger = logging.getLogger(__name__)

#: Repetition time of the model input, seconds.
TARGET_TR = 2.0

Prepare = Callable[[np.ndarray, float], np.ndarray]


@dataclass
class RunSeries:
    """One model-ready run.

    Attributes
    ----------
    subject : str
        Participant label without ``sub-``.
    run_id : str
        Identifier of the run (file name stem up to ``_timeseries``), unique in a data set.
    data : np.ndarray [T, C] float32
        Series at TR 2 s, z-scored per region; NaN marks a missing region (treated as 0).
    """

    subject: str
    run_id: str
    data: np.ndarray


def prepare_timeseries(data: np.ndarray, tr: float, eps: float = 1e-8, *, metadata: dict | None = None) -> np.ndarray:
    """Default conversion of a regional series to the model's input: the participant level's.

    The series goes through :func:`bids_semantoks.extract.prepare.prepare_series` with the
    participant level's default settings (linear detrend, 0.01-0.1 Hz band-pass unless
    ``metadata`` says the series is filtered already, cubic-spline resampling to TR 2 s with
    an anti-aliasing low-pass, z-score per region with epsilon 1e-8), so pre-training sees
    what ``participant --input-type timeseries`` writes for the same file. Constant and
    all-NaN regions come back NaN (missing; packed as 0).

    Parameters
    ----------
    data : np.ndarray [T, C]
        Raw series, one row per volume.
    tr : float
        Repetition time of ``data`` in seconds.
    eps : float
        Kept for compatibility; the epsilon is 1e-8, as at the participant level.
    metadata : dict, optional
        The series' JSON sidecar (``SoftwareFilters``/``HighPass``: not filtered again).

    Returns
    -------
    np.ndarray [T', C] float32
        Empty (0 rows) when the participant level would drop the run (``--min-time`` 100 s).
    """
    from bids_semantoks.extract.prepare import already_filtered, prepare_series

    res = prepare_series(np.asarray(data, dtype=np.float64), tr,
                         {"target_tr": TARGET_TR}, filtered_by=already_filtered(metadata or {}))
    if res.dropped_reason:
        logger.warning("series dropped: %s", res.dropped_reason)
    return res.data.astype(np.float32)


def load_runs_from_derivatives(
    output_dir_or_dataset: Path,
    atlas_names: Sequence[str],
    participant_labels: Sequence[str] | None = None,
    prepare: Prepare | None = None,
) -> list[RunSeries]:
    """Read regional time series written by the participant level (or an XCP-D-like data set).

    Files are found with :func:`bids_semantoks.extract.series.timeseries_files` (pybids:
    ``sub-*/[ses-*/]func/*_atlas-<A>_*timeseries.tsv`` with ``A`` in ``atlas_names``) and read
    with :func:`~bids_semantoks.extract.series.read_series`. Participant-level outputs
    (their sidecar marks them model-ready at TR 2 s) are used exactly as written; any other
    series takes its TR from the JSON sidecar and is converted with ``prepare(data, tr)``.

    Parameters
    ----------
    output_dir_or_dataset : Path
        BIDS derivatives folder.
    atlas_names : list of str
        Atlas labels accepted (the ``atlas-`` entity). Every selected file must have the
        same region columns, in the same order.
    participant_labels : list of str, optional
        Keep only these participants (with or without ``sub-``).
    prepare : callable, optional
        ``(data [T, C] float, tr seconds) -> [T', C] float32`` at TR 2 s, z-scored, for series
        that are not participant outputs. Default: :func:`prepare_timeseries`. Runs that come
        back empty (too short) are skipped with a warning.

    Returns
    -------
    list of RunSeries
        Sorted by file path.
    """
    from bids_semantoks.extract.series import (derivatives_layout, is_model_ready, read_series, read_sidecar,
                                               timeseries_files)

    root = Path(output_dir_or_dataset)
    if not root.is_dir():
        raise MissingInputError(f"{root}: folder not found; pass a BIDS derivatives folder with *_timeseries.tsv")
    wanted = set(atlas_names)
    labels = None if participant_labels is None else [p.removeprefix("sub-") for p in participant_labels]
    files = [f for f in timeseries_files(derivatives_layout(root, labels), labels) if f.entities["atlas"] in wanted]
    runs: list[RunSeries] = []
    header: list[str] | None = None
    first: Path | None = None
    for f in files:
        tsv = Path(f.path)
        values, columns = read_series(tsv)
        if header is None:
            header, first = columns, tsv
        elif columns != header:
            raise DataError(
                f"{tsv}: region columns differ from {first}; select one atlas (atlas_names) per pre-training run"
            )
        meta = read_sidecar(tsv)
        if is_model_ready(meta, TARGET_TR):
            data = values.astype(np.float32)
        else:
            tr = read_tr(tsv.with_suffix(".json"), tsv)
            data = (prepare(values, tr) if prepare is not None
                    else prepare_timeseries(values, tr, metadata=meta))
        if data.shape[0] == 0:
            logger.warning("%s: skipped, too short to prepare", tsv.name)
            continue
        runs.append(RunSeries(subject=str(f.entities["subject"]), run_id=tsv.name.removesuffix("_timeseries.tsv"),
                              data=data))
    if not runs:
        raise NothingSelectedError(
            f"{root}: no *_atlas-<{'|'.join(sorted(wanted))}>_*timeseries.tsv files for the selected participants; "
            "run the participant level first or check --atlas / --participant-label"
        )
    return runs


def select_subjects(subjects: Sequence[str], fraction: float, seed: int, minimum: int = 1) -> list[str]:
    """Seeded subset of ``ceil(fraction * n)`` subjects (at least ``minimum``), sorted.

    The subset is the first ``n`` subjects of one seeded permutation, so with the same seed a
    smaller fraction is nested in a larger one (what a scaling analysis wants).
    """
    unique = sorted(set(subjects))
    if fraction >= 1.0:
        return unique
    n = min(len(unique), max(minimum, int(np.ceil(fraction * len(unique)))))
    rng = np.random.default_rng([seed, 7919])
    return sorted(rng.permutation(np.array(unique, dtype=object))[:n].tolist())


class PretrainData:
    """All runs packed in one array, with per-subject run tables (see module docstring).

    Attributes (tensors, on ``device`` after :meth:`to`)
    ----------------------------------------------------
    series : [sum T, C] float16/float32
    run_offset, run_length : [R] int64
    subject_first_run, subject_n_runs : [S] int64 (runs sorted by subject)
    subjects : list of str (sorted)
    """

    def __init__(self, runs: Sequence[RunSeries], dtype: torch.dtype = torch.float16):
        if not runs:
            raise NothingSelectedError("no runs to pre-train on; select at least one participant with time series")
        channels = {r.data.shape[1] for r in runs}
        if len(channels) != 1:
            raise DataError(f"runs have different region counts {sorted(channels)}; use one atlas for all runs")
        order = sorted(range(len(runs)), key=lambda i: (runs[i].subject, runs[i].run_id))
        runs = [runs[i] for i in order]
        self.subjects = sorted({r.subject for r in runs})
        self.run_ids = [r.run_id for r in runs]
        lengths = np.array([r.data.shape[0] for r in runs], dtype=np.int64)
        if (lengths == 0).any():
            raise DataError(f"run {self.run_ids[int(np.argmin(lengths))]} has no volumes; drop it")
        packed = np.concatenate([np.nan_to_num(np.asarray(r.data, np.float32), nan=0.0) for r in runs], 0)
        self.series = torch.from_numpy(packed).to(dtype)
        self.run_length = torch.from_numpy(lengths)
        self.run_offset = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        subj_of_run = np.searchsorted(np.array(self.subjects), np.array([r.subject for r in runs]))
        counts = np.bincount(subj_of_run, minlength=len(self.subjects)).astype(np.int64)
        self.subject_n_runs = torch.from_numpy(counts)
        self.subject_first_run = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
        n_short = int((lengths < 100).sum())
        if n_short:
            logger.warning("%d of %d runs have fewer than 100 volumes; their crops are zero-padded", n_short, len(runs))

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_channels(self) -> int:
        return int(self.series.shape[1])

    @property
    def device(self) -> torch.device:
        return self.series.device

    def nbytes(self) -> int:
        return self.series.numel() * self.series.element_size()

    def to(self, device: torch.device | str) -> "PretrainData":
        """Move every tensor to ``device`` (in place; returns self)."""
        for key in ("series", "run_length", "run_offset", "subject_n_runs", "subject_first_run"):
            setattr(self, key, getattr(self, key).to(device))
        return self
