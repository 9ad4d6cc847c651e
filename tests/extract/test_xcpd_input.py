"""XCP-D-style input: volumes removed upstream (``<run>_outliers.tsv``) and series filtered upstream."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from bids_semantoks.bids.layout import RunInputs
from bids_semantoks.errors import DataError
from bids_semantoks.extract.prepare import prepare_run
from tests.conftest import ABIDE, run_cli

SETTINGS = {"input_type": "timeseries", "denoise_strategy": "simple", "fd_thresh": 0.5, "std_dvars_thresh": 1.5,
            "min_coverage": 0.5, "lower_bpf": 0.0, "upper_bpf": 0.0, "target_tr": 2.0, "min_time": 0.0}
ATLAS = {"names": ["a", "b", "c"], "label": "X"}


def _xcpd_run(tmp_path, tr=2.5, n=160, removed=range(70, 82), censored_rows=True, meta=None):
    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    t = np.arange(n) * tr
    full = np.stack([np.sin(2 * np.pi * f * t) for f in (0.03, 0.05, 0.07)], axis=1)
    flags = np.zeros(n, dtype=int)
    flags[list(removed)] = 1
    rows = full[flags == 0] if censored_rows else full
    ts = func / "sub-01_task-rest_space-MNI152NLin6Asym_atlas-X_stat-mean_timeseries.tsv"
    pd.DataFrame(rows, columns=ATLAS["names"]).to_csv(ts, sep="\t", index=False)
    pd.DataFrame({"framewise_displacement": flags}).to_csv(func / "sub-01_task-rest_outliers.tsv", sep="\t",
                                                          index=False)
    run = RunInputs(entities={"subject": "01", "task": "rest"}, bold=ts, tr=tr, metadata=meta or {})
    return run, full, flags


@pytest.mark.parametrize("censored_rows", [True, False], ids=["linc_censored", "abcd_interpolated"])
def test_removed_volumes_keep_their_true_times(tmp_path, censored_rows):
    run, full, flags = _xcpd_run(tmp_path, censored_rows=censored_rows)
    prep = prepare_run(run, SETTINGS, ATLAS)
    side = prep.sidecar
    assert side["VolumesRemovedUpstream"] == 12 and side["NumberOfVolumes"] == 160
    assert side["VolumesCensored"] == 12
    # target samples at their true times: the 2-s grid over the full 397.5 s, minus those touching a gap
    t_out = np.arange(int(np.floor(159 * 2.5 / 2.0)) + 1) * 2.0
    gap = (t_out > 69 * 2.5) & (t_out < 82 * 2.5)
    assert prep.data.shape[0] == (~gap).sum() == side["NumberOfSamples"]
    truth = np.sin(2 * np.pi * 0.05 * t_out[~gap])
    r = np.corrcoef(prep.data[:, 1], truth)[0, 1]
    assert r > 0.999, r
    first = int((~gap)[: np.argmax(gap)].sum())
    assert side["ContiguousSegments"] == [[0, first], [first, int((~gap).sum())]]
    assert any(s.endswith("_outliers.tsv") for s in side["Sources"])


def test_outliers_of_another_run_is_bad_data(tmp_path):
    run, _, _ = _xcpd_run(tmp_path)
    outl = run.bold.with_name("sub-01_task-rest_outliers.tsv")
    pd.DataFrame({"framewise_displacement": np.zeros(300, dtype=int)}).to_csv(outl, sep="\t", index=False)
    with pytest.raises(DataError, match="outliers file belongs to another run"):
        prepare_run(run, SETTINGS, ATLAS)


def test_series_filtered_upstream_is_not_band_passed_again(tmp_path):
    meta = {"SoftwareFilters": {"Bandpass filter": {"High-pass cutoff (Hz)": 0.01, "Low-pass cutoff (Hz)": 0.08}}}
    run, _, _ = _xcpd_run(tmp_path, removed=[], meta=meta)
    prep = prepare_run(run, {**SETTINGS, "lower_bpf": 0.01, "upper_bpf": 0.1}, ATLAS)
    assert prep.sidecar["HighPass"] is None and prep.sidecar["LowPass"] is None
    assert "SoftwareFilters" in prep.sidecar["BandPassSkipped"]
    assert prep.sidecar["VolumesRemovedUpstream"] == 0


@pytest.mark.skipif(not ABIDE.is_dir(), reason="shared ABIDE data not available")
def test_cli_reads_xcpd_outliers(tmp_path):
    root = tmp_path / "ts"
    root.mkdir()
    shutil.copy(ABIDE / "dataset_description.json", root)
    shutil.copytree(ABIDE / "sub-50272", root / "sub-50272")
    shutil.copytree(ABIDE / "atlas-CC200", tmp_path / "atlas-CC200")
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    ts = next((root / "sub-50272" / "func").glob("*_timeseries.tsv"))
    n = len(pd.read_csv(ts, sep="\t"))
    flags = np.zeros(n + 6, dtype=int)
    flags[100:106] = 1  # six volumes XCP-D removed: the TSV has n rows of n + 6 acquired
    pd.DataFrame({"framewise_displacement": flags}).to_csv(ts.with_name("sub-50272_task-rest_outliers.tsv"),
                                                          sep="\t", index=False)
    out = tmp_path / "out"
    code = run_cli(root, out, "participant", "--input-type", "timeseries",
                   "--atlas", tmp_path / "atlas-CC200" / "atlas-CC200_dseg.tsv", "--model", "none")
    assert code == 0
    meta = json.loads(next(out.rglob("*_timeseries.json")).read_text())
    assert meta["VolumesRemovedUpstream"] == 6 and meta["NumberOfVolumes"] == n + 6
    assert meta["ContiguousSegments"] == [[0, 100], [100, n]]


@pytest.mark.skipif(not ABIDE.is_dir(), reason="shared ABIDE data not available")
def test_cli_does_not_filter_twice_unless_forced(tmp_path):
    """Through the participant level (the job carries the input's sidecar to the extraction):
    a series whose sidecar records XCP-D's band-pass is not filtered again; --force-bandpass does."""
    root = tmp_path / "ts"
    root.mkdir()
    shutil.copy(ABIDE / "dataset_description.json", root)
    shutil.copytree(ABIDE / "sub-50272", root / "sub-50272")
    shutil.copytree(ABIDE / "atlas-CC200", tmp_path / "atlas-CC200")
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    side = next((root / "sub-50272" / "func").glob("*_timeseries.json"))
    meta = json.loads(side.read_text())
    meta["SoftwareFilters"] = {"Bandpass filter": {"High-pass cutoff (Hz)": 0.01, "Low-pass cutoff (Hz)": 0.08}}
    side.write_text(json.dumps(meta))
    atlas = tmp_path / "atlas-CC200" / "atlas-CC200_dseg.tsv"
    common = ("participant", "--input-type", "timeseries", "--atlas", atlas, "--model", "none")
    out = tmp_path / "out"
    assert run_cli(root, out, *common) == 0
    written = json.loads(next(out.rglob("*_timeseries.json")).read_text())
    assert written["HighPass"] is None and "SoftwareFilters" in written["BandPassSkipped"]
    out2 = tmp_path / "out2"
    assert run_cli(root, out2, *common, "--force-bandpass") == 0
    forced = json.loads(next(out2.rglob("*_timeseries.json")).read_text())
    assert forced["HighPass"] == 0.01 and forced["BandPassSkipped"] is None
