"""Metrics of one outer fold and their summary over folds.

Classification: balanced accuracy, ROC AUC (binary: probability of the second
class in sorted order; more classes: one-vs-rest macro average), F1 (macro
average over classes, so it does not depend on which class is "positive").
Regression: MAE, R² (``sklearn.metrics.r2_score`` on the fold's test
subjects) and Pearson r. A metric that is undefined on a fold (AUC with one
class in the test fold, r of a constant prediction) is NaN there and left out
of the mean.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)

METRICS = {
    "classification": ("balanced_accuracy", "roc_auc", "f1"),
    "regression": ("mae", "r2", "pearson_r"),
}
#: Metric of the permutation test, the bar charts' headline and the paired difference.
PRIMARY = {"classification": "balanced_accuracy", "regression": "r2"}


def fold_scores(task: str, y_true, y_pred, proba=None, classes=None) -> dict[str, float]:
    """Scores of one fold.

    Parameters
    ----------
    task : {"classification", "regression"}
    y_true, y_pred : array-like
    proba : ndarray, shape (n, n_classes), optional
        Class probabilities in the order of ``classes`` (classification).
    classes : sequence, optional

    Returns
    -------
    dict
        Metric name -> value (NaN when undefined).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if task == "classification":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = {
                "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
                "f1": float(f1_score(y_true, y_pred, average="macro", labels=classes, zero_division=0)),
            }
        out["roc_auc"] = _auc(y_true, proba, classes)
        return out
    err = y_pred - y_true
    r = np.nan
    if len(y_true) > 2 and np.std(y_pred) > 0 and np.std(y_true) > 0:
        r = float(np.corrcoef(y_true, y_pred)[0, 1])
    return {
        "mae": float(mean_absolute_error(y_true, y_pred)) if len(err) else np.nan,
        "r2": float(r2_score(y_true, y_pred)) if len(y_true) > 1 else np.nan,
        "pearson_r": r,
    }


def _auc(y_true, proba, classes) -> float:
    if proba is None or classes is None:
        return np.nan
    present = np.unique(y_true)
    if len(present) < 2:
        return np.nan
    classes = list(classes)
    if len(classes) == 2:
        return float(roc_auc_score(y_true == classes[1], proba[:, 1]))
    if len(present) < len(classes):
        return np.nan
    return float(roc_auc_score(y_true, proba, multi_class="ovr", labels=classes))


def summarise(per_fold: list[dict[str, float]], task: str) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation (ddof=1) of every metric over folds."""
    out = {}
    for name in METRICS[task]:
        values = np.array([f[name] for f in per_fold], dtype=float)
        values = values[np.isfinite(values)]
        mean = float(values.mean()) if values.size else np.nan
        std = float(values.std(ddof=1)) if values.size > 1 else np.nan
        out[name] = (mean, std)
    return out


def permutation_p_value(observed: float, null: np.ndarray, greater_is_better: bool = True) -> float:
    """``(1 + #{null >= observed}) / (1 + n)`` (Phipson & Smyth 2010)."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not null.size or not np.isfinite(observed):
        return np.nan
    hits = np.sum(null >= observed) if greater_is_better else np.sum(null <= observed)
    return float((1 + hits) / (1 + null.size))
