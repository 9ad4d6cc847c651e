"""Pre-training data: model-ready runs, read from participant outputs, held compactly in memory.

A :class:`RunSeries` is one run already at TR 2 s and z-scored per region. Missing
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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
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


def _zscore(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    with warnings.catch_warnings():  # all-NaN (missing) regions stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, axis=0, keepdims=True)
        sd = np.nanstd(x, axis=0, keepdims=True)
    return (x - mean) / (sd + eps)


def prepare_timeseries(data: np.ndarray, tr: float, eps: float = 1e-8) -> np.ndarray:
    """Default conversion of a raw regional series to the model's input (TR 2 s, z-scored).

    1. Resample to TR 2 s with :func:`scipy.signal.resample_poly` (polyphase FIR with an
       anti-aliasing low-pass) when ``tr`` differs from 2 s by more than 1 ms; the ratio is
       ``tr / 2`` as a fraction with denominator <= 100 (2.5 s -> up 5, down 4). Before
       resampling each region is demeaned and NaNs set to 0; regions that were entirely
       NaN stay NaN (missing).
    2. z-score every region over the whole run, NaN-aware, ``(x - mean) / (sd + eps)``;
       constant regions (e.g. all-zero ROIs outside the brain mask) become 0.

    Parameters
    ----------
    data : np.ndarray [T, C]
        Raw series, one row per volume.
    tr : float
        Repetition time of ``data`` in seconds.
    eps : float
        Added to the SD (1e-8, as the participant level).

    Returns
    -------
    np.ndarray [T', C] float32
    """
    x = np.asarray(data, dtype=np.float64)
    if abs(tr - TARGET_TR) > 1e-3:
        from scipy.signal import resample_poly

        ratio = Fraction(tr / TARGET_TR).limit_denominator(100)
        missing = np.all(np.isnan(x), axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            x = x - np.nan_to_num(np.nanmean(x, axis=0, keepdims=True))
        x = resample_poly(np.nan_to_num(x), ratio.numerator, ratio.denominator, axis=0)
        x[:, missing] = np.nan
    return _zscore(x, eps).astype(np.float32)


def _entities(name: str) -> dict[str, str]:
    out = {}
    for part in name.split("_"):
        if "-" in part:
            key, _, value = part.partition("-")
            out[key] = value
    return out


def load_runs_from_derivatives(
    output_dir_or_dataset: Path,
    atlas_names: Sequence[str],
    participant_labels: Sequence[str] | None = None,
    prepare: Prepare | None = None,
) -> list[RunSeries]:
    """Read regional time series written by the participant level (or an XCP-D-like data set).

    Finds ``sub-*/[ses-*/]func/*_atlas-<A>_*timeseries.tsv`` with ``A`` in ``atlas_names``
    (e.g. ``sub-01_task-rest_atlas-CC200_timeseries.tsv`` or ``..._desc-<strategy>_timeseries.tsv``),
    reads the header (region names) and values (``n/a`` -> NaN), takes the TR from the JSON
    sidecar (``1 / SamplingFrequency``, else ``RepetitionTime``) and converts each run with
    ``prepare(data, tr)``.

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
        ``(data [T, C] float, tr seconds) -> [T', C] float32`` at TR 2 s, z-scored. The
        default, :func:`prepare_timeseries`, resamples and z-scores; it leaves participant
        outputs (already 2 s and z-scored) unchanged up to rounding.

    Returns
    -------
    list of RunSeries
        Sorted by file path.
    """
    root = Path(output_dir_or_dataset)
    if not root.is_dir():
        raise MissingInputError(f"{root}: folder not found; pass a BIDS derivatives folder with *_timeseries.tsv")
    prepare = prepare or prepare_timeseries
    wanted = set(atlas_names)
    labels = None if participant_labels is None else {p.removeprefix("sub-") for p in participant_labels}
    files = sorted(root.glob("sub-*/func/*_timeseries.tsv")) + sorted(root.glob("sub-*/ses-*/func/*_timeseries.tsv"))
    runs: list[RunSeries] = []
    header: list[str] | None = None
    first: Path | None = None
    for tsv in sorted(files):
        ent = _entities(tsv.name)
        if ent.get("atlas") not in wanted:
            continue
        subject = ent.get("sub", tsv.parts[-3].removeprefix("sub-"))
        if labels is not None and subject not in labels:
            continue
        df = pd.read_csv(tsv, sep="\t", na_values=["n/a"])
        if header is None:
            header, first = list(df.columns), tsv
        elif list(df.columns) != header:
            raise DataError(
                f"{tsv}: region columns differ from {first}; select one atlas (atlas_names) per pre-training run"
            )
        tr = read_tr(tsv.with_suffix(".json"), tsv)
        data = prepare(df.to_numpy(dtype=np.float64), tr)
        runs.append(RunSeries(subject=subject, run_id=tsv.name.removesuffix("_timeseries.tsv"), data=data))
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
