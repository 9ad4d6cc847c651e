"""The outer CV loop: fit a probe per fold, predict the held-out subjects.

Every fold builds its matrices from the feature set (:meth:`FeatureSet.fold`,
which fits anything cross-subject on the training subjects only), appends the
confounds as trailing columns, fits :func:`~.probes.make_pipeline` on the
training rows and predicts the test rows. In the crops protocol a subject has
several rows; its prediction is the mean of its rows' probabilities (or
values), and the class with the highest mean probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from bids_semantoks.probe.cv import OuterCV, outer_cv
from bids_semantoks.probe.features import FeatureSet
from bids_semantoks.probe.metrics import PRIMARY, fold_scores, summarise
from bids_semantoks.probe.probes import make_pipeline


@dataclass
class FoldResult:
    """Outcome of one outer fold.

    Attributes
    ----------
    repeat, fold : int
    test_group : str or None
    test : ndarray
        Cohort positions of the test subjects.
    y_pred : ndarray
        Prediction per test subject.
    proba : ndarray or None
        Class probabilities per test subject (columns in ``classes`` order).
    hyperparameter : str
    scores : dict
    pipeline, fitted_features : object or None
        Kept when ``keep_models=True`` (tests, inspection).
    train_pred : ndarray or None
        Predictions of the training rows (``keep_models=True``).
    """

    repeat: int
    fold: int
    test_group: str | None
    test: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray | None
    hyperparameter: str
    scores: dict[str, float]
    pipeline: object = None
    fitted_features: object = None
    train_pred: np.ndarray | None = None


@dataclass
class CVResult:
    """All folds of one (target, feature set)."""

    target: str
    features: str
    task: str
    classes: list[str]
    labels: list[str]
    y: np.ndarray
    folds: list[FoldResult]
    cv: str
    summary: dict[str, tuple[float, float]] = field(default_factory=dict)
    p_value: float = float("nan")
    null_scores: list[float] = field(default_factory=list)

    @property
    def n_subjects(self) -> int:
        return len(self.labels)

    def primary_per_fold(self) -> np.ndarray:
        return np.array([f.scores[PRIMARY[self.task]] for f in self.folds], dtype=float)


def _mean_by_subject(values: np.ndarray, rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mean of ``values`` rows per subject, subjects in ``order``."""
    position = {s: i for i, s in enumerate(order)}
    idx = np.array([position[r] for r in rows])
    shape = (len(order),) + values.shape[1:]
    total = np.zeros(shape)
    np.add.at(total, idx, values)
    counts = np.bincount(idx, minlength=len(order)).reshape((-1,) + (1,) * (values.ndim - 1))
    return total / counts


def _run_fold(features: FeatureSet, y, task, classes, confounds, groups, split, meta,
              inner_folds, seed, keep_models):
    train, test = split
    with threadpool_limits(limits=1):
        ff = features.fold(train, test)
        X_train, X_test = ff.X_train, ff.X_test
        n_conf = 0
        if confounds is not None and confounds.shape[1]:
            n_conf = confounds.shape[1]
            X_train = np.hstack([X_train, confounds[ff.rows_train]])
            X_test = np.hstack([X_test, confounds[ff.rows_test]])
        y_train = y[ff.rows_train]
        if groups is not None:
            inner_groups = groups[ff.rows_train]
        elif len(ff.rows_train) > len(np.unique(ff.rows_train)):
            inner_groups = ff.rows_train  # crops: keep a subject's crops together
        else:
            inner_groups = None
        pipe = make_pipeline(task, n_confounds=n_conf, inner_folds=inner_folds, seed=seed)
        pipe.fit(X_train, y_train, probe__groups=inner_groups)
        if task == "classification":
            raw = pipe.predict_proba(X_test)
            aligned = np.zeros((len(X_test), len(classes)))
            for j, c in enumerate(pipe.classes_):
                aligned[:, classes.index(c)] = raw[:, j]
            proba = _mean_by_subject(aligned, ff.rows_test, test)
            y_pred = np.asarray(classes)[proba.argmax(axis=1)]
        else:
            proba = None
            y_pred = _mean_by_subject(pipe.predict(X_test), ff.rows_test, test)
        scores = fold_scores(task, y[test], y_pred, proba, classes)
        train_pred = pipe.predict(X_train) if keep_models else None
    repeat, fold, test_group = meta
    return FoldResult(
        repeat=repeat, fold=fold, test_group=test_group, test=np.asarray(test), y_pred=y_pred,
        proba=proba, hyperparameter=pipe.named_steps["probe"].hyperparameter_, scores=scores,
        pipeline=pipe if keep_models else None,
        fitted_features=ff.fitted if keep_models else None,
        train_pred=train_pred,
    )


def _tasks(features, y, task, classes, confounds, cv: OuterCV, inner_folds, seed, keep_models):
    for split, r, k, g in zip(cv.splits, cv.repeats, cv.folds, cv.test_groups):
        yield delayed(_run_fold)(features, y, task, classes, confounds, cv.groups, split, (r, k, g),
                                 inner_folds, seed, keep_models)


def cross_validate(
    features: FeatureSet,
    y: np.ndarray,
    task: str,
    cv: OuterCV,
    *,
    classes: list[str] | None = None,
    confounds: np.ndarray | None = None,
    inner_folds: int = 5,
    seed: int = 0,
    n_jobs: int | None = 1,
    keep_models: bool = False,
) -> list[FoldResult]:
    """Run the outer CV of one feature set.

    Parameters
    ----------
    features : FeatureSet
        Subjects in cohort order (``features.labels``).
    y : ndarray
        Target per cohort subject.
    task : {"classification", "regression"}
    cv : OuterCV
        Splits of the cohort (shared by every feature set: paired comparison).
    classes : list of str, optional
        Class order of the probabilities (default: sorted unique ``y``).
    confounds : ndarray, shape (n_subjects, k), optional
        Regressed out of the features inside each fold.
    inner_folds, seed : int
    n_jobs : int or None
        Parallel folds (joblib); None uses every CPU.
    keep_models : bool
        Keep fitted pipelines, fitted feature transformers and training
        predictions in the results (memory heavy; tests use it).

    Returns
    -------
    list of FoldResult
    """
    y = np.asarray(y)
    if task == "classification" and classes is None:
        classes = sorted(np.unique(y).tolist())
    tasks = list(_tasks(features, y, task, classes, confounds, cv, inner_folds, seed, keep_models))
    if n_jobs == 1 or len(tasks) == 1:
        return [fn(*args, **kw) for fn, args, kw in tasks]
    return Parallel(n_jobs=n_jobs if n_jobs is not None else -1)(tasks)


def _permute(y: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    out = y.copy()
    if groups is None:
        return out[rng.permutation(len(y))]
    for g in np.unique(groups):
        where = np.flatnonzero(groups == g)
        out[where] = y[where[rng.permutation(len(where))]]
    return out


def permutation_null(
    features: FeatureSet,
    y: np.ndarray,
    task: str,
    *,
    n_permutations: int,
    cv_args: dict,
    classes=None,
    confounds=None,
    inner_folds: int = 5,
    seed: int = 0,
    n_jobs: int | None = 1,
) -> np.ndarray:
    """Mean primary metric of the whole CV rerun on permuted targets.

    Targets are permuted within the CV groups when the CV is grouped, and the
    outer splits are rebuilt from the permuted targets with the same seed
    (``cv_args`` are the keyword arguments of :func:`~.cv.outer_cv`).
    """
    y = np.asarray(y)
    if task == "classification" and classes is None:
        classes = sorted(np.unique(y).tolist())
    rng = np.random.default_rng(seed + 7919)
    groups = cv_args.get("groups")
    jobs, owner = [], []
    for i in range(n_permutations):
        y_perm = _permute(y, None if groups is None else np.asarray(groups), rng)
        cv = outer_cv(y_perm, task, **cv_args)
        these = list(_tasks(features, y_perm, task, classes, confounds, cv, inner_folds, seed, False))
        jobs += these
        owner += [i] * len(these)
    if n_jobs == 1:
        results = [fn(*a, **kw) for fn, a, kw in jobs]
    else:
        results = Parallel(n_jobs=n_jobs if n_jobs is not None else -1)(jobs)
    primary = PRIMARY[task]
    per_perm = [[] for _ in range(n_permutations)]
    for i, res in zip(owner, results):
        per_perm[i].append(res.scores[primary])
    return np.array([np.nanmean(v) for v in per_perm])


def summarise_result(result: CVResult) -> CVResult:
    """Fill ``result.summary`` from its folds."""
    result.summary = summarise([f.scores for f in result.folds], result.task)
    return result
