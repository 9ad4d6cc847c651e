"""Leakage: a fold's test subjects never influence its scaler, confound model, hyperparameters or FC reference."""

from __future__ import annotations

import numpy as np
import pytest

from bids_semantoks.probe.cv import ConfoundRegressor, outer_cv
from bids_semantoks.probe.evaluate import cross_validate
from bids_semantoks.probe.features import ConnectomeFeatures, StaticFeatures, _measure


def _fit(X, y, confounds, cv, task):
    labels = [f"{i:03d}" for i in range(len(X))]
    fs = StaticFeatures("semantoks", dict(zip(labels, X)), labels)
    return cross_validate(fs, y, task, cv, confounds=confounds, n_jobs=1, keep_models=True)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_test_subjects_do_not_touch_the_fold_models(task):
    rng = np.random.default_rng(0)
    n, p = 90, 40
    X = rng.standard_normal((n, p))
    confounds = np.column_stack([rng.uniform(8, 40, n), rng.integers(0, 2, n)])
    X[:, :5] += 0.05 * confounds[:, :1]  # an age effect for the confound model to remove
    y = np.repeat(["a", "b"], n // 2) if task == "classification" else X[:, 10] + rng.standard_normal(n)
    cv = outer_cv(y, task, n_folds=3, n_repeats=1, seed=0)
    before = _fit(X, y, confounds, cv, task)

    test = cv.splits[0][1]
    X_bad, conf_bad = X.copy(), confounds.copy()
    X_bad[test] = X_bad[test] * 1000.0 + 500.0  # drastic change of the test subjects only
    conf_bad[test] = -conf_bad[test] * 100.0
    after = _fit(X_bad, y, conf_bad, cv, task)

    a, b = before[0].pipeline, after[0].pipeline
    np.testing.assert_array_equal(a.named_steps["confounds"].coef_, b.named_steps["confounds"].coef_)
    np.testing.assert_array_equal(a.named_steps["scale"].mean_, b.named_steps["scale"].mean_)
    np.testing.assert_array_equal(a.named_steps["scale"].scale_, b.named_steps["scale"].scale_)
    assert a.named_steps["probe"].hyperparameter_ == b.named_steps["probe"].hyperparameter_
    np.testing.assert_array_equal(before[0].train_pred, after[0].train_pred)
    # ... while the predictions of the changed test subjects do change
    if task == "regression":
        assert not np.allclose(before[0].y_pred, after[0].y_pred)


def test_confound_regressor_uses_training_rows_only():
    rng = np.random.default_rng(1)
    age = rng.uniform(0, 10, 50)
    X = np.column_stack([2.0 * age + rng.standard_normal(50), rng.standard_normal(50), age])
    train, test = np.arange(40), np.arange(40, 50)
    reg = ConfoundRegressor(n_confounds=1).fit(X[train])
    moved = X.copy()
    moved[test, :2] += 1e6
    np.testing.assert_array_equal(ConfoundRegressor(n_confounds=1).fit(moved[train]).coef_, reg.coef_)
    out = reg.transform(X)
    assert out.shape == (50, 2)  # confound columns dropped
    assert abs(np.corrcoef(out[train, 0], age[train])[0, 1]) < 1e-8  # age removed in the training rows
    assert np.abs(np.corrcoef(out[test, 0], age[test])[0, 1]) < 0.5  # the train fit transfers to test rows
    assert ConfoundRegressor(0).fit(X[:, :2]).transform(X[:, :2]).shape == (50, 2)


def _series(n_subjects, seed=0):
    rng = np.random.default_rng(seed)
    return {f"{i:02d}": rng.standard_normal((60, 6)) @ np.triu(rng.uniform(0, 1, (6, 6)))
            for i in range(n_subjects)}


def test_tangent_reference_fitted_on_training_subjects_only():
    series = _series(30)
    y = np.repeat(["a", "b"], 15)
    cv = outer_cv(y, "classification", n_folds=3, n_repeats=1, seed=0)
    fs = ConnectomeFeatures(series, "tangent")
    train, test = cv.splits[0]
    reference = fs.fold(train, test).fitted.mean_
    changed = dict(series)
    for i in test:
        changed[fs.labels[i]] = series[fs.labels[i]] * 50.0 + np.random.default_rng(i).standard_normal((60, 6))
    again = ConnectomeFeatures(changed, "tangent").fold(train, test)
    np.testing.assert_array_equal(again.fitted.mean_, reference)
    expected = _measure("tangent").fit([series[fs.labels[i]] for i in train]).mean_
    np.testing.assert_allclose(reference, expected)


def test_correlation_computed_once_equals_fitted_in_fold():
    series = _series(12, seed=3)
    fs = ConnectomeFeatures(series, "correlation")
    train, test = np.arange(8), np.arange(8, 12)
    fold = fs.fold(train, test)
    measure = _measure("correlation").fit([series[fs.labels[i]] for i in train])
    np.testing.assert_allclose(fold.X_test, measure.transform([series[fs.labels[i]] for i in test]))
    assert fold.X_train.shape == (8, 15)  # 6 regions: strict upper triangle
