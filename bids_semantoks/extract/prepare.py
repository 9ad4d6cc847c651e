"""The preparation of one run: the single path from an input run to a model-ready series.

:func:`prepare_run` is what the participant level does for every run (it only writes the
result); :func:`prepare_series` is the part that works on a regional series and is also
what pre-training applies to series that are not model-ready yet. Nothing else in the
package resamples or z-scores model inputs.

Order of operations
-------------------
1. Regional signals: parcellate the fMRIPrep BOLD (:func:`~.parcellate.extract_regions`)
   or read an XCP-D-style ``*_timeseries.tsv`` (:func:`~.signal.read_timeseries_tsv`).
   XCP-D removes high-motion volumes before writing its series and marks them in
   ``<run>_outliers.tsv`` (column ``framewise_displacement``: 1 = removed); when that file
   is present the rows are put back on the acquisition grid at their true times, and the
   removed volumes are treated as censored (counted in ``VolumesRemovedUpstream``).
2. Confounds and censoring mask (fMRIPrep input; :func:`~.signal.load_confounds`).
3. Keep or drop, from the censoring mask alone: ``--min-time`` on the retained duration at
   the target TR, at least 2 samples, and enough volumes for the filters; a run that fails
   comes back with ``dropped_reason`` (the participant level logs it and writes nothing).
4. Clean, resample, censor and z-score (:func:`~.signal.clean_signals`). A series whose
   sidecar records a filter already (XCP-D's ``SoftwareFilters``, or our own
   ``HighPass``/``LowPass``) is not band-passed a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bids_semantoks.errors import DataError

LOGGER = logging.getLogger("bids_semantoks")

__all__ = ["PreparedRun", "prepare_run", "prepare_series", "outliers_file", "already_filtered",
           "DEFAULT_PREPARATION"]

#: Preparation settings of the participant level's defaults (``ParticipantSettings``).
DEFAULT_PREPARATION: dict[str, Any] = {
    "lower_bpf": 0.01, "upper_bpf": 0.1, "target_tr": 2.0, "min_time": 100.0, "detrend": True,
}


@dataclass
class PreparedRun:
    """A model-ready series and its sidecar (without ``SettingsHash``/``SoftwareVersion``).

    Attributes
    ----------
    data : ndarray, shape (T, R)
        z-scored series at the target TR, NaN for regions without data; empty when dropped.
    names : tuple of str
        Region names (columns), in atlas order.
    sidecar : dict
        What was done (see the README's time-series sidecar fields).
    dropped_reason : str or None
        Why the run yields no series (``--min-time``, too short to filter, all censored).
    """

    data: np.ndarray
    names: tuple[str, ...]
    sidecar: dict[str, Any] = field(default_factory=dict)
    dropped_reason: str | None = None


def already_filtered(meta: Mapping[str, Any]) -> str | None:
    """Name of the sidecar field that says a series is band-passed already, or None."""
    filters = meta.get("SoftwareFilters")
    if isinstance(filters, Mapping) and any("pass" in str(k).lower() for k in filters):
        return "SoftwareFilters"
    for key in ("HighPass", "LowPass"):
        if meta.get(key) not in (None, 0, False):
            return key
    return None


def outliers_file(series: Path, run_name: str) -> Path | None:
    """XCP-D's ``<run>_outliers.tsv`` beside a time series, when present.

    XCP-D names it with the run's source entities only (``sub-01_ses-1_task-rest_run-1``),
    without space or atlas.
    """
    candidate = Path(series).with_name(f"{run_name}_outliers.tsv")
    return candidate if candidate.is_file() else None


def _read_outliers(path: Path, n_rows: int, series: Path) -> np.ndarray:
    """Boolean mask of the volumes XCP-D removed (True = removed), one per acquired volume."""
    from bids_semantoks.extract.signal import read_tsv

    frame = read_tsv(path, "outliers TSV", na_values=["n/a"])
    if "framewise_displacement" not in frame.columns:
        raise DataError(f"{path}: no 'framewise_displacement' column (XCP-D's outlier flags); regenerate it")
    flags = frame["framewise_displacement"].to_numpy(dtype=float)
    if not np.isin(flags, (0, 1)).all():
        raise DataError(f"{path}: 'framewise_displacement' must be 0 (kept) or 1 (removed) on every line")
    removed = flags.astype(bool)
    if n_rows not in (len(removed), int((~removed).sum())):
        raise DataError(
            f"{series}: {n_rows} rows, but {path.name} lists {len(removed)} volumes of which "
            f"{int(removed.sum())} removed; the outliers file belongs to another run"
        )
    return removed


def prepare_series(
    signals: np.ndarray,
    tr: float,
    settings: Mapping[str, Any] | None = None,
    *,
    confounds=None,
    sample_mask: np.ndarray | None = None,
    detrend: bool | None = None,
    filtered_by: str | None = None,
    source: str = "this run",
):
    """Clean, resample to the target TR, censor and z-score a regional series.

    Parameters
    ----------
    signals : ndarray, shape (T, R)
        One row per acquired volume (censored rows may hold anything).
    tr : float
        Acquisition repetition time (s).
    settings : mapping, optional
        ``lower_bpf``, ``upper_bpf``, ``target_tr``, ``min_time`` (and ``detrend``);
        missing keys take :data:`DEFAULT_PREPARATION`.
    confounds, sample_mask :
        As for :func:`~.signal.clean_signals`.
    detrend : bool, optional
        Overrides ``settings["detrend"]``.
    filtered_by : str, optional
        Sidecar field saying the series is band-passed already: the band-pass is skipped.
    source : str
        Name of the run, for messages.

    Returns
    -------
    CleanResult
    """
    from bids_semantoks.extract.signal import clean_signals

    st = {**DEFAULT_PREPARATION, **dict(settings or {})}
    lower, upper = (0.0, 0.0) if filtered_by else (st["lower_bpf"], st["upper_bpf"])
    return clean_signals(
        signals, tr, confounds=confounds, sample_mask=sample_mask,
        detrend=st["detrend"] if detrend is None else detrend,
        lower_bpf=lower, upper_bpf=upper, target_tr=st["target_tr"], min_time=st["min_time"], source=source,
    )


def _source(bids_dir: str | None, path: Path | None) -> str | None:
    if path is None:
        return None
    if bids_dir is None:
        return str(path)
    try:
        return "bids:input:" + str(Path(path).resolve().relative_to(Path(bids_dir).resolve()))
    except ValueError:
        return str(path)


def prepare_run(run, settings: Mapping[str, Any], atlas: Mapping[str, Any], bids_dir: str | None = None) -> PreparedRun:
    """Prepare one run: regional signals -> model-ready series and its sidecar.

    Parameters
    ----------
    run : bids_semantoks.bids.layout.RunInputs
        The run (BOLD or time-series file, TR, confounds, mask, sidecar metadata).
    settings : mapping
        Participant settings: ``input_type``, ``denoise_strategy``, ``fd_thresh``,
        ``std_dvars_thresh``, ``min_coverage``, ``lower_bpf``, ``upper_bpf``, ``target_tr``,
        ``min_time``.
    atlas : mapping
        ``names``, ``label``, and for fMRIPrep input ``dseg`` and ``indices`` (``sources``
        optional).
    bids_dir : str, optional
        Input dataset root, to write ``Sources`` as BIDS URIs.

    Returns
    -------
    PreparedRun

    Raises
    ------
    DataError, MissingInputError, UsageError
        Bad input files or an impossible option for this run (one line naming the file).
    """
    from bids_semantoks.extract.denoise import load_strategy
    from bids_semantoks.extract.signal import load_confounds, read_timeseries_tsv

    st = dict(settings)
    names = tuple(atlas["names"])
    coverage = None
    missing_cov: list[str] = []
    removed_upstream = None
    outliers = None
    filtered_by = None
    sample_mask = None
    conf, mean_fd = None, None
    if st["input_type"] == "timeseries":
        signals = read_timeseries_tsv(run.bold, names)
        detrend = True  # already denoised upstream; a linear detrend is harmless and removes drifts
        filtered_by = already_filtered(getattr(run, "metadata", None) or {})
        if filtered_by and st.get("force_bandpass"):
            LOGGER.info("%s: filtered upstream (%s); band-passed again (--force-bandpass)", run.bold.name, filtered_by)
            filtered_by = None
        outliers = outliers_file(run.bold, run.name)
        if outliers is not None:
            removed = _read_outliers(outliers, signals.shape[0], run.bold)
            removed_upstream = int(removed.sum())
            if signals.shape[0] != len(removed):  # censored rows: back on the acquisition grid
                full = np.full((len(removed), signals.shape[1]), np.nan)
                full[~removed] = signals
                signals = full
            if removed.any():
                sample_mask = np.flatnonzero(~removed)
    else:
        import nibabel as nib

        from bids_semantoks.extract.parcellate import extract_regions

        try:
            bold_img = nib.load(str(run.bold))
        except Exception as exc:
            raise DataError(f"{run.bold}: cannot read NIfTI ({exc}); the file is corrupt, rerun fMRIPrep") from exc
        if bold_img.ndim != 4:
            raise DataError(f"{run.bold}: expected a 4-D BOLD series, got {bold_img.ndim}-D; check the file")
        n_vol = bold_img.shape[3]
        check_header_tr(run, bold_img)
        from bids_semantoks.atlas.templates import check_bold_grid

        grid = check_bold_grid(bold_img, run.space, run.res, run.bold)  # TemplateFlow's grid
        if grid.message:
            LOGGER.warning("%s", grid.message)
        if run.confounds is not None:
            conf, sample_mask, mean_fd = load_confounds(
                run.bold, run.confounds, st["denoise_strategy"], st["fd_thresh"], st["std_dvars_thresh"], n_vol
            )
        mask_img = str(run.mask) if run.mask else None  # read (and checked) by extract_regions
        signals, coverage, missing_idx = extract_regions(
            bold_img, nib.load(atlas["dseg"]), list(atlas["indices"]), mask_img=mask_img,
            min_coverage=st["min_coverage"],
        )
        missing_cov = [names[i] for i in missing_idx]
        detrend = bool(load_strategy(st["denoise_strategy"])["detrend"])
    res = prepare_series(
        signals, run.tr, st, confounds=conf, sample_mask=sample_mask, detrend=detrend, filtered_by=filtered_by,
        source=str(run.bold),
    )
    if res.dropped_reason:
        return PreparedRun(np.zeros((0, len(names))), names, {}, res.dropped_reason)
    all_nan = ~np.isfinite(res.data).all(axis=0)
    if all_nan.all():
        raise DataError(
            f"{run.bold}: no region has a usable signal (the data are empty, constant or outside the brain mask); "
            "check the file, or rerun fMRIPrep for this run"
        )
    sidecar = {
        "Description": "Regional mean BOLD series, denoised, band-passed, resampled to the model TR and "
        "z-scored per region, in the channel order of the atlas.",
        "SamplingFrequency": 1.0 / st["target_tr"],
        "RepetitionTime": st["target_tr"],
        "OriginalRepetitionTime": run.tr,
        "Sources": [s for s in (_source(bids_dir, run.bold), _source(bids_dir, run.confounds),
                                _source(bids_dir, run.mask), _source(bids_dir, outliers)) if s],
        "Atlas": atlas["label"],
        "AtlasSources": atlas.get("sources", []),
        "DenoiseStrategy": st["denoise_strategy"],
        "ConfoundsUsed": res.confounds_used,
        "Detrend": detrend,
        # the filters actually applied (None: off, not applicable at this TR, or done upstream)
        "HighPass": res.high_pass,
        "LowPass": res.low_pass,
        "AntiAliasLowPass": res.anti_alias,
        "BandPassSkipped": (f"the input's sidecar records a filter ({filtered_by}); not filtered again"
                            if filtered_by else None),
        "FDThreshold": st["fd_thresh"] if load_strategy(st["denoise_strategy"])["censoring"] else None,
        "NumberOfVolumes": res.n_volumes_in,
        "VolumesCensored": res.n_censored_in,
        # 0-based acquisition volumes left out before cleaning (censored here or removed upstream)
        "CensoredVolumes": ([] if sample_mask is None else
                            sorted(set(range(res.n_volumes_in)) - {int(i) for i in np.asarray(sample_mask)})),
        "VolumesRemovedUpstream": removed_upstream,
        "SamplesCensoredAtTargetTR": res.n_censored_out,
        "NumberOfSamples": int(res.data.shape[0]),
        # [start, stop) rows that are contiguous in time: a crop must not span two of them
        "ContiguousSegments": res.segments,
        "MeanFD": mean_fd,
        "CoverageThreshold": st["min_coverage"],
        "Coverage": None if coverage is None else {n: round(float(c), 4) for n, c in zip(names, coverage)},
        "MissingRegions": [n for n, m in zip(names, all_nan) if m],
        "LowCoverageRegions": missing_cov,
        "ModelReady": True,
    }
    return PreparedRun(res.data, names, sidecar)


def check_header_tr(run, img) -> None:
    """The NIfTI header's TR (when set) must agree with the sidecar's, within 1 %."""
    zooms = img.header.get_zooms()
    units = img.header.get_xyzt_units()[1] if hasattr(img.header, "get_xyzt_units") else "sec"
    if len(zooms) < 4 or not zooms[3]:
        return
    hdr_tr = float(zooms[3]) / (1000.0 if units == "msec" else 1.0)
    if hdr_tr > 0 and abs(hdr_tr - run.tr) > 0.01 * run.tr:
        raise DataError(
            f"{run.bold}: RepetitionTime {run.tr} s in the sidecar contradicts the NIfTI header ({hdr_tr:g} s); "
            "fix the sidecar or the header"
        )
