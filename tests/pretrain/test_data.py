"""Reading participant outputs / XCP-D-like series, default preparation, subject subsets."""

import json
from pathlib import Path

import numpy as np
import pytest

from bids_semantoks.errors import NothingSelectedError
from bids_semantoks.pretrain.data import load_runs_from_derivatives, prepare_timeseries, select_subjects

ABIDE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "abide_cc200"


def _write(folder, name, data, tr, header):
    folder.mkdir(parents=True, exist_ok=True)
    tsv = folder / f"{name}_timeseries.tsv"
    lines = ["\t".join(header)] + ["\t".join("n/a" if np.isnan(v) else f"{v:.6f}" for v in row) for row in data]
    tsv.write_text("\n".join(lines) + "\n")
    (folder / f"{name}_timeseries.json").write_text(json.dumps({"SamplingFrequency": 1.0 / tr}))


def test_prepare_is_the_participant_path():
    """The default preparation is the participant level's (issue 13 item 1), not a second resampler."""
    from bids_semantoks.extract.signal import clean_signals

    rng = np.random.default_rng(0)
    x = rng.normal(size=(152, 4)) * 30 + 5
    x[:, 2] = 0.0  # zero-variance ROI
    x[:, 3] = np.nan  # missing region
    y = prepare_timeseries(x, 2.5)
    assert y.shape == (189, 4) and y.dtype == np.float32  # samples every 2 s within 151 * 2.5 s
    np.testing.assert_allclose(np.nanmean(y[:, :2], 0), 0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(y[:, :2], 0), 1, atol=1e-4)
    assert np.all(np.isnan(y[:, 2])) and np.all(np.isnan(y[:, 3]))  # missing: packed as 0
    ref = clean_signals(x, 2.5, target_tr=2.0, lower_bpf=0.01, upper_bpf=0.1, detrend=True).data
    np.testing.assert_allclose(y, ref, atol=1e-5)
    filtered = prepare_timeseries(x, 2.5, metadata={"SoftwareFilters": {"Bandpass filter": {}}})
    unfiltered = clean_signals(x, 2.5, target_tr=2.0, lower_bpf=0, upper_bpf=0, detrend=True).data
    np.testing.assert_allclose(filtered, unfiltered, atol=1e-5)  # not band-passed a second time
    assert prepare_timeseries(x[:40], 2.5).shape == (0, 4)  # 100 s: below the default --min-time


def test_load_runs_sessions_atlas_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    hdr = ["r1", "r2", "r3"]
    _write(tmp_path / "sub-01/func", "sub-01_task-rest_atlas-X_desc-s_timeseries".removesuffix("_timeseries"),
           rng.normal(size=(120, 3)), 2.0, hdr)
    _write(tmp_path / "sub-02/ses-a/func", "sub-02_ses-a_task-rest_run-1_atlas-X_desc-s", rng.normal(size=(100, 3)), 2.5, hdr)
    _write(tmp_path / "sub-02/ses-a/func", "sub-02_ses-a_task-rest_run-1_atlas-Y_desc-s", rng.normal(size=(100, 2)), 2.0, hdr[:2])
    runs = load_runs_from_derivatives(tmp_path, ["X"])
    assert [(r.subject, r.data.shape) for r in runs] == [("01", (120, 3)), ("02", (124, 3))]
    assert runs[1].run_id == "sub-02_ses-a_task-rest_run-1_atlas-X_desc-s"
    assert [r.subject for r in load_runs_from_derivatives(tmp_path, ["X"], ["sub-02"])] == ["02"]
    with pytest.raises(NothingSelectedError):
        load_runs_from_derivatives(tmp_path, ["Z"])


@pytest.mark.skipif(not ABIDE.is_dir(), reason="shared ABIDE data not available")
def test_load_abide_in_place():
    runs = load_runs_from_derivatives(ABIDE, ["CC200"], ["50272", "sub-50772"])
    assert {r.subject for r in runs} == {"50272", "50772"}
    for r in runs:
        assert r.data.shape[1] == 200 and np.isfinite(r.data).all()
        assert np.abs(r.data.mean(0)).max() < 1e-4


def test_select_subjects():
    subs = [f"{i:03d}" for i in range(100)]
    a = select_subjects(subs, 0.1, seed=0)
    assert len(a) == 10 and a == sorted(a) and a == select_subjects(subs, 0.1, seed=0)
    assert a != select_subjects(subs, 0.1, seed=1)
    assert len(select_subjects(subs, 0.01, seed=0, minimum=8)) == 8
    assert select_subjects(subs, 1.0, 0) == subs


def test_train_fraction_subsets_are_nested_and_seeded():
    from bids_semantoks.pretrain.data import select_subjects

    subjects = [f"{i:03d}" for i in range(100)]
    small, large = select_subjects(subjects, 0.1, seed=3), select_subjects(subjects, 0.5, seed=3)
    assert len(small) == 10 and len(large) == 50 and set(small) <= set(large)
    assert select_subjects(subjects, 0.1, seed=3) == small != select_subjects(subjects, 0.1, seed=4)
