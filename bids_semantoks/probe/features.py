"""Feature sets of the probes: Semantoks embeddings and functional connectomes.

Inputs are found with pybids and read once; a *feature set* then hands the CV
loop the training and test matrices of a fold (:meth:`FeatureSet.fold`), so
that anything fitted across subjects (the tangent-space reference of ``fc``)
sees the training subjects of that fold only.

Choices (documented here because they shape the numbers)
--------------------------------------------------------
* ``semantoks`` uses the subject mean embedding (``cls_avg``, all ``avg_*`` and
  ``cls_*`` columns). A subject with several sessions gets the mean of its
  session means weighted by their ``n_crops``. In the ``crops`` protocol every
  crop of every run is one training sample.
* ``fc`` uses the same time series the embeddings were computed from. Several
  runs of a subject are z-scored per region and **concatenated** (one
  connectome per subject, weighted by run length; this works the same way for
  the correlation and the tangent kinds). Volumes with an ``n/a`` in a region
  that has data are dropped.
* Missing regions: a region is missing for a subject when its column is
  ``n/a`` or constant (e.g. all zero: outside the functional mask). Subjects
  missing more than ``max_missing_roi_fraction`` of the regions are skipped;
  the regions missing in any remaining subject are then removed for everyone
  (the decision uses data availability only, never values or labels). In the
  ABIDE CC200 data this removes CC200_043 (2 subjects lack it): 199 regions.
* The connectome is nilearn's ``ConnectivityMeasure`` (Ledoit-Wolf
  covariance), vectorised without the diagonal (the strict triangle). The
  ``correlation`` kind is a per-subject computation (its ``fit`` learns
  nothing across subjects), so it is computed once; ``tangent`` is fitted on
  the training subjects of every fold.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from bids_semantoks.errors import DataError, MissingInputError, UsageError

LOGGER = logging.getLogger(__name__)

#: Columns of embedding tables that are not features.
NON_FEATURE_COLUMNS = ("n_crops", "crop", "onset")


# --------------------------------------------------------------------------- discovery
@dataclass
class Inputs:
    """Files found per participant label.

    Attributes
    ----------
    embeddings : dict
        Subject mean embedding files (one per session) per label.
    crop_embeddings : dict
        Per-run embedding files (one row per crop) per label.
    timeseries : dict
        Time-series files (one per run) per label.
    model_label, atlas : str or None
    timeseries_root : Path or None
        Where the time series were found.
    """

    embeddings: dict[str, list[Path]] = field(default_factory=dict)
    crop_embeddings: dict[str, list[Path]] = field(default_factory=dict)
    timeseries: dict[str, list[Path]] = field(default_factory=dict)
    model_label: str | None = None
    atlas: str | None = None
    timeseries_root: Path | None = None
    notes: list[str] = field(default_factory=list)


def _layout(root: Path):
    """pybids layout of a derivatives folder, or None when the folder does not exist."""
    from bids_semantoks.extract.series import derivatives_layout

    return derivatives_layout(root)


def _layout_files(layout, suffix: str) -> list:
    """BIDSFile objects of ``*_<suffix>.tsv`` with a subject entity (time series: see
    :func:`bids_semantoks.extract.series.timeseries_files`)."""
    if layout is None:
        return []
    if suffix == "timeseries":
        from bids_semantoks.extract.series import timeseries_files

        return timeseries_files(layout)
    files = layout.get(suffix=suffix, extension=".tsv")
    return [f for f in files if "subject" in f.get_entities()]


def _choose(values: set[str], wanted: str | None, what: str, flag: str, prefer: str | None = None) -> str:
    if wanted is not None:
        if wanted not in values:
            raise UsageError(f"{what} '{wanted}' not found (found: {sorted(values)}); fix {flag}")
        return wanted
    if prefer is not None and prefer in values:
        return prefer
    if len(values) == 1:
        return next(iter(values))
    raise UsageError(f"several {what}s found ({sorted(values)}); choose one with {flag}")


def discover(
    output_dir: Path,
    bids_dir: Path,
    *,
    input_type: str = "fmriprep",
    atlas: str | None = None,
    model_label: str | None = None,
    timeseries_desc: str | None = None,
    participant_labels: list[str] | None = None,
) -> Inputs:
    """Find embeddings and time series with pybids.

    Embeddings and time series are looked for in OUTPUT_DIR (the participant
    level's outputs). When OUTPUT_DIR holds no time series and
    ``input_type == "timeseries"``, XCP-D-style ``*_timeseries.tsv`` files are
    read from BIDS_DIR instead.

    Parameters
    ----------
    output_dir, bids_dir : Path
    input_type : str
        ``fmriprep`` or ``timeseries`` (the CLI's ``--input-type``).
    atlas, model_label, timeseries_desc : str or None
        Selections (see :class:`~.options.GroupOptions`).
    participant_labels : list of str or None
        Restrict to these labels (with or without ``sub-``).

    Returns
    -------
    Inputs
    """
    inputs = Inputs()
    wanted = None
    if participant_labels:
        wanted = {p[4:] if p.startswith("sub-") else p for p in participant_labels}

    layouts = {Path(output_dir): _layout(Path(output_dir))}
    emb_files = _layout_files(layouts[Path(output_dir)], "embedding")
    if wanted is not None:
        emb_files = [f for f in emb_files if f.entities["subject"] in wanted]
    if emb_files:
        models = {f.entities.get("desc") for f in emb_files} - {None}
        if models:
            inputs.model_label = _choose(models, model_label, "model label", "--model-label", "official")
            emb_files = [f for f in emb_files if f.entities.get("desc") == inputs.model_label]
        atlases = {f.entities.get("atlas") for f in emb_files} - {None}
        if atlases:
            inputs.atlas = _choose(atlases, atlas, "atlas", "--atlas")
            emb_files = [f for f in emb_files if f.entities.get("atlas") == inputs.atlas]
        for f in sorted(emb_files, key=lambda f: f.path):
            target = inputs.crop_embeddings if "task" in f.entities else inputs.embeddings
            target.setdefault(f.entities["subject"], []).append(Path(f.path))
    elif model_label is not None:
        inputs.notes.append(f"no embeddings in {output_dir}")

    roots = [Path(output_dir)]
    if input_type == "timeseries":
        roots.append(Path(bids_dir))
    for root in roots:
        if root not in layouts:
            layouts[root] = _layout(root)
        ts_files = _layout_files(layouts[root], "timeseries")
        if wanted is not None:
            ts_files = [f for f in ts_files if f.entities["subject"] in wanted]
        if not ts_files:
            continue
        atlases = {f.entities.get("atlas") for f in ts_files} - {None}
        chosen_atlas = atlas or inputs.atlas
        if atlases:
            chosen = _choose(atlases, chosen_atlas, "time-series atlas", "--atlas")
            ts_files = [f for f in ts_files if f.entities.get("atlas") == chosen]
            inputs.atlas = inputs.atlas or chosen
        descs = {f.entities.get("desc") for f in ts_files}
        if len(descs) > 1 or timeseries_desc is not None:
            desc = _choose(
                {d for d in descs if d is not None}, timeseries_desc, "time-series desc", "timeseries_desc"
            )
            ts_files = [f for f in ts_files if f.entities.get("desc") == desc]
        for f in sorted(ts_files, key=lambda f: f.path):
            inputs.timeseries.setdefault(f.entities["subject"], []).append(Path(f.path))
        inputs.timeseries_root = root
        break
    return inputs


# --------------------------------------------------------------------------- embeddings
def _read_tsv(path: Path) -> pd.DataFrame:
    from bids_semantoks.extract.signal import read_tsv

    return read_tsv(path, "table", na_values=["n/a"], keep_default_na=False)


def _feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in NON_FEATURE_COLUMNS]


def load_subject_embeddings(files: dict[str, list[Path]]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read subject mean embeddings into one table.

    Parameters
    ----------
    files : dict
        Label -> subject mean embedding files (one per session).

    Returns
    -------
    table : pandas.DataFrame
        Indexed by label: ``n_crops`` then the feature columns.
    problems : dict
        Label -> reason for subjects whose files were unusable (skipped).
    """
    rows, problems = {}, {}
    columns: list[str] | None = None
    for label, paths in sorted(files.items()):
        parts = []
        for path in paths:
            frame = _read_tsv(path)
            feats = _feature_columns(frame)
            if columns is None:
                columns = feats
            if feats != columns:
                problems[label] = f"{path.name}: feature columns differ from the other subjects'"
                break
            values = frame[feats].to_numpy(dtype=float)
            if values.shape[0] < 1 or not np.isfinite(values).all():
                problems[label] = f"{path.name}: empty or non-finite embedding"
                break
            weight = frame["n_crops"].to_numpy(dtype=float) if "n_crops" in frame else np.ones(len(frame))
            parts.append((values, weight))
        if label in problems:
            continue
        values = np.concatenate([p[0] for p in parts])
        weight = np.concatenate([p[1] for p in parts])
        weight = np.where(weight > 0, weight, 1.0)
        rows[label] = np.concatenate([[weight.sum()], weight @ values / weight.sum()])
    if not rows:
        return pd.DataFrame(columns=["n_crops"]), problems
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["n_crops", *columns])
    table["n_crops"] = table["n_crops"].astype(int)
    table.index.name = "participant"
    return table, problems


def load_crop_embeddings(files: dict[str, list[Path]]) -> tuple[dict[str, np.ndarray], list[str], dict[str, str]]:
    """Read per-run embeddings: one row per crop.

    Returns
    -------
    crops : dict
        Label -> array (n_crops_total, n_features), all runs stacked.
    columns : list of str
        Feature names.
    problems : dict
        Label -> reason (skipped subjects).
    """
    crops, problems = {}, {}
    columns: list[str] | None = None
    for label, paths in sorted(files.items()):
        blocks = []
        for path in paths:
            frame = _read_tsv(path)
            feats = _feature_columns(frame)
            columns = columns or feats
            if feats != columns:
                problems[label] = f"{path.name}: feature columns differ from the other subjects'"
                break
            block = frame[feats].to_numpy(dtype=float)
            if not np.isfinite(block).all() or block.shape[0] == 0:
                problems[label] = f"{path.name}: empty or non-finite embedding"
                break
            blocks.append(block)
        if label not in problems:
            crops[label] = np.concatenate(blocks)
    return crops, columns or [], problems


def model_metadata(files: dict[str, list[Path]]) -> dict:
    """Model description from the first subject embedding's JSON sidecar."""
    for paths in files.values():
        for path in paths:
            sidecar = path.with_suffix(".json")
            if sidecar.is_file():
                try:
                    meta = json.loads(sidecar.read_text())
                except json.JSONDecodeError:
                    continue
                return {k: v for k, v in meta.items() if k not in ("Sources",)}
    return {}


# --------------------------------------------------------------------------- time series
def load_timeseries(
    paths: list[Path], columns: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read, z-score and concatenate the runs of one subject.

    Parameters
    ----------
    paths : list of Path
        ``*_timeseries.tsv`` files of one subject (header = region names).
    columns : list of str or None
        Region order to enforce (atlas order); None keeps the file's order.

    Returns
    -------
    series : ndarray, shape (n_volumes, n_regions)
        Missing regions are NaN columns.
    missing : ndarray of bool, shape (n_regions,)
        Regions without data (``n/a`` or constant in any run).
    columns : list of str
    """
    from bids_semantoks.extract.series import read_series
    from bids_semantoks.extract.signal import zscore

    blocks, missing = [], None
    for path in paths:
        values, columns = read_series(path, columns)
        finite = np.isfinite(values)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            std = np.nanstd(np.where(finite, values, np.nan), axis=0)
        run_missing = (finite.sum(axis=0) < 3) | ~(std > 1e-12)
        missing = run_missing if missing is None else missing | run_missing
        blocks.append(zscore(values))
    series = np.concatenate(blocks)
    series[:, missing] = np.nan
    keep_rows = np.isfinite(series[:, ~missing]).all(axis=1)
    return series[keep_rows], missing, list(columns)


@dataclass
class TimeSeriesSet:
    """Time series of many subjects with a common region mask.

    Attributes
    ----------
    series : dict
        Label -> array (n_volumes, n_kept_regions).
    regions : list of str
        Kept regions.
    masked_regions : list of str
        Regions removed for everyone.
    problems : dict
        Label -> reason (skipped subjects).
    """

    series: dict[str, np.ndarray]
    regions: list[str]
    masked_regions: list[str]
    problems: dict[str, str]


def load_timeseries_set(
    files: dict[str, list[Path]],
    *,
    columns: list[str] | None = None,
    max_missing_fraction: float = 0.1,
    min_volumes: int = 20,
) -> TimeSeriesSet:
    """Load every subject's series and mask the regions missing anywhere.

    See the module docstring for the masking rule.
    """
    loaded, problems = {}, {}
    for label, paths in sorted(files.items()):
        try:
            series, missing, cols = load_timeseries(paths, columns)
        except DataError as exc:
            problems[label] = str(exc)
            continue
        if columns is None:
            columns = cols
        if missing.mean() > max_missing_fraction:
            problems[label] = (
                f"{int(missing.sum())} of {missing.size} regions without data "
                f"(more than {max_missing_fraction:.0%})"
            )
            continue
        if series.shape[0] < min_volumes:
            problems[label] = f"only {series.shape[0]} usable volumes (need {min_volumes})"
            continue
        loaded[label] = (series, missing)
    if not loaded:
        return TimeSeriesSet({}, list(columns or []), [], problems)
    union = np.zeros(len(columns), dtype=bool)
    for _, missing in loaded.values():
        union |= missing
    keep = ~union
    return TimeSeriesSet(
        series={label: s[:, keep] for label, (s, _) in loaded.items()},
        regions=[c for c, k in zip(columns, keep) if k],
        masked_regions=[c for c, k in zip(columns, keep) if not k],
        problems=problems,
    )


# --------------------------------------------------------------------------- feature sets
@dataclass
class FoldFeatures:
    """Matrices of one fold.

    ``rows_train``/``rows_test`` give, for each row, the position of its subject
    in the feature set's subject list (several rows per subject in the crops
    protocol). ``fitted`` holds what was fitted on the training subjects (e.g.
    the tangent ``ConnectivityMeasure``), or None.
    """

    X_train: np.ndarray
    X_test: np.ndarray
    rows_train: np.ndarray
    rows_test: np.ndarray
    fitted: object = None


class FeatureSet:
    """Base class: features of an ordered list of subjects."""

    name: str = ""
    labels: list[str]

    def subset(self, labels: list[str]) -> "FeatureSet":  # pragma: no cover - interface
        raise NotImplementedError

    def fold(self, train: np.ndarray, test: np.ndarray) -> FoldFeatures:  # pragma: no cover
        raise NotImplementedError

    def subject_matrix(self) -> np.ndarray:  # pragma: no cover - interface
        """One row per subject (for the 2-D map)."""
        raise NotImplementedError


class StaticFeatures(FeatureSet):
    """Features that need no fitting: embeddings (subject means or crops).

    Parameters
    ----------
    name : str
    blocks : dict
        Label -> array (n_rows, n_features); one row per subject for the
        subject mean, one row per crop in the crops protocol.
    labels : list of str or None
        Subject order (default: sorted keys).
    """

    def __init__(self, name: str, blocks: dict[str, np.ndarray], labels: list[str] | None = None):
        self.name = name
        self.blocks = blocks
        self.labels = list(labels) if labels is not None else sorted(blocks)
        mats = [np.atleast_2d(blocks[lab]) for lab in self.labels]
        self._X = np.concatenate(mats) if mats else np.zeros((0, 0))
        self._rows = np.repeat(np.arange(len(self.labels)), [m.shape[0] for m in mats])

    def subset(self, labels: list[str]) -> "StaticFeatures":
        return StaticFeatures(self.name, self.blocks, labels)

    def fold(self, train: np.ndarray, test: np.ndarray) -> FoldFeatures:
        in_train = np.isin(self._rows, train)
        in_test = np.isin(self._rows, test)
        return FoldFeatures(self._X[in_train], self._X[in_test], self._rows[in_train], self._rows[in_test])

    def subject_matrix(self) -> np.ndarray:
        return np.stack([np.atleast_2d(self.blocks[lab]).mean(axis=0) for lab in self.labels])

    @property
    def n_features(self) -> int:
        return self._X.shape[1]


def _measure(kind: str):
    from nilearn.connectome import ConnectivityMeasure

    return ConnectivityMeasure(kind=kind, vectorize=True, discard_diagonal=True, standardize=False)


class ConnectomeFeatures(FeatureSet):
    """Upper triangle of each subject's connectome (nilearn ``ConnectivityMeasure``).

    Parameters
    ----------
    series : dict
        Label -> time series (n_volumes, n_regions), common region set.
    kind : {"correlation", "tangent"}
    labels : list of str or None
    """

    name = "fc"

    def __init__(self, series: dict[str, np.ndarray], kind: str = "correlation", labels=None, _cache=None):
        if kind not in ("correlation", "tangent"):
            raise UsageError(f"--fc-kind must be 'correlation' or 'tangent', not '{kind}'")
        self.series = series
        self.kind = kind
        self.labels = list(labels) if labels is not None else sorted(series)
        self._cache = _cache if _cache is not None else {}
        if kind == "correlation":
            todo = [lab for lab in self.labels if lab not in self._cache]
            if todo:
                with threadpool_limits(limits=1):  # 200 x 200 problems: threads only add overhead
                    vecs = _measure("correlation").fit_transform([series[lab] for lab in todo])
                self._cache.update(zip(todo, vecs))

    def subset(self, labels: list[str]) -> "ConnectomeFeatures":
        return ConnectomeFeatures(self.series, self.kind, labels, _cache=self._cache)

    def _list(self, idx: np.ndarray) -> list[np.ndarray]:
        return [self.series[self.labels[i]] for i in idx]

    def fold(self, train: np.ndarray, test: np.ndarray) -> FoldFeatures:
        train, test = np.asarray(train), np.asarray(test)
        if self.kind == "correlation":
            X_train = np.stack([self._cache[self.labels[i]] for i in train])
            X_test = np.stack([self._cache[self.labels[i]] for i in test])
            return FoldFeatures(X_train, X_test, train, test)
        measure = _measure("tangent")
        X_train = measure.fit_transform(self._list(train))
        X_test = measure.transform(self._list(test))
        return FoldFeatures(X_train, X_test, train, test, fitted=measure)

    def subject_matrix(self) -> np.ndarray:
        if self.kind == "correlation":
            return np.stack([self._cache[lab] for lab in self.labels])
        return _measure("tangent").fit_transform(self._list(np.arange(len(self.labels))))

    @property
    def n_features(self) -> int:
        first = next(iter(self.series.values()))
        r = first.shape[1]
        return r * (r - 1) // 2


def require(condition: bool, message: str) -> None:
    """Raise :class:`MissingInputError` with ``message`` unless ``condition``."""
    if not condition:
        raise MissingInputError(message)
