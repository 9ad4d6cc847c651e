"""Phenotypes: read, merge and clean the tables that hold targets and confounds.

Sources, merged on ``participant_id`` in this order (a later source wins when
two hold the same column, and the run's notes say so):

1. ``participants.tsv`` of the raw dataset (``--derivatives raw=PATH``, else
   BIDS_DIR when it holds one);
2. ``phenotype/*.tsv`` next to it (only files holding a requested column);
3. ``--phenotypes FILE`` (TSV or CSV).

``participant_id`` may be written with or without ``sub-``. Missing values are
``n/a``, ``NA``, ``nan``, empty cells and the sentinel codes of the options
(``-9999``, ``-999``); each is counted per column for the report.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_semantoks.errors import DataError, MissingInputError, UsageError

#: Cell values read as missing (compared after stripping white space).
NA_TOKENS = frozenset({"", "n/a", "N/A", "NA", "na", "nan", "NaN", "NAN", "null", "None"})

#: Integer-coded numeric columns with at most this many distinct values are
#: inferred to be classification targets (e.g. ``dx`` coded 1/2, a 1-5 rating).
MAX_INTEGER_CLASSES = 5


def participant_label(value: str) -> str:
    """Return the BIDS label of a participant id, without ``sub-``.

    Examples
    --------
    >>> participant_label("sub-01"), participant_label(" 01 ")
    ('01', '01')
    """
    text = str(value).strip()
    return text[4:] if text.startswith("sub-") else text


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a phenotype table keyed by ``participant_id``.

    Parameters
    ----------
    path : str or Path
        ``.tsv`` (tab), ``.csv`` (comma), or any other extension (sniffed).

    Returns
    -------
    pandas.DataFrame
        All cells as stripped strings, indexed by participant label (no
        ``sub-``); the ``participant_id`` column is removed.

    Raises
    ------
    MissingInputError
        The file does not exist.
    DataError
        No ``participant_id`` column, empty ids, or an id listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: phenotype table not found; check the path")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        sep = "\t"
    elif suffix == ".csv":
        sep = ","
    else:
        sample = path.read_text(encoding="utf-8-sig", errors="replace")[:4096]
        try:
            sep = csv.Sniffer().sniff(sample, delimiters="\t,;").delimiter
        except csv.Error:
            sep = "\t"
    try:
        frame = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig"
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be parsed as a {sep!r}-separated table ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if "participant_id" not in frame.columns:
        raise DataError(
            f"{path}: no 'participant_id' column (found {list(frame.columns)[:8]}); "
            "add one with the BIDS subject labels"
        )
    frame = frame.apply(lambda col: col.str.strip())
    labels = frame.pop("participant_id").map(participant_label)
    if (labels == "").any():
        raise DataError(f"{path}: empty participant_id on row(s) {list(np.flatnonzero(labels == '') + 2)}")
    duplicated = sorted(set(labels[labels.duplicated()]))
    if duplicated:
        raise DataError(
            f"{path}: participant_id listed more than once: {', '.join('sub-' + d for d in duplicated[:5])}"
            "; keep one row per participant"
        )
    frame.index = pd.Index(labels, name="participant")
    return frame


@dataclass
class Phenotypes:
    """Merged phenotype table (strings, indexed by participant label)."""

    frame: pd.DataFrame
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def load_phenotypes(
    columns: list[str],
    *,
    raw_dir: Path | None = None,
    bids_dir: Path | None = None,
    phenotypes_file: Path | None = None,
) -> Phenotypes:
    """Find, read and merge the phenotype tables.

    Parameters
    ----------
    columns : list of str
        Columns the run needs (targets, confounds, CV groups). Each must be in
        one of the sources.
    raw_dir : Path or None
        Raw BIDS dataset (``participants.tsv``, ``phenotype/*.tsv``).
    bids_dir : Path or None
        Used instead of ``raw_dir`` when that is None and it holds a
        ``participants.tsv``.
    phenotypes_file : Path or None
        Extra table (``--phenotypes``).

    Returns
    -------
    Phenotypes

    Raises
    ------
    MissingInputError
        No source found.
    UsageError
        A requested column is in no source.
    """
    notes: list[str] = []
    tables: list[tuple[str, pd.DataFrame]] = []
    root = raw_dir if raw_dir is not None else bids_dir
    if raw_dir is not None and not Path(raw_dir).is_dir():
        raise MissingInputError(f"{raw_dir}: raw dataset (--derivatives raw=PATH) not found")
    if root is not None:
        root = Path(root)
        participants = root / "participants.tsv"
        if participants.is_file():
            tables.append((str(participants), read_table(participants)))
        elif raw_dir is not None:
            notes.append(f"{participants} not found")
        for extra in sorted((root / "phenotype").glob("*.tsv")):
            header = extra.read_text(encoding="utf-8-sig").splitlines()[:1]
            header_cols = {c.strip() for c in header[0].split("\t")} if header else set()
            if not header_cols & set(columns):
                continue
            tables.append((str(extra), read_table(extra)))
    if phenotypes_file is not None:
        tables.append((str(phenotypes_file), read_table(phenotypes_file)))
    if not tables:
        raise MissingInputError(
            "no phenotype table: give --phenotypes FILE or --derivatives raw=PATH "
            "(a raw BIDS dataset with participants.tsv)"
        )
    merged = tables[0][1]
    for name, table in tables[1:]:
        clash = [c for c in table.columns if c in merged.columns]
        if clash:
            notes.append(f"columns {clash} of {name} replace those of earlier tables")
            merged = merged.drop(columns=clash)
        merged = merged.join(table, how="outer")
    merged = merged.fillna("")
    missing = [c for c in columns if c not in merged.columns]
    if missing:
        raise UsageError(
            f"phenotype column(s) {missing} not found in {[n for n, _ in tables]}; "
            f"available: {list(merged.columns)}"
        )
    return Phenotypes(frame=merged, sources=[n for n, _ in tables], notes=notes)


def clean_column(values: pd.Series, sentinels: list[float]) -> tuple[pd.Series, dict[str, list[str]]]:
    """Replace missing cells by NaN and say which participant was missing why.

    Parameters
    ----------
    values : pandas.Series of str
        One phenotype column, indexed by participant label.
    sentinels : list of float
        Numeric codes meaning "missing".

    Returns
    -------
    cleaned : pandas.Series
        Float when every remaining cell is a number, else str; NaN where missing.
    missing : dict
        ``{"n/a": [...], "sentinel": [...]}`` participant labels.
    """
    text = values.astype(str).str.strip()
    is_na = text.isin(NA_TOKENS)
    numbers = pd.to_numeric(text.where(~is_na), errors="coerce")
    is_sentinel = numbers.isin([float(s) for s in sentinels]) & ~is_na
    keep = ~(is_na | is_sentinel)
    missing = {
        "n/a": list(values.index[is_na]),
        "sentinel": list(values.index[is_sentinel]),
    }
    if keep.any() and numbers[keep].notna().all():
        return numbers.where(keep), missing
    return text.where(keep), missing


def infer_target_type(values: pd.Series) -> str:
    """Infer ``classification`` or ``regression`` from a cleaned column.

    Non-numeric columns, and integer columns with at most
    :data:`MAX_INTEGER_CLASSES` distinct values, are classification targets;
    other numeric columns are regression targets.
    """
    present = values.dropna()
    if not pd.api.types.is_numeric_dtype(present):
        return "classification"
    distinct = np.unique(present.to_numpy(dtype=float))
    if len(distinct) <= 2:
        return "classification"
    if np.all(np.mod(distinct, 1) == 0) and len(distinct) <= MAX_INTEGER_CLASSES:
        return "classification"
    return "regression"


def _class_label(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


@dataclass
class Target:
    """A cleaned target column.

    Attributes
    ----------
    name : str
    task : {"classification", "regression"}
    values : pandas.Series
        Indexed by participant label, missing participants dropped; str class
        labels (classification) or float (regression).
    inferred : bool
        True when ``task`` was inferred, False when given by the user.
    missing : dict
        Participant labels left out per reason.
    """

    name: str
    task: str
    values: pd.Series
    inferred: bool
    missing: dict[str, list[str]]

    @property
    def classes(self) -> list[str]:
        return sorted(self.values.unique()) if self.task == "classification" else []


def prepare_target(
    frame: pd.DataFrame, name: str, task: str | None, sentinels: list[float]
) -> Target:
    """Clean one target column and check that it can be predicted.

    Parameters
    ----------
    frame : pandas.DataFrame
        Merged phenotype table.
    name : str
        Column.
    task : {"classification", "regression"} or None
        Override; None infers it (:func:`infer_target_type`).
    sentinels : list of float

    Returns
    -------
    Target

    Raises
    ------
    DataError
        Fewer than two classes (classification), a regression target that is
        not numeric, or fewer than 3 usable values.
    """
    cleaned, missing = clean_column(frame[name], sentinels)
    inferred = task is None
    if task is None:
        task = infer_target_type(cleaned)
    present = cleaned.dropna()
    if present.empty:
        raise DataError(
            f"target '{name}' has no value for any selected participant (all {len(cleaned)} missing); "
            "fill the column or choose another --target"
        )
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(present):
            bad = [v for v in present.unique() if pd.isna(pd.to_numeric(v, errors="coerce"))][:3]
            raise DataError(
                f"target '{name}' is not numeric (values such as {bad}); "
                f"use --target-type {name}=classification"
            )
        values = present.astype(float)
    else:
        values = present.map(_class_label).astype(str)
        if values.nunique() < 2:
            raise DataError(
                f"target '{name}' has a single class ({values.unique().tolist()}) among "
                f"{len(values)} participants with a value; nothing to classify"
            )
        counts = values.value_counts()
        if counts.min() < 2:
            raise DataError(
                f"target '{name}': class(es) {counts[counts < 2].index.tolist()} have a single "
                "participant; merge or drop them"
            )
    if len(values) < 3:
        raise DataError(f"target '{name}' has only {len(values)} participants with a value")
    return Target(name=name, task=task, values=values, inferred=inferred, missing=missing)


def confound_matrix(
    frame: pd.DataFrame, columns: list[str], sentinels: list[float]
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Numeric confound design (no intercept) and who lacks a value.

    Numeric columns are used as they are; other columns are one-hot encoded
    (first level dropped). Encoding the categories uses no outcome and no
    feature, so doing it on the whole cohort leaks nothing; the regression
    itself is fitted inside the folds (:class:`~.cv.ConfoundRegressor`).

    Returns
    -------
    design : pandas.DataFrame
        Indexed like ``frame``; rows with a missing confound are dropped.
    missing : dict
        ``{"confound <col>": [labels]}``.
    """
    parts = []
    missing: dict[str, list[str]] = {}
    keep = pd.Series(True, index=frame.index)
    for column in columns:
        cleaned, lost = clean_column(frame[column], sentinels)
        gone = lost["n/a"] + lost["sentinel"]
        if gone:
            missing[f"confound '{column}' missing"] = gone
        keep &= cleaned.notna()
        if pd.api.types.is_numeric_dtype(cleaned):
            parts.append(cleaned.astype(float).rename(column).to_frame())
        else:
            dummies = pd.get_dummies(cleaned, prefix=column, drop_first=True, dtype=float)
            parts.append(dummies)
    if not parts:
        return pd.DataFrame(index=frame.index[keep]), missing
    design = pd.concat(parts, axis=1)
    return design.loc[keep], missing
