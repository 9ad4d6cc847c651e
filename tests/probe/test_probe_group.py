"""run_group end to end on a synthetic OUTPUT_DIR, and the report in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from bids_semantoks.errors import DataError, MissingInputError, UsageError
from bids_semantoks.probe import GroupOptions, run_group

FAST = dict(cv_folds=3, cv_repeats=2, inner_folds=3, n_jobs=1)


def _read(path):
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"])


@pytest.fixture(scope="module")
def finished_run(toy_study_shared):
    raw, out, cohort = toy_study_shared
    options = GroupOptions(targets=["dx", "age"], confounds=["sex"], raw_dir=raw, **FAST)
    assert run_group(options, raw, out) == 0
    return out / "group", cohort


def test_group_writes_every_output(finished_run):
    group, cohort = finished_run
    metrics = _read(group / "group_desc-probes_metrics.tsv")
    assert list(metrics.columns)[:7] == ["target", "features", "metric", "mean", "std", "n_subjects", "cv"]
    assert set(metrics["features"]) == {"semantoks", "fc"}  # both, as both inputs exist
    assert set(metrics.loc[metrics.target == "dx", "metric"]) == {"balanced_accuracy", "roc_auc", "f1"}
    assert set(metrics.loc[metrics.target == "age", "metric"]) == {"mae", "r2", "pearson_r"}
    assert set(metrics["n_subjects"]) == {39}  # sub-07 has no outputs
    bacc = metrics.set_index(["target", "features", "metric"])["mean"]
    assert bacc["dx", "semantoks", "balanced_accuracy"] > 0.8  # the planted signals are found
    assert bacc["dx", "fc", "balanced_accuracy"] > 0.7

    preds = _read(group / "group_desc-probes_predictions.tsv")
    assert {"participant_id", "target", "features", "fold", "y_true", "y_pred", "prob_A", "prob_B"} <= set(preds)
    per = preds.groupby(["target", "features"]).size()
    assert (per == 39 * 2).all()  # every subject once per repeat
    assert "sub-07" not in set(preds["participant_id"])

    side = json.loads((group / "group_desc-probes_metrics.json").read_text())
    assert side["GroupOptions"]["cv_folds"] == 3 and side["ModelLabel"] == "official"
    assert {"scikit-learn", "nilearn", "bids_semantoks"} <= set(side["SoftwareVersions"])
    assert side["Model"]["ModelVersion"] == "test"
    assert side["Targets"]["dx"]["task"] == "classification" and side["Targets"]["age"]["task"] == "regression"
    assert side["FC"]["masked_regions"] == ["R05"]  # all zero in sub-03

    emb = _read(group / "group_embedding.tsv")
    assert len(emb) == 39 and list(emb.columns[:3]) == ["participant_id", "n_crops", "avg_0000"]

    skipped = _read(group / "group_desc-skipped_participants.tsv")
    row = skipped[skipped.participant_id == "sub-07"]
    assert len(row) == 1 and "no embedding" in row.iloc[0]["reason"] and "time series" in row.iloc[0]["reason"]
    html = (group / "report.html").read_text()
    assert "data:image/png;base64," in html and "sub-07" in html
    assert 'src="http' not in html and "<link" not in html and "<script" not in html  # self-contained


def test_group_missing_values_and_phenotypes_file(toy_study, tmp_path):
    raw, out, cohort = toy_study
    table = cohort.copy()
    table["participant_id"] = table["participant_id"].str[4:]  # no sub- prefix
    table["score"] = np.where(np.arange(len(table)) % 10 == 0, "-9999", table["age"].astype(str))
    table.loc[1, "score"] = "n/a"
    pheno = tmp_path / "pheno.csv"
    table.drop(columns=["dx"]).to_csv(pheno, index=False)
    options = GroupOptions(targets=["score"], features=["semantoks"], phenotypes=pheno,
                           target_types={"score": "regression"}, **FAST)
    assert run_group(options, tmp_path / "nowhere", out) == 0
    skipped = _read(out / "group" / "group_desc-skipped_participants.tsv")
    reasons = skipped.groupby("reason").size()
    assert reasons["target 'score' is sentinel"] == 4 and reasons["target 'score' is n/a"] == 1
    metrics = _read(out / "group" / "group_desc-probes_metrics.tsv")
    assert set(metrics["n_subjects"]) == {34}  # 40 - sub-07 - 4 sentinel - 1 n/a


def test_group_crops_protocol_tangent_and_groups(toy_study):
    raw, out, _ = toy_study
    options = GroupOptions(targets=["dx"], raw_dir=raw, semantoks_protocol="crops", fc_kind="tangent",
                           cv_groups="site", n_permutations=2, **{**FAST, "n_jobs": 1})
    assert run_group(options, raw, out) == 0
    metrics = _read(out / "group" / "group_desc-probes_metrics.tsv")
    assert set(metrics["cv"]) == {"leave-one-site-out (3 groups)"}
    primary = metrics[metrics.metric == "balanced_accuracy"]
    assert primary["p_value"].between(0, 1).all()
    preds = _read(out / "group" / "group_desc-probes_predictions.tsv")
    assert set(preds["test_group"]) == {"S1", "S2", "S3"}


def test_group_errors(toy_study, tmp_path):
    raw, out, cohort = toy_study
    with pytest.raises(UsageError, match="--target"):
        run_group(GroupOptions(raw_dir=raw), raw, out)
    with pytest.raises(UsageError, match="not found"):
        run_group(GroupOptions(targets=["nope"], raw_dir=raw, **FAST), raw, out)
    empty = tmp_path / "empty_out"
    empty.mkdir()
    with pytest.raises(MissingInputError, match="participant level"):
        run_group(GroupOptions(targets=["dx"], raw_dir=raw, **FAST), raw, empty)
    one = tmp_path / "one_class.tsv"
    cohort.assign(dx="A").to_csv(one, sep="\t", index=False)
    with pytest.raises(DataError, match="single class"):
        run_group(GroupOptions(targets=["dx"], phenotypes=one, **FAST), tmp_path / "nowhere", out)
    with pytest.raises(MissingInputError, match="phenotype"):
        run_group(GroupOptions(targets=["dx"], **FAST), tmp_path / "nowhere", out)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    if os.environ.get("BIDS_SEMANTOKS_SKIP_BROWSER") == "1":
        pytest.skip("BIDS_SEMANTOKS_SKIP_BROWSER=1")
    browser = _chromium()
    if browser is None:
        pytest.fail("Chromium not found: install it (apt-get install -y chromium) or set "
                    "BIDS_SEMANTOKS_SKIP_BROWSER=1 to skip this check")
    group, _ = finished_run
    shot = tmp_path / "report.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           (group / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot; chromium said: {proc.stderr[-2000:]}"
    assert shot.stat().st_size > 20_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    flat = pixels[..., :3].reshape(-1, 3)
    assert flat.std(axis=0).max() > 0.05  # not a single colour
    assert len(np.unique((flat[::97] * 255).astype(int), axis=0)) > 20  # text and figures drawn
