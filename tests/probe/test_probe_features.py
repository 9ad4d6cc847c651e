"""Inputs: discovery with pybids, embeddings, time series with missing regions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from probe_helpers import ATLAS, make_cohort, write_output_dir

from bids_semantoks.errors import UsageError
from bids_semantoks.probe import features as feat


def _ts(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def test_discover_finds_outputs(tmp_path):
    cohort = make_cohort(6)
    out = write_output_dir(tmp_path / "out", cohort, skip_embedding=("02",))
    inputs = feat.discover(out, tmp_path)
    assert inputs.model_label == "official" and inputs.atlas == ATLAS
    assert sorted(inputs.embeddings) == ["01", "03", "04", "05", "06"]
    assert all(len(v) == 1 for v in inputs.crop_embeddings.values())
    assert len(inputs.timeseries) == 6
    only = feat.discover(out, tmp_path, participant_labels=["sub-01", "03"])
    assert sorted(only.embeddings) == ["01", "03"]


def test_discover_model_label_choice(tmp_path):
    cohort = make_cohort(4)
    out = write_output_dir(tmp_path / "out", cohort, model="tiny")
    write_output_dir(out, cohort, model="mine")
    with pytest.raises(UsageError, match="--model-label"):
        feat.discover(out, tmp_path)
    assert feat.discover(out, tmp_path, model_label="mine").model_label == "mine"
    with pytest.raises(UsageError, match="not found"):
        feat.discover(out, tmp_path, model_label="official")


def test_discover_timeseries_from_bids_dir(tmp_path):
    bids_dir = write_output_dir(tmp_path / "xcpd", make_cohort(4), skip_embedding=("01", "02", "03", "04"))
    empty_out = tmp_path / "out"
    assert not feat.discover(empty_out, bids_dir).timeseries  # fmriprep input: not read from BIDS_DIR
    inputs = feat.discover(empty_out, bids_dir, input_type="timeseries")
    assert len(inputs.timeseries) == 4 and inputs.timeseries_root == bids_dir


def test_load_timeseries_masks_missing_regions(tmp_path):
    rng = np.random.default_rng(0)
    run1 = pd.DataFrame(rng.standard_normal((30, 4)) * 30, columns=list("abcd"))
    run1["c"] = 0.0  # zero variance (outside the functional mask)
    run2 = pd.DataFrame(rng.standard_normal((20, 4)), columns=list("dcba"))  # other column order
    run2.loc[3, "a"] = np.nan  # one missing volume
    series, missing, cols = feat.load_timeseries(
        [_ts(tmp_path / "r1.tsv", run1), _ts(tmp_path / "r2.tsv", run2)], columns=list("abcd"))
    assert cols == list("abcd") and missing.tolist() == [False, False, True, False]
    assert series.shape == (49, 4)  # runs concatenated, the volume with n/a dropped
    assert np.isnan(series[:, 2]).all()
    np.testing.assert_allclose(np.nanmean(series[:30, [0, 1, 3]], axis=0), 0, atol=1e-12)  # z-scored per run


def test_timeseries_set_union_mask_and_too_many_missing(tmp_path):
    rng = np.random.default_rng(1)
    files = {}
    for label in ("01", "02", "03"):
        frame = pd.DataFrame(rng.standard_normal((40, 10)), columns=[f"R{i}" for i in range(10)])
        if label == "02":
            frame["R4"] = np.nan  # 1 of 10 missing: kept, R4 masked for everyone
        if label == "03":
            frame[["R0", "R1", "R2"]] = 0.0  # 3 of 10 missing: skipped
        files[label] = [_ts(tmp_path / f"{label}.tsv", frame)]
    ts = feat.load_timeseries_set(files, max_missing_fraction=0.1)
    assert sorted(ts.series) == ["01", "02"] and ts.masked_regions == ["R4"]
    assert "03" in ts.problems and "3 of 10" in ts.problems["03"]
    assert ts.series["01"].shape == (40, 9)


def test_subject_embeddings_average_sessions(tmp_path):
    cols = ["avg_0000", "cls_0000"]
    a = pd.DataFrame([[2, 1.0, 1.0]], columns=["n_crops", *cols])
    b = pd.DataFrame([[6, 3.0, 5.0]], columns=["n_crops", *cols])
    p1, p2 = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.to_csv(p1, sep="\t", index=False)
    b.to_csv(p2, sep="\t", index=False)
    bad = tmp_path / "bad.tsv"
    pd.DataFrame([[1, 1.0]], columns=["n_crops", "avg_0000"]).to_csv(bad, sep="\t", index=False)
    table, problems = feat.load_subject_embeddings({"01": [p1, p2], "02": [bad]})
    assert table.loc["01", "n_crops"] == 8
    np.testing.assert_allclose(table.loc["01", cols].to_numpy(dtype=float), [2.5, 4.0])  # weighted by n_crops
    assert "02" in problems
