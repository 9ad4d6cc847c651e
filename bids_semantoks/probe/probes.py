"""Linear probes: logistic regression and ridge with an inner CV, in a pipeline.

The pipeline of every outer fold is ``ConfoundRegressor -> StandardScaler ->
probe``; each step is fitted on the fold's training rows only, and the
probe's inner CV (which picks the regularisation) splits those training rows
again, so the test subjects of the fold reach neither the scaling, the
confound model nor the hyperparameter choice. (As in any
``Pipeline(StandardScaler(), LogisticRegressionCV())``, the scaler seen by the
inner CV was fitted on all training rows of the outer fold, validation rows
included; this touches no outer test subject.)

Grids are scale free: features are standardised, so the squared norm of a
sample is about ``p`` (the number of features) and the regularisation is
expressed relative to it: ``C = c / p`` for the logistic regression (``c`` in
:data:`LOGISTIC_GRID`) and ``alpha = a * p`` for ridge (``a`` in
:data:`RIDGE_GRID`). The same grid then suits 1536 embedding features and
20 000 connectome edges.

Speed: when there are fewer training rows than features the logistic
regression is fitted in the row space of the training matrix (exact, see
:func:`_row_space_basis`); the path over ``C`` is walked from strong to weak
regularisation with warm starts (L-BFGS), and BLAS is kept to one thread per
worker (multi-threaded BLAS is ~40x slower on these small matrix-vector
products); parallelism is over folds instead. Ridge uses the closed-form
efficient leave-one-out of ``RidgeCV`` when the inner CV is not grouped, and
one SVD per inner split otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from bids_semantoks.probe.cv import ConfoundRegressor, inner_splits

#: Logistic regression: ``C = c / n_features`` for c in this grid.
LOGISTIC_GRID = tuple(np.logspace(-3, 3, 9))
#: Ridge: ``alpha = a * n_features`` for a in this grid.
RIDGE_GRID = tuple(np.logspace(-3, 3, 13))


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """L2 logistic regression whose ``C`` is chosen by an inner CV.

    Classes are weighted ``balanced`` (the headline metric is balanced
    accuracy). The inner CV scores the class-balanced log-loss of the
    validation rows.

    Parameters
    ----------
    grid : sequence of float
        Relative ``C`` values (``C = c / n_features``).
    inner_folds : int
        Folds of the inner CV (see :func:`~.cv.inner_splits`).
    random_state : int
        Seed of the inner splits.
    max_iter, tol : int, float
        L-BFGS settings.

    Attributes
    ----------
    C_ : float
        Chosen ``C``.
    cv_scores_ : ndarray, shape (n_inner_splits, n_grid)
        Validation log-loss (NaN where a split lacked a class).
    classes_ : ndarray
    model_ : LogisticRegression
        Refitted on all training rows with ``C_``.
    """

    def __init__(self, grid=LOGISTIC_GRID, inner_folds: int = 5, random_state: int = 0,
                 max_iter: int = 300, tol: float = 1e-4):
        self.grid = grid
        self.inner_folds = inner_folds
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol

    def _model(self, C):
        return LogisticRegression(C=C, class_weight="balanced", max_iter=self.max_iter,
                                  tol=self.tol, warm_start=True)

    def fit(self, X, y, groups=None):
        """Fit; ``groups`` keeps rows together in the inner CV."""
        X = np.asarray(X, dtype=float)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        Cs = np.asarray(self.grid, dtype=float) / X.shape[1]
        self.basis_ = _row_space_basis(X) if X.shape[0] < X.shape[1] else None
        if self.basis_ is not None:
            X = X @ self.basis_
        splits = inner_splits(y, "classification", self.inner_folds, groups=groups, seed=self.random_state)
        scores = np.full((len(splits), len(Cs)), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for k, (tr, va) in enumerate(splits):
                if len(np.unique(y[tr])) < len(self.classes_):
                    continue
                X_tr, y_tr, X_va = X[tr], y[tr], X[va]
                truth = np.searchsorted(self.classes_, y[va])
                weight = compute_sample_weight("balanced", truth)
                model = self._model(Cs[0])
                for j, C in enumerate(Cs):
                    model.set_params(C=C)
                    model.fit(X_tr, y_tr)
                    scores[k, j] = _weighted_log_loss(model.decision_function(X_va), truth, weight)
            mean = np.nanmean(scores, axis=0) if np.isfinite(scores).any() else np.zeros(len(Cs))
            best = int(np.argmin(mean))
            self.C_ = float(Cs[best])
            self.c_relative_ = float(self.grid[best])
            self.cv_scores_ = scores
            self.model_ = self._model(self.C_).fit(X, y)
        coef = self.model_.coef_
        self.coef_ = coef @ self.basis_.T if self.basis_ is not None else coef
        self.intercept_ = self.model_.intercept_
        return self

    def _project(self, X):
        X = np.asarray(X, dtype=float)
        return X @ self.basis_ if self.basis_ is not None else X

    def decision_function(self, X):
        return self.model_.decision_function(self._project(X))

    def predict_proba(self, X):
        return self.model_.predict_proba(self._project(X))

    def predict(self, X):
        return self.model_.predict(self._project(X))

    @property
    def hyperparameter_(self) -> str:
        return f"C={self.C_:.3g}"


def _row_space_basis(X: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis (p, r) of the row space of X, from the n x n Gram matrix.

    An L2-penalised linear model (penalty on the weights only) has its weights
    in the row space of its training matrix (representer theorem), and the
    rows of any subset of X lie in X's row space. Fitting on ``X @ basis``
    (n x r instead of n x p) therefore gives exactly the same predictions,
    for the outer fit and for every inner-CV fit, at a fraction of the cost
    when ``n < p`` (e.g. 20 000 connectome edges).
    """
    gram = X @ X.T
    eigval, eigvec = np.linalg.eigh(gram)
    keep = eigval > rtol * max(eigval.max(), np.finfo(float).tiny)
    return (X.T @ eigvec[:, keep]) / np.sqrt(eigval[keep])


def _weighted_log_loss(decision: np.ndarray, truth: np.ndarray, weight: np.ndarray) -> float:
    """Weighted mean log-loss from decision values (binary: 1-D; else softmax logits)."""
    if decision.ndim == 1:
        decision = np.column_stack([np.zeros_like(decision), decision])
    logits = decision - decision.max(axis=1, keepdims=True)
    log_proba = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-(weight * log_proba[np.arange(len(truth)), truth]).sum() / weight.sum())


def _ridge_path(X_tr, y_tr, X_va, alphas):
    """Validation predictions of ridge (with intercept) for every alpha, one SVD."""
    mx, my = X_tr.mean(axis=0), y_tr.mean()
    U, s, Vt = np.linalg.svd(X_tr - mx, full_matrices=False)
    uty = U.T @ (y_tr - my)
    shrink = s[:, None] / (s[:, None] ** 2 + alphas[None, :])  # (r, n_alpha)
    coefs = Vt.T @ (shrink * uty[:, None])  # (p, n_alpha)
    return (X_va - mx) @ coefs + my


class RidgeProbe(RegressorMixin, BaseEstimator):
    """Ridge regression whose ``alpha`` is chosen by an inner CV.

    Without ``groups`` the inner CV is the exact, closed-form leave-one-out of
    :class:`sklearn.linear_model.RidgeCV`; with ``groups`` it is a grouped
    K-fold (:func:`~.cv.inner_splits`) solved with one SVD per split.

    Parameters
    ----------
    grid : sequence of float
        Relative ``alpha`` values (``alpha = a * n_features``).
    inner_folds : int
    random_state : int

    Attributes
    ----------
    alpha_ : float
    model_ : Ridge or RidgeCV
    """

    def __init__(self, grid=RIDGE_GRID, inner_folds: int = 5, random_state: int = 0):
        self.grid = grid
        self.inner_folds = inner_folds
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        alphas = np.asarray(self.grid, dtype=float) * X.shape[1]
        if groups is None:
            self.model_ = RidgeCV(alphas=alphas).fit(X, y)
            self.alpha_ = float(self.model_.alpha_)
        else:
            splits = inner_splits(y, "regression", self.inner_folds, groups=groups, seed=self.random_state)
            errors = np.zeros((len(splits), len(alphas)))
            for k, (tr, va) in enumerate(splits):
                pred = _ridge_path(X[tr], y[tr], X[va], alphas)
                errors[k] = ((pred - y[va, None]) ** 2).mean(axis=0)
            self.cv_scores_ = errors
            self.alpha_ = float(alphas[int(np.argmin(errors.mean(axis=0)))])
            self.model_ = Ridge(alpha=self.alpha_).fit(X, y)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return self.model_.predict(X)

    @property
    def hyperparameter_(self) -> str:
        return f"alpha={self.alpha_:.3g}"


def make_pipeline(task: str, *, n_confounds: int = 0, inner_folds: int = 5, seed: int = 0) -> Pipeline:
    """The probe of one outer fold.

    Parameters
    ----------
    task : {"classification", "regression"}
    n_confounds : int
        Trailing confound columns of X (0: none).
    inner_folds : int
    seed : int

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``confounds``, ``scale``, ``probe``; fit with
        ``pipeline.fit(X, y, probe__groups=groups)`` for a grouped inner CV.
    """
    probe = (LogisticProbe(inner_folds=inner_folds, random_state=seed) if task == "classification"
             else RidgeProbe(inner_folds=inner_folds, random_state=seed))
    return Pipeline([
        ("confounds", ConfoundRegressor(n_confounds)),
        ("scale", StandardScaler()),
        ("probe", probe),
    ])
