#!/usr/bin/env python
"""Benchmark: group-level probes, 1000 subjects x 1536 features, 5x5 outer CV with inner CV.

Target (issue): under 30 s on 2 cores for the whole 5x5 nested CV.

Configurations (all on the same synthetic data, the same outer folds, 2 workers):

* ``ours logistic``: :func:`bids_semantoks.probe.evaluate.cross_validate`,
  ConfoundRegressor + StandardScaler + LogisticProbe (9 C values, 5-fold inner CV,
  row-space fit, warm-started L-BFGS path, one BLAS thread per worker).
* ``ours logistic + 3 confounds``: the same with confound regression in the folds.
* ``ours ridge``: the regression probe (RidgeCV efficient leave-one-out).
* ``sklearn baseline``: ``cross_validate(GridSearchCV(make_pipeline(StandardScaler(),
  LogisticRegression()), {C: the same 9 values}, cv=5), cv=outer, n_jobs=2)`` with default
  BLAS threading: what one writes without thinking about speed. It is slow, so by default
  it runs on the first ``--baseline-folds`` outer folds and its 25-fold time is extrapolated
  (marked ``*``); the ratio compares time per outer fold.

The process is pinned to 2 CPUs when more are available (``--cores``); worker processes
inherit the pinning.

Usage::

    python benchmarks/probe_speed.py                   # full table
    python benchmarks/probe_speed.py --baseline-folds 25   # run the baseline on all 25 folds
    python benchmarks/probe_speed.py --quick           # 300 subjects, smoke test
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def make_data(n: int, p: int, seed: int = 0):
    """Embedding-like features: low-rank structure + noise, a weak class signal, a regression target."""
    rng = np.random.default_rng(seed)
    y = np.repeat(["ASD", "TC"], n // 2)
    latent = rng.standard_normal((n, 32))
    X = latent @ rng.standard_normal((32, p)) * 0.5 + rng.standard_normal((n, p))
    direction = rng.standard_normal(p) / np.sqrt(p)
    X += 0.6 * np.outer(y == "TC", direction) * np.sqrt(p) / 8
    y_reg = X[:, :50].mean(axis=1) * 3 + rng.standard_normal(n)
    confounds = np.column_stack([rng.uniform(6, 40, n), rng.integers(0, 2, n), rng.normal(0.1, 0.05, n)])
    return X, y, y_reg, confounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--features", type=int, default=1536)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--baseline-folds", type=int, default=5,
                        help="outer folds the sklearn baseline runs (0: skip); the rest is extrapolated")
    parser.add_argument("--quick", action="store_true", help="300 subjects, baseline on 2 folds")
    args = parser.parse_args()
    if args.quick:
        args.subjects, args.baseline_folds = 300, 2

    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.model_selection import cross_validate as sk_cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bids_semantoks.probe.cv import outer_cv
    from bids_semantoks.probe.evaluate import cross_validate
    from bids_semantoks.probe.features import StaticFeatures
    from bids_semantoks.probe.metrics import summarise
    from bids_semantoks.probe.probes import LOGISTIC_GRID

    X, y, y_reg, confounds = make_data(args.subjects, args.features)
    labels = [f"{i:04d}" for i in range(len(X))]
    fs = StaticFeatures("semantoks", dict(zip(labels, X)), labels)
    cv_cls = outer_cv(y, "classification", n_folds=5, n_repeats=5, seed=0)
    cv_reg = outer_cv(y_reg, "regression", n_folds=5, n_repeats=5, seed=0)
    n_outer = len(cv_cls.splits)
    print(f"{len(X)} subjects x {X.shape[1]} features, {cv_cls.description}, inner 5-fold, "
          f"{len(LOGISTIC_GRID)} C values, {cores} cores, n_jobs=2")

    rows = []
    cpu_folds = cv_cls.splits[:2]

    def cpu_per_fold(fn) -> float:
        """CPU seconds per outer fold, in this process (load-independent), from 2 folds."""
        t0 = time.process_time()
        fn()
        return (time.process_time() - t0) / 2

    def ours(name, task, target, cv, conf=None):
        t0 = time.perf_counter()
        folds = cross_validate(fs, target, task, cv, confounds=conf, inner_folds=5, seed=0, n_jobs=2)
        wall = time.perf_counter() - t0
        summary = summarise([f.scores for f in folds], task)
        metric = "balanced_accuracy" if task == "classification" else "r2"
        short = type(cv)(cv.splits[:2], cv.repeats[:2], cv.folds[:2], cv.test_groups[:2], None, "")
        cpu = cpu_per_fold(lambda: cross_validate(fs, target, task, short, confounds=conf, n_jobs=1))
        rows.append((name, len(cv.splits), wall, wall, cpu, f"{metric} {summary[metric][0]:.3f}"))

    ours("ours logistic", "classification", y, cv_cls)
    ours("ours logistic + 3 confounds", "classification", y, cv_cls, confounds)
    ours("ours ridge", "regression", y_reg, cv_reg)

    if args.baseline_folds:
        k = min(args.baseline_folds, n_outer)
        Cs = np.asarray(LOGISTIC_GRID) / X.shape[1]
        inner = StratifiedKFold(5, shuffle=True, random_state=0)
        model = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)),
                             {"logisticregression__C": Cs}, cv=inner, scoring="neg_log_loss")
        t0 = time.perf_counter()
        res = sk_cross_validate(model, X, y, cv=cv_cls.splits[:k], scoring="balanced_accuracy", n_jobs=2)
        wall = time.perf_counter() - t0
        cpu = cpu_per_fold(lambda: sk_cross_validate(model, X, y, cv=cpu_folds, n_jobs=1))
        rows.append(("sklearn baseline GridSearchCV(LogisticRegression)", k, wall, wall * n_outer / k, cpu,
                     f"balanced_accuracy {res['test_score'].mean():.3f}"))

    base = rows[-1] if args.baseline_folds else None
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (wall times inflate when it exceeds {cores})")
    print(f"\n{'configuration':<50} {'folds':>5} {'wall s':>7} {'wall s 25 folds':>15} {'x faster':>8} "
          f"{'CPU s/fold':>10} {'x faster':>8} {'ideal 2-core s':>14}  score")
    for name, k, wall, full, cpu, score in rows:
        star = "*" if k < n_outer else " "
        r_wall = f"{base[3] / full:8.1f}" if base else "     n/a"
        r_cpu = f"{base[4] / cpu:8.1f}" if base else "     n/a"
        print(f"{name:<50} {k:>5} {wall:>7.1f} {full:>14.1f}{star} {r_wall} {cpu:>10.2f} {r_cpu} "
              f"{cpu * n_outer / 2:>14.1f}  {score}")
    if any(r[1] < n_outer for r in rows):
        print(f"* extrapolated from the folds run to all {n_outer}")
    print("CPU s/fold: one worker, measured in-process on 2 outer folds (our probes use one BLAS thread;"
          " the baseline its default threads). ideal 2-core s = CPU s/fold x 25 / 2.")

if __name__ == "__main__":
    main()
