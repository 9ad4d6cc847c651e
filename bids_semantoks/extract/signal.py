"""From regional signals at the acquisition TR to model-ready series.

Order of operations (each step's reason in brackets):

1. **Confounds and censoring mask** from fMRIPrep's confounds with nilearn's
   ``load_confounds_strategy`` [the library users already trust].
2. **Clean** with :func:`nilearn.signal.clean` at the acquisition TR: detrend,
   confound regression and Butterworth band-pass in one call, with nilearn's
   censoring semantics: censored volumes are excluded from the confound fit and
   interpolated before filtering, so a motion spike is not smeared over its
   neighbours by the filter [reference semantics of the issue].
3. **Resample to the target TR** (2 s) on the continuous cleaned series, with the
   censored volumes filled by cubic-spline interpolation between retained ones.
   When downsampling without a low-pass below the new Nyquist, an anti-aliasing
   Butterworth low-pass at 0.8 x the target Nyquist is applied first. A target
   sample is censored when the interval between its two bracketing source volumes
   contains a censored volume [resampling needs a uniform grid; censoring must
   survive it].
4. **Drop censored samples** and apply ``--min-time`` to the retained duration.
5. **z-score** each region over the retained samples (NaN-aware, epsilon 1e-8)
   [MODEL_SPEC section 1: whole-run z-scoring before cropping].

Regions without data (NaN columns) are carried through as NaN and written as n/a.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.interpolate import CubicSpline
from scipy.signal import butter, sosfiltfilt

from bids_semantoks.errors import DataError, MissingInputError

EPS = 1e-8


@dataclass
class CleanResult:
    """Model-ready series and what was done to produce it."""

    data: np.ndarray  # [T_target_retained, R], z-scored, NaN for missing regions
    tr: float
    n_volumes_in: int
    n_censored_in: int
    n_samples_out: int
    n_censored_out: int
    confounds_used: list[str] = field(default_factory=list)
    mean_fd: float | None = None
    dropped_reason: str | None = None


def load_confounds(bold: Path, confounds: Path, strategy: str, fd_thresh: float, std_dvars_thresh: float, n_volumes: int):
    """Confound matrix and censoring mask for one fMRIPrep run.

    Returns
    -------
    confounds : pandas.DataFrame or None
    sample_mask : ndarray of int or None
        Indices of retained volumes (nilearn convention); None keeps all.
    mean_fd : float or None
    """
    if strategy == "none":
        mean_fd = _mean_fd(confounds) if confounds is not None else None
        return None, None, mean_fd
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    try:
        frame = pd.read_csv(confounds, sep="\t")
    except Exception as exc:
        raise DataError(f"{confounds}: cannot read confounds TSV ({exc}); regenerate it with fMRIPrep") from exc
    if len(frame) != n_volumes:
        raise DataError(
            f"{confounds}: {len(frame)} rows but the BOLD run has {n_volumes} volumes; "
            "the confounds file belongs to another run"
        )
    for col in frame.columns:  # "n/a" is already NaN: anything else non-numeric is damage
        bad = np.flatnonzero(pd.to_numeric(frame[col], errors="coerce").isna() & frame[col].notna())
        if not pd.api.types.is_numeric_dtype(frame[col]) and bad.size:
            row = int(bad[0])
            raise DataError(
                f"{confounds}: non-numeric value {frame[col].iloc[row]!r} in column '{col}' (line {row + 2}); "
                "fix the file or regenerate it with fMRIPrep"
            )
    kwargs: dict[str, Any] = {}
    if strategy == "scrubbing":
        kwargs = {"fd_threshold": fd_thresh, "std_dvars_threshold": std_dvars_thresh}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            conf, sample_mask = load_confounds_strategy(str(bold), denoise_strategy=strategy, **kwargs)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{confounds}: unusable for --denoise-strategy {strategy} ({msg}); "
            "check the file or choose another strategy"
        ) from exc
    kept = conf if conf is None or sample_mask is None else conf.iloc[np.asarray(sample_mask, dtype=int)]
    if kept is not None and not np.isfinite(kept.to_numpy(dtype=float)).all():  # (all censored: NaN, dropped later)
        raise DataError(f"{confounds}: non-numeric or infinite values in the selected confounds; fix the file")
    return conf, sample_mask, _mean_fd(confounds)


def _mean_fd(confounds: Path) -> float | None:
    try:
        fd = pd.read_csv(confounds, sep="\t", usecols=["framewise_displacement"])["framewise_displacement"]
    except (ValueError, KeyError, OSError):
        return None
    fd = pd.to_numeric(fd, errors="coerce")
    return float(np.nanmean(fd)) if fd.notna().any() else None


def clean_signals(
    signals: np.ndarray,
    tr: float,
    *,
    confounds: pd.DataFrame | None = None,
    sample_mask: np.ndarray | None = None,
    detrend: bool = True,
    lower_bpf: float = 0.01,
    upper_bpf: float = 0.1,
    target_tr: float = 2.0,
    min_time: float = 0.0,
) -> CleanResult:
    """Clean, resample to ``target_tr``, censor and z-score regional signals.

    Parameters
    ----------
    signals : ndarray, shape (T, R)
        Regional means at the acquisition TR; NaN columns are regions without data.
    tr : float
        Acquisition repetition time (s).
    confounds : DataFrame, optional
        Confound regressors, one row per volume.
    sample_mask : ndarray of int, optional
        Indices of retained (uncensored) volumes.
    detrend : bool
        Remove linear trends.
    lower_bpf, upper_bpf : float
        Band-pass edges in Hz; 0 disables a side. An edge at or above the Nyquist
        frequency of the acquisition is ignored (with no error: nothing to remove).
    target_tr : float
        Output sampling interval (s).
    min_time : float
        Minimum retained duration (s); below it the result has ``dropped_reason`` set.

    Returns
    -------
    CleanResult
    """
    from nilearn.signal import clean

    signals = np.asarray(signals, dtype=np.float64)
    n_vol, n_reg = signals.shape
    valid = np.isfinite(signals).all(axis=0)
    valid[valid] = signals[:, valid].std(axis=0) > 0
    retained = np.ones(n_vol, dtype=bool)
    if sample_mask is not None:
        retained[:] = False
        retained[np.asarray(sample_mask, dtype=int)] = True
    nyquist = 0.5 / tr
    high_pass = lower_bpf if 0 < lower_bpf < nyquist else None
    low_pass = upper_bpf if 0 < upper_bpf < nyquist else None
    out_full = np.full((n_vol, n_reg), np.nan)
    n_ret = int(retained.sum())
    if n_ret < 3:
        return _dropped(n_vol, n_reg, tr, target_tr, retained, confounds, "fewer than 3 volumes left after censoring")
    if valid.any():
        x = signals[:, valid]
        conf = None if confounds is None else confounds.to_numpy(dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            cleaned = clean(
                x,
                detrend=detrend,
                standardize=None,
                confounds=conf,
                sample_mask=np.flatnonzero(retained) if sample_mask is not None else None,
                filter="butterworth" if (high_pass or low_pass) else False,
                low_pass=low_pass,
                high_pass=high_pass,
                t_r=tr,
            )
        cont = np.empty((n_vol, x.shape[1]))
        cont[retained] = cleaned
        if (~retained).any():
            t = np.arange(n_vol) * tr
            cont[~retained] = CubicSpline(t[retained], cleaned, axis=0)(t[~retained])
        out_full[:, valid] = cont
    data, keep = resample_to_tr(out_full, tr, target_tr, retained, low_pass)
    n_out = data.shape[0]
    data = data[keep]
    retained_time = data.shape[0] * target_tr
    result = CleanResult(
        data=zscore(data),
        tr=target_tr,
        n_volumes_in=n_vol,
        n_censored_in=int(n_vol - n_ret),
        n_samples_out=n_out,
        n_censored_out=int(n_out - keep.sum()),
        confounds_used=[] if confounds is None else list(confounds.columns),
    )
    if retained_time < min_time or data.shape[0] < 2:
        result.dropped_reason = (
            f"{retained_time:.0f} s retained after censoring, below --min-time {min_time:g} s"
        )
    return result


def _dropped(n_vol, n_reg, tr, target_tr, retained, confounds, reason) -> CleanResult:
    return CleanResult(
        data=np.zeros((0, n_reg)), tr=target_tr, n_volumes_in=n_vol, n_censored_in=int((~retained).sum()),
        n_samples_out=0, n_censored_out=0,
        confounds_used=[] if confounds is None else list(confounds.columns), dropped_reason=reason,
    )


def resample_to_tr(
    data: np.ndarray, tr: float, target_tr: float, retained: np.ndarray | None = None, low_pass: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Resample continuous series from ``tr`` to ``target_tr``.

    Returns the resampled data ``[T', R]`` and a boolean ``keep`` mask of target samples
    not touched by censored source volumes. Identity when the TRs match.
    """
    n_vol = data.shape[0]
    if retained is None:
        retained = np.ones(n_vol, dtype=bool)
    if abs(tr - target_tr) < 1e-6:
        return data.copy(), retained.copy()
    duration = (n_vol - 1) * tr
    n_out = int(np.floor(duration / target_tr + 1e-9)) + 1
    t_in = np.arange(n_vol) * tr
    t_out = np.arange(n_out) * target_tr
    x = data
    target_nyq = 0.5 / target_tr
    if target_tr > tr and (low_pass is None or low_pass > 0.8 * target_nyq):
        finite = np.isfinite(x).all(axis=0)
        if finite.any() and n_vol > 15:
            sos = butter(5, 0.8 * target_nyq, btype="low", fs=1.0 / tr, output="sos")
            x = x.copy()
            x[:, finite] = sosfiltfilt(sos, x[:, finite], axis=0)
    out = np.full((n_out, data.shape[1]), np.nan)
    finite = np.isfinite(x).all(axis=0)
    if finite.any():
        out[:, finite] = CubicSpline(t_in, x[:, finite], axis=0)(t_out)
    left = np.clip(np.searchsorted(t_in, t_out, side="right") - 1, 0, n_vol - 1)
    right = np.clip(left + 1, 0, n_vol - 1)
    exact = np.isclose(t_in[left], t_out)
    keep = retained[left] & (retained[right] | exact)
    return out, keep


def zscore(data: np.ndarray) -> np.ndarray:
    """z-score each column over time (NaN-aware, population sd, epsilon 1e-8)."""
    data = np.asarray(data, dtype=np.float64)
    if data.shape[0] == 0:
        return data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(data, axis=0)
        sd = np.nanstd(data, axis=0)
    return (data - mean) / (sd + EPS)


def read_timeseries_tsv(path: Path, names: tuple[str, ...]) -> np.ndarray:
    """Read an XCP-D-style time-series TSV whose header must match the atlas names.

    Columns are reordered to the atlas order; atlas regions absent from the file and
    ``n/a`` cells become NaN. Columns that are all zero (regions outside the
    participant's mask, e.g. in ABIDE PCP files) are treated as missing.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: time-series file not found")
    try:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a", "NaN", "nan", ""])
    except Exception as exc:
        raise DataError(f"{path}: cannot read time-series TSV ({exc})") from exc
    unknown = [c for c in frame.columns if c not in set(names)]
    present = [n for n in names if n in frame.columns]
    if unknown or not present:
        example = unknown[0] if unknown else frame.columns[0] if len(frame.columns) else "(none)"
        raise DataError(
            f"{path}: column '{example}' is not a region of the atlas ({len(unknown)} unknown columns); "
            "pass the atlas _dseg.tsv that names these columns with --atlas"
        )
    try:
        values = frame.apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: non-numeric values ({exc}); fix the file") from exc
    out = np.full((len(frame), len(names)), np.nan)
    index = {n: i for i, n in enumerate(names)}
    for j, col in enumerate(frame.columns):
        out[:, index[col]] = values[:, j]
    zero = np.nan_to_num(out, nan=0.0).std(axis=0) == 0
    out[:, zero] = np.nan
    out[~np.isfinite(out)] = np.nan
    return out
