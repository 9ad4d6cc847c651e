"""Cross-validation splits and the in-fold confound regression.

Outer CV (one per target, shared by every feature set so the comparison is
paired):

* no groups: repeated stratified K-fold (classification) or repeated K-fold
  (regression), seeded;
* ``--cv-groups COL`` with at most ``cv_folds`` distinct groups:
  leave-one-group-out (e.g. leave-site-out; repeats are meaningless there);
* more groups: repeated stratified group K-fold (classification) or a seeded
  random assignment of groups to K folds (regression).

Inner CV (hyperparameters, inside the training subjects of an outer fold):
the same rules with ``inner_folds`` and no repeats, grouped by the outer
groups when the CV is grouped (so the regularisation is chosen for
generalising across groups) and by subject in the crops protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import (
    KFold,
    LeaveOneGroupOut,
    RepeatedKFold,
    RepeatedStratifiedKFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)


@dataclass
class OuterCV:
    """Outer splits of one target's cohort (indices into the cohort).

    Attributes
    ----------
    splits : list of (train, test)
    repeats, folds : list of int
        Repeat and fold number of each split.
    test_groups : list of str or None
        Held-out group of each split (leave-one-group-out), else None.
    groups : ndarray or None
        Group of every cohort subject (passed on to the inner CV).
    description : str
        Short text for the ``cv`` column (e.g. ``5x5 stratified k-fold``).
    """

    splits: list[tuple[np.ndarray, np.ndarray]]
    repeats: list[int]
    folds: list[int]
    test_groups: list[str | None]
    groups: np.ndarray | None
    description: str


def _random_group_folds(groups: np.ndarray, n_folds: int, rng: np.random.Generator):
    unique = rng.permutation(np.unique(groups))
    for chunk in np.array_split(unique, n_folds):
        test = np.flatnonzero(np.isin(groups, chunk))
        train = np.flatnonzero(~np.isin(groups, chunk))
        yield train, test


def outer_cv(
    y: np.ndarray,
    task: str,
    *,
    n_folds: int = 5,
    n_repeats: int = 5,
    groups: np.ndarray | None = None,
    group_name: str | None = None,
    seed: int = 0,
) -> OuterCV:
    """Build the outer splits (see module docstring).

    Parameters
    ----------
    y : ndarray
        Target of every cohort subject.
    task : {"classification", "regression"}
    n_folds, n_repeats : int
    groups : ndarray or None
        Group of every subject (``--cv-groups``).
    group_name : str or None
        Column name, for the description.
    seed : int

    Returns
    -------
    OuterCV
    """
    y = np.asarray(y)
    idx = np.zeros((len(y), 1))
    stratify = task == "classification"
    if groups is None:
        if stratify:
            n_folds = _fit_folds(y, n_folds)
            splitter = RepeatedStratifiedKFold(n_splits=n_folds, n_repeats=n_repeats, random_state=seed)
            kind = "stratified k-fold"
        else:
            splitter = RepeatedKFold(n_splits=n_folds, n_repeats=n_repeats, random_state=seed)
            kind = "k-fold"
        splits = list(splitter.split(idx, y))
        repeats = [i // n_folds for i in range(len(splits))]
        folds = [i % n_folds for i in range(len(splits))]
        return OuterCV(splits, repeats, folds, [None] * len(splits), None,
                       f"{n_repeats}x{n_folds} repeated {kind}")
    groups = np.asarray(groups).astype(str)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"--cv-groups {group_name}: a single group ({unique[0]}); need at least two")
    if len(unique) <= n_folds:
        splits = list(LeaveOneGroupOut().split(idx, y, groups))
        test_groups = [str(groups[test][0]) for _, test in splits]
        return OuterCV(splits, [0] * len(splits), list(range(len(splits))), test_groups, groups,
                       f"leave-one-{group_name or 'group'}-out ({len(unique)} groups)")
    splits, repeats, folds = [], [], []
    for r in range(n_repeats):
        if stratify:
            sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed + r)
            these = list(sgkf.split(idx, y, groups))
        else:
            these = list(_random_group_folds(groups, n_folds, np.random.default_rng(seed + r)))
        splits += these
        repeats += [r] * len(these)
        folds += list(range(len(these)))
    return OuterCV(splits, repeats, folds, [None] * len(splits), groups,
                   f"{n_repeats}x{n_folds} repeated group k-fold by {group_name or 'group'}")


def _fit_folds(y: np.ndarray, n_folds: int) -> int:
    """Fewer folds when the rarest class has fewer members than folds (min 2)."""
    _, counts = np.unique(y, return_counts=True)
    return int(max(2, min(n_folds, counts.min())))


def inner_splits(
    y: np.ndarray, task: str, n_folds: int, *, groups: np.ndarray | None = None, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Splits of the inner CV on the training rows of an outer fold.

    Parameters
    ----------
    y : ndarray
        Target of each training row.
    task : {"classification", "regression"}
    n_folds : int
    groups : ndarray or None
        Rows with the same group stay together (outer groups, or subjects in
        the crops protocol). Fewer than two groups: ignored.
    seed : int

    Returns
    -------
    list of (train, validation) index arrays
    """
    y = np.asarray(y)
    idx = np.zeros((len(y), 1))
    stratify = task == "classification"
    if groups is not None and len(np.unique(groups)) >= 2:
        groups = np.asarray(groups)
        n_groups = len(np.unique(groups))
        if n_groups <= n_folds:
            return list(LeaveOneGroupOut().split(idx, y, groups))
        if stratify:
            return list(StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(idx, y, groups))
        return list(_random_group_folds(groups, n_folds, np.random.default_rng(seed)))
    if stratify:
        n_folds = _fit_folds(y, n_folds)
        return list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(idx, y))
    return list(KFold(n_splits=min(n_folds, len(y)), shuffle=True, random_state=seed).split(idx))


class ConfoundRegressor(TransformerMixin, BaseEstimator):
    """Regress confounds out of features, fitted on the training rows only.

    The confounds travel with the features as their last ``n_confounds``
    columns (so any sklearn pipeline keeps them row-aligned); ``transform``
    returns the residual features without those columns. The model is
    ordinary least squares with an intercept, ``features ~ 1 + confounds``,
    solved by ``numpy.linalg.lstsq`` (minimum-norm when the design is rank
    deficient, e.g. a site dummy that is all zero in a leave-site-out fold).

    Parameters
    ----------
    n_confounds : int
        Number of trailing confound columns; 0 makes this a pass-through.

    Attributes
    ----------
    coef_ : ndarray, shape (n_confounds + 1, n_features)
        Intercept row first. Absent when ``n_confounds == 0``.
    """

    def __init__(self, n_confounds: int = 0):
        self.n_confounds = n_confounds

    def _split(self, X):
        X = np.asarray(X, dtype=float)
        if self.n_confounds == 0:
            return X, None
        k = self.n_confounds
        design = np.column_stack([np.ones(len(X)), X[:, -k:]])
        return X[:, :-k], design

    def fit(self, X, y=None):
        features, design = self._split(X)
        self.n_features_in_ = np.asarray(X).shape[1]
        if design is not None:
            self.coef_ = np.linalg.lstsq(design, features, rcond=None)[0]
        return self

    def transform(self, X):
        features, design = self._split(X)
        if design is None:
            return features
        return features - design @ self.coef_
