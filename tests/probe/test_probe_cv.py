"""Probes find a known signal, score at chance on shuffled labels; CV splits are sound."""

from __future__ import annotations

import numpy as np
import pytest

from bids_semantoks.probe.cv import inner_splits, outer_cv
from bids_semantoks.probe.evaluate import cross_validate, permutation_null
from bids_semantoks.probe.features import StaticFeatures
from bids_semantoks.probe.metrics import summarise
from bids_semantoks.probe.probes import LogisticProbe, _row_space_basis


def _data(n=200, p=300, seed=0):
    """Features with a known signal: a class mean shift and a linear regression target."""
    rng = np.random.default_rng(seed)
    y_cls = np.repeat(["neg", "pos"], n // 2)
    X = rng.standard_normal((n, p))
    X[y_cls == "pos", :20] += 0.6  # Mahalanobis distance 2.7: Bayes accuracy 0.91
    w = np.zeros(p)
    w[20:40] = 1.0
    y_reg = X @ w / np.sqrt(20) + 0.5 * rng.standard_normal(n)
    labels = [f"{i:03d}" for i in range(n)]
    return StaticFeatures("semantoks", dict(zip(labels, X)), labels), y_cls, y_reg


def _score(fs, y, task, **kw):
    cv = outer_cv(y, task, n_folds=5, n_repeats=2, seed=0, **kw)
    folds = cross_validate(fs, y, task, cv, n_jobs=1)
    return summarise([f.scores for f in folds], task)


def test_classification_finds_known_signal():
    fs, y, _ = _data()
    scores = _score(fs, y, "classification")
    assert scores["balanced_accuracy"][0] > 0.8
    assert scores["roc_auc"][0] > 0.85


def test_shuffled_labels_score_at_chance():
    fs, y, _ = _data()
    y_shuffled = np.random.default_rng(1).permutation(y)
    scores = _score(fs, y_shuffled, "classification")
    assert abs(scores["balanced_accuracy"][0] - 0.5) < 0.1


def test_regression_finds_known_signal_and_not_noise():
    fs, _, y = _data()
    scores = _score(fs, y, "regression")
    assert scores["pearson_r"][0] > 0.45 and scores["r2"][0] > 0.2
    null = _score(fs, np.random.default_rng(2).permutation(y), "regression")
    assert null["r2"][0] < 0.05 and abs(null["pearson_r"][0]) < 0.2


def test_row_space_fit_is_exact():
    """Fitting in the row space (n < p) gives the same model as on the raw features."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 200))
    y = (X[:, 0] + 0.3 * rng.standard_normal(40) > 0).astype(int)
    basis = _row_space_basis(X)
    full = LogisticRegression(C=0.01, tol=1e-10, max_iter=10000).fit(X, y)
    reduced = LogisticRegression(C=0.01, tol=1e-10, max_iter=10000).fit(X @ basis, y)
    np.testing.assert_allclose(reduced.coef_ @ basis.T, full.coef_, atol=1e-6)
    probe = LogisticProbe(inner_folds=3).fit(X, y)
    assert probe.coef_.shape == (1, 200)


def test_multiclass_probe():
    rng = np.random.default_rng(3)
    y = np.repeat(["a", "b", "c"], 40)
    X = rng.standard_normal((120, 50))
    X[:, :3] += 3.0 * (y[:, None] == np.array(["a", "b", "c"]))
    labels = [f"{i:03d}" for i in range(120)]
    scores = _score(StaticFeatures("s", dict(zip(labels, X)), labels), y, "classification")
    assert scores["balanced_accuracy"][0] > 0.8 and scores["roc_auc"][0] > 0.9


def test_outer_cv_stratified_repeated():
    y = np.array(["a"] * 30 + ["b"] * 20)
    cv = outer_cv(y, "classification", n_folds=5, n_repeats=3, seed=0)
    assert len(cv.splits) == 15 and cv.description == "3x5 repeated stratified k-fold"
    for r in range(3):
        tests = np.concatenate([t for (_, t), rep in zip(cv.splits, cv.repeats) if rep == r])
        assert sorted(tests) == list(range(50))  # each subject tested once per repeat
    for train, test in cv.splits:
        assert not set(train) & set(test)
        assert (y[test] == "b").sum() == 4  # stratified
    again = outer_cv(y, "classification", n_folds=5, n_repeats=3, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(cv.splits, again.splits))  # seeded


def test_outer_cv_groups():
    y = np.array(["a", "b"] * 30)
    groups = np.repeat(["s1", "s2", "s3"], 20)
    cv = outer_cv(y, "classification", groups=groups, group_name="site")
    assert cv.description == "leave-one-site-out (3 groups)" and cv.test_groups == ["s1", "s2", "s3"]
    many = np.repeat([f"g{i}" for i in range(12)], 5)
    cv = outer_cv(y, "regression", n_folds=4, n_repeats=2, groups=many, group_name="family")
    assert len(cv.splits) == 8
    for train, test in cv.splits:
        assert not set(many[train]) & set(many[test])  # no group on both sides


def test_inner_splits_keep_groups_together():
    y = np.array(["a", "b"] * 20)
    groups = np.repeat(np.arange(10), 4)
    for train, val in inner_splits(y, "classification", 5, groups=groups):
        assert not set(groups[train]) & set(groups[val])


def test_crops_protocol_predicts_per_subject():
    rng = np.random.default_rng(0)
    n, crops = 60, 4
    y = np.array(["a", "b"] * (n // 2))
    blocks = {}
    for i in range(n):
        base = rng.standard_normal(20) + (1.5 if y[i] == "b" else 0) * np.r_[np.ones(3), np.zeros(17)]
        blocks[f"{i:02d}"] = base + 0.5 * rng.standard_normal((crops, 20))
    fs = StaticFeatures("semantoks", blocks)
    cv = outer_cv(y, "classification", n_folds=5, n_repeats=1)
    folds = cross_validate(fs, y, "classification", cv, n_jobs=1)
    for f in folds:
        assert len(f.y_pred) == len(f.test)  # one prediction per subject, not per crop
        np.testing.assert_allclose(f.proba.sum(axis=1), 1.0)
    assert summarise([f.scores for f in folds], "classification")["balanced_accuracy"][0] > 0.75


def test_permutation_null_is_at_chance():
    fs, y, _ = _data(n=80, p=40)
    null = permutation_null(fs, y, "classification", n_permutations=3,
                            cv_args=dict(n_folds=3, n_repeats=1, seed=0), n_jobs=1)
    assert null.shape == (3,) and np.all(np.abs(null - 0.5) < 0.2)


@pytest.mark.parametrize("n_jobs", [2])
def test_parallel_equals_serial(n_jobs):
    fs, y, _ = _data(n=60, p=30)
    cv = outer_cv(y, "classification", n_folds=3, n_repeats=1, seed=0)
    serial = cross_validate(fs, y, "classification", cv, n_jobs=1)
    parallel = cross_validate(fs, y, "classification", cv, n_jobs=n_jobs)
    for a, b in zip(serial, parallel):
        np.testing.assert_allclose(a.proba, b.proba)
