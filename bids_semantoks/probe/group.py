"""The group level: find inputs, build cohorts, run the probes, write outputs.

Outputs (in ``OUTPUT_DIR/group/``):

``group_desc-probes_metrics.tsv``
    ``target, features, metric, mean, std, n_subjects, cv, p_value`` (mean
    and sample sd over outer folds; ``p_value`` of the permutation test on the
    primary metric, ``n/a`` when not run).
``group_desc-probes_metrics.json``
    Every setting, the software and model versions, the cohorts, the skipped
    subjects and the inference of each target's task.
``group_desc-probes_predictions.tsv``
    Out-of-fold prediction per subject, target, feature set and fold.
``group_desc-skipped_participants.tsv``
    Who was left out of which target, and why.
``group_embedding.tsv``
    Every subject's mean embedding, one row each (when embeddings exist).
``report.html``
    Self-contained report (:mod:`.report`).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from bids_semantoks.errors import DataError, MissingInputError, NothingSelectedError, OutputError, UsageError
from bids_semantoks.probe import features as feat
from bids_semantoks.probe.cv import outer_cv
from bids_semantoks.probe.evaluate import CVResult, cross_validate, permutation_null, summarise_result
from bids_semantoks.probe.metrics import METRICS, PRIMARY, permutation_p_value
from bids_semantoks.probe.options import GroupOptions
from bids_semantoks.probe.phenotypes import (
    Target,
    clean_column,
    confound_matrix,
    load_phenotypes,
    participant_label,
    prepare_target,
)
from bids_semantoks.probe.probes import LOGISTIC_GRID, RIDGE_GRID

LOGGER = logging.getLogger(__name__)

GROUP_DIR = "group"


@dataclass
class Skips:
    """Participants left out: (label, scope, reason) rows; scope is ``all`` or a target."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, labels, scope: str, reason: str) -> None:
        for label in labels:
            self.rows.append((label, scope, reason))

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=["participant_id", "scope", "reason"])
        frame["participant_id"] = "sub-" + frame["participant_id"]
        return frame.sort_values(["scope", "participant_id"], kind="stable").reset_index(drop=True)


@dataclass
class TargetRun:
    """Cohort and results of one target."""

    target: Target
    labels: list[str]
    y: np.ndarray
    cv_description: str
    groups: np.ndarray | None
    results: list[CVResult]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("bids_semantoks", "scikit-learn", "nilearn", "numpy", "scipy", "pandas", "pybids", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def _load_features(options, inputs: feat.Inputs, wanted: list[str], columns, skips: Skips):
    """Feature sets by name, plus the subject mean embedding table (or None)."""
    sets: dict[str, feat.FeatureSet] = {}
    table = None
    fc_info: dict = {}
    if "semantoks" in wanted:
        table, problems = feat.load_subject_embeddings(inputs.embeddings)
        for label, reason in problems.items():
            skips.add([label], "all", f"unusable embedding: {reason}")
        crops, crop_cols, crop_problems = ({}, [], {})
        if options.semantoks_protocol == "crops" or table.empty:
            crops, crop_cols, crop_problems = feat.load_crop_embeddings(inputs.crop_embeddings)
            for label, reason in crop_problems.items():
                skips.add([label], "all", f"unusable per-run embedding: {reason}")
        if table.empty and crops:  # no subject means written: average the crops
            table = pd.DataFrame({lab: np.concatenate([[len(c)], c.mean(axis=0)]) for lab, c in crops.items()},
                                 index=["n_crops", *crop_cols]).T
            table["n_crops"] = table["n_crops"].astype(int)
        if table.empty:
            raise MissingInputError(
                f"no usable embeddings (desc-{inputs.model_label or '<model>'}) found; run the participant "
                "level first or drop 'semantoks' from --features"
            )
        if options.semantoks_protocol == "crops":
            sets["semantoks"] = feat.StaticFeatures("semantoks", crops)
        else:
            values = table.drop(columns="n_crops").to_numpy(dtype=float)
            sets["semantoks"] = feat.StaticFeatures("semantoks", dict(zip(table.index, values)))
    if "fc" in wanted:
        ts = feat.load_timeseries_set(
            inputs.timeseries, columns=columns, max_missing_fraction=options.max_missing_roi_fraction
        )
        for label, reason in ts.problems.items():
            skips.add([label], "all", f"time series not usable for fc: {reason}")
        if not ts.series:
            raise MissingInputError("no usable time series for --features fc; see the skipped participants")
        sets["fc"] = feat.ConnectomeFeatures(ts.series, options.fc_kind)
        fc_info = {"kind": options.fc_kind, "n_regions": len(ts.regions), "masked_regions": ts.masked_regions,
                   "n_features": sets["fc"].n_features, "runs": "concatenated (z-scored per run)",
                   "source": str(inputs.timeseries_root)}
    return sets, table, fc_info


def _cohort(options, frame, available, target_name, skips):
    """Target, confound design, groups and cohort labels of one target."""
    sub = frame.loc[[lab for lab in available if lab in frame.index]]
    target = prepare_target(sub, target_name, options.target_types.get(target_name), options.sentinel_values)
    for reason, labels in target.missing.items():
        skips.add(labels, target_name, f"target '{target_name}' is {reason}")
    keep = set(target.values.index)
    design = None
    if options.confounds:
        design, missing = confound_matrix(sub, options.confounds, options.sentinel_values)
        for reason, labels in missing.items():
            skips.add([lab for lab in labels if lab in keep], target_name, reason)
        keep &= set(design.index)
    groups = None
    if options.cv_groups:
        g, missing = clean_column(sub[options.cv_groups], options.sentinel_values)
        lost = [lab for lab in missing["n/a"] + missing["sentinel"] if lab in keep]
        skips.add(lost, target_name, f"CV group '{options.cv_groups}' missing")
        keep -= set(lost)
        groups = g
    labels = sorted(keep)
    if len(labels) < 2 * options.cv_folds and options.cv_groups is None:
        raise DataError(f"target '{target_name}': only {len(labels)} participants with every input; "
                        f"need at least {2 * options.cv_folds} for {options.cv_folds}-fold CV")
    y = target.values.loc[labels].to_numpy()
    if target.task == "classification" and len(np.unique(y)) < 2:
        raise DataError(f"target '{target_name}' has a single class among the {len(labels)} participants "
                        "with every input; nothing to classify")
    conf = design.loc[labels].to_numpy(dtype=float) if design is not None else None
    grp = groups.loc[labels].astype(str).to_numpy() if groups is not None else None
    return target, labels, y, conf, grp



def _check_labels(labels: list[str] | None, *folders: Path | None) -> None:
    """``--participant-label`` values must name subjects that have outputs (or inputs, for
    time-series datasets): an unknown label is a selection that matched nothing (18), not a
    missing participant level."""
    if not labels:
        return
    present = sorted({p.name[4:] for f in folders if f is not None and Path(f).is_dir()
                      for p in Path(f).glob("sub-*") if p.is_dir()})
    unknown = [lab for lab in labels if lab not in present]
    if unknown and present:
        shown = ", ".join(present[:20]) + (f", ... ({len(present)} in all)" if len(present) > 20 else "")
        raise NothingSelectedError(
            f"{folders[0]}: participant(s) {', '.join('sub-' + u for u in unknown)} have no participant-level "
            f"outputs; available: {shown}; fix --participant-label"
        )


def run_group(
    options: GroupOptions,
    bids_dir: Path,
    output_dir: Path,
    *,
    input_type: str = "fmriprep",
    atlas_tsv: Path | None = None,
    participant_labels: list[str] | None = None,
) -> int:
    """Run the group level: probes of embeddings and connectomes on phenotypes.

    Parameters
    ----------
    options : GroupOptions
        Every setting (see :class:`~.options.GroupOptions`).
    bids_dir : Path
        BIDS_DIR (raw data, fMRIPrep derivatives, or XCP-D-style time series
        when ``input_type == "timeseries"``).
    output_dir : Path
        OUTPUT_DIR holding the participant level's outputs; results go to
        ``OUTPUT_DIR/group/``.
    input_type : str
        ``fmriprep`` or ``timeseries``.
    atlas_tsv : Path or None
        Atlas ``_dseg.tsv``: its label selects the time series/embeddings and
        its region names order the time-series columns.
    participant_labels : list of str or None
        Restrict the cohort (with or without ``sub-``).

    Returns
    -------
    int
        0 on success.

    Raises
    ------
    UsageError, MissingInputError, DataError, OutputError
        With a one-line message.
    """
    start = time.time()
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    if not options.targets:
        raise UsageError("the group level needs at least one --target COLUMN (a phenotype column)")
    columns = None
    atlas = options.atlas
    if atlas_tsv is not None:
        from bids_semantoks.atlas.table import AtlasTable

        table = AtlasTable.from_tsv(atlas_tsv)
        columns = list(table.names)
        atlas = atlas or table.label

    _check_labels(participant_labels, output_dir, bids_dir if input_type == "timeseries" else None)
    inputs = feat.discover(
        output_dir, bids_dir, input_type=input_type, atlas=atlas, model_label=options.model_label,
        timeseries_desc=options.timeseries_desc, participant_labels=participant_labels,
    )
    available_sets = [n for n, files in (("semantoks", inputs.embeddings or inputs.crop_embeddings),
                                         ("fc", inputs.timeseries)) if files]
    wanted = options.features or available_sets
    if not wanted:
        raise MissingInputError(
            f"no embeddings or time series found in {output_dir}"
            + (f" or {bids_dir}" if input_type == "timeseries" else "")
            + "; run the participant level first"
        )
    for name in wanted:
        if name not in available_sets:
            where = "embeddings (*_embedding.tsv)" if name == "semantoks" else "time series (*_timeseries.tsv)"
            raise MissingInputError(f"--features {name}: no {where} found in {output_dir}; run the participant "
                                    "level first or choose other --features")

    needed = [*options.targets, *options.confounds] + ([options.cv_groups] if options.cv_groups else [])
    bids_pheno = bids_dir if (bids_dir / "participants.tsv").is_file() else None
    phenos = load_phenotypes(needed, raw_dir=options.raw_dir, bids_dir=bids_pheno,
                             phenotypes_file=options.phenotypes)

    skips = Skips()
    sets, emb_table, fc_info = _load_features(options, inputs, wanted, columns, skips)

    if participant_labels:
        universe = {participant_label(p) for p in participant_labels}
    else:
        universe = set(phenos.frame.index) | set(inputs.embeddings) | set(inputs.crop_embeddings) \
            | set(inputs.timeseries)
    already = {row[0] for row in skips.rows}
    available = []
    for label in sorted(universe):
        if label in already:
            continue
        lacking = [n for n, s in sets.items() if label not in s.labels]
        if lacking:
            what = {"semantoks": f"embedding (desc-{inputs.model_label})", "fc": "time series"}
            skips.add([label], "all", "no " + " and no ".join(what[n] for n in lacking) + " found")
        elif label not in phenos.frame.index:
            skips.add([label], "all", "not in the phenotype table(s)")
        else:
            available.append(label)
    if not available:
        raise MissingInputError("no participant has every input (features and phenotypes); "
                                "see the skipped participants in the log")

    runs: list[TargetRun] = []
    for target_name in options.targets:
        target, labels, y, conf, grp = _cohort(options, phenos.frame, available, target_name, skips)
        cv_args = dict(n_folds=options.cv_folds, n_repeats=options.cv_repeats, groups=grp,
                       group_name=options.cv_groups, seed=options.seed)
        try:
            cv = outer_cv(y, target.task, **cv_args)
        except ValueError as exc:
            raise DataError(f"target '{target_name}': {exc}") from exc
        results = []
        for name in wanted:
            fs = sets[name].subset(labels)
            LOGGER.info("probing %s with %s (%d participants, %s)", target_name, name, len(labels), cv.description)
            folds = cross_validate(fs, y, target.task, cv, classes=target.classes or None, confounds=conf,
                                   inner_folds=options.inner_folds, seed=options.seed, n_jobs=options.n_jobs)
            res = summarise_result(CVResult(target_name, name, target.task, target.classes, labels, y, folds,
                                            cv.description))
            if options.n_permutations:
                null = permutation_null(fs, y, target.task, n_permutations=options.n_permutations,
                                        cv_args=cv_args, classes=target.classes or None, confounds=conf,
                                        inner_folds=options.inner_folds, seed=options.seed,
                                        n_jobs=options.n_jobs)
                res.null_scores = null.tolist()
                res.p_value = permutation_p_value(res.summary[PRIMARY[target.task]][0], null)
            results.append(res)
        runs.append(TargetRun(target, labels, y, cv.description, grp, results))

    out = output_dir / GROUP_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the group output folder ({exc.strerror})") from exc
    skipped = skips.frame()
    sidecar = _sidecar(options, bids_dir, output_dir, input_type, inputs, phenos, runs, fc_info, skipped,
                       wanted, time.time() - start)
    try:
        _write_tables(out, runs, emb_table, skipped, sidecar)
        from bids_semantoks.probe.report import write_report

        write_report(out / "report.html", runs=runs, sets=sets, phenotypes=phenos.frame, skipped=skipped,
                     sidecar=sidecar, emb_table=emb_table)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the group outputs ({exc.strerror})") from exc
    LOGGER.info("group level done in %.1f s: %s", time.time() - start, out)
    return 0


def metrics_frame(runs: list[TargetRun], n_permutations: int = 0) -> pd.DataFrame:
    """The metrics table (one row per target, feature set and metric)."""
    rows = []
    for run in runs:
        for res in run.results:
            for metric in METRICS[res.task]:
                mean, std = res.summary[metric]
                p = res.p_value if (n_permutations and metric == PRIMARY[res.task]) else np.nan
                rows.append((res.target, res.features, metric, mean, std, res.n_subjects, res.cv, p))
    return pd.DataFrame(rows, columns=["target", "features", "metric", "mean", "std", "n_subjects", "cv", "p_value"])


def predictions_frame(runs: list[TargetRun]) -> pd.DataFrame:
    """Out-of-fold predictions, one row per subject, target, feature set and fold."""
    all_classes = sorted({c for run in runs for c in run.target.classes})
    frames = []
    for run in runs:
        for res in run.results:
            for f in res.folds:
                part = pd.DataFrame({
                    "participant_id": ["sub-" + res.labels[i] for i in f.test],
                    "target": res.target,
                    "features": res.features,
                    "repeat": f.repeat,
                    "fold": f.fold,
                    "test_group": f.test_group if f.test_group is not None else np.nan,
                    "y_true": res.y[f.test],
                    "y_pred": f.y_pred,
                    "hyperparameter": f.hyperparameter,
                })
                for c in all_classes:
                    part[f"prob_{c}"] = f.proba[:, res.classes.index(c)] if (
                        f.proba is not None and c in res.classes) else np.nan
                frames.append(part)
    return pd.concat(frames, ignore_index=True)


def _write_tables(out: Path, runs, emb_table, skipped: pd.DataFrame, sidecar: dict) -> None:
    n_perm = sidecar["GroupOptions"]["n_permutations"]
    kw = dict(sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    metrics_frame(runs, n_perm).to_csv(out / "group_desc-probes_metrics.tsv", **kw)
    (out / "group_desc-probes_metrics.json").write_text(json.dumps(sidecar, indent=2, default=str) + "\n")
    predictions_frame(runs).to_csv(out / "group_desc-probes_predictions.tsv", **kw)
    skipped.to_csv(out / "group_desc-skipped_participants.tsv", **kw)
    if emb_table is not None and not emb_table.empty:
        table = emb_table.copy()
        table.insert(0, "participant_id", "sub-" + table.index.astype(str))
        table.to_csv(out / "group_embedding.tsv", **{**kw, "float_format": "%.7g"})


def _sidecar(options, bids_dir, output_dir, input_type, inputs, phenos, runs, fc_info, skipped, wanted,
             elapsed) -> dict:
    targets = {}
    for run in runs:
        t = run.target
        info = {"task": t.task, "task_inferred": t.inferred, "n_participants": len(run.labels),
                "n_missing": len(t.missing["n/a"]), "n_sentinel": len(t.missing["sentinel"]), "cv": run.cv_description}
        if t.task == "classification":
            info["classes"] = {c: int(np.sum(run.y == c)) for c in t.classes}
        else:
            info["range"] = [float(np.min(run.y)), float(np.max(run.y))]
        targets[t.name] = info
    return {
        "Description": "Linear probes of Brain-Semantoks embeddings and functional connectivity (group level)",
        "GroupOptions": options.model_dump(mode="json"),
        "BidsDir": str(bids_dir),
        "OutputDir": str(output_dir),
        "InputType": input_type,
        "Features": wanted,
        "Atlas": inputs.atlas,
        "ModelLabel": inputs.model_label,
        "Model": feat.model_metadata(inputs.embeddings or inputs.crop_embeddings),
        "SoftwareVersions": _versions(),
        "PhenotypeSources": phenos.sources,
        "Targets": targets,
        "Probes": {
            "classification": "StandardScaler + LogisticRegression(L2, lbfgs, class_weight=balanced); "
                              f"C = c / n_features, c in {list(np.round(LOGISTIC_GRID, 6))}, "
                              "chosen by inner CV (balanced log-loss)",
            "regression": "StandardScaler + Ridge; alpha = a * n_features, "
                          f"a in {list(np.round(RIDGE_GRID, 6))}, chosen by inner CV (efficient LOO, "
                          "or grouped K-fold when the CV is grouped)",
            "confounds": "OLS on the training rows of each fold (features ~ 1 + confounds), "
                         "residuals for train and test" if options.confounds else None,
            "semantoks_protocol": options.semantoks_protocol,
        },
        "FC": fc_info or None,
        "Notes": phenos.notes + inputs.notes,
        "SkippedParticipants": skipped.to_dict(orient="records"),
        "ElapsedSeconds": round(elapsed, 1),
    }
