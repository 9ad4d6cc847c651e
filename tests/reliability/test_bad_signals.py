"""Hostile signals and tables that used to end in exit 1 or in silently wrong outputs (issue 13).

Short runs, ragged time-series tables, atlas tables with non-integer or background indices,
a high-pass above Nyquist, and self-contradicting or non-numeric sidecar TRs.
"""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest
from reliability_helpers import invalid_outputs, sidecar_of_bold, subject_outputs

from tests.conftest import ABIDE, DSEG_TSV

M = ("--model", "none")


def _dropped_warnings(caplog) -> list[str]:
    return [rec.getMessage() for rec in caplog.records if "run dropped" in rec.getMessage()]


# -- short runs: never exit 1 ---------------------------------------------------------------
@pytest.mark.parametrize("n_vols,min_time", [(17, "0"), (20, "100"), (33, "0"), (33, "100")])
def test_short_fmriprep_runs_are_dropped_not_crashed(cli, make_fmriprep, tmp_path, caplog, n_vols, min_time):
    """17 and 33 volumes used to crash in the filters (exit 1); now the run is dropped with the reason."""
    caplog.set_level(logging.WARNING, logger="bids_semantoks")
    bids = make_fmriprep(subjects=("01",), n_vols=n_vols, voxel_mm=8.0)
    out = tmp_path / "out"
    r = cli(bids, out, "participant", *M, "--min-time", min_time)
    assert r.code == 18, r.err  # the only run dropped: nothing produced is not success (issue 12)
    assert "no run had enough usable data" in r.message
    assert not list(out.rglob("*_timeseries.*"))
    warn = _dropped_warnings(caplog)
    assert len(warn) == 1, warn
    if min_time == "100":
        assert "below --min-time 100 s" in warn[0]
    else:
        assert "too few for the band-pass filter" in warn[0] and "--lower-bpf 0 --upper-bpf 0" in warn[0]
    assert invalid_outputs(out) == []


def test_short_run_without_band_pass_is_kept(cli, make_fmriprep, tmp_path):
    """With the filter disabled a 20-volume run (TR 2 s = target) is kept: nothing needs padding."""
    bids = make_fmriprep(subjects=("01",), n_vols=20, voxel_mm=8.0)
    out = tmp_path / "out"
    r = cli(bids, out, "participant", *M, "--min-time", "0", "--lower-bpf", "0", "--upper-bpf", "0")
    assert r.code == 0, r.err
    ts = next(out.rglob("*_timeseries.tsv"))
    assert len(pd.read_csv(ts, sep="\t")) == 20
    meta = json.loads(ts.with_suffix(".json").read_text())
    assert meta["HighPass"] is None and meta["LowPass"] is None


@pytest.fixture
def abide_two(tmp_path):
    root = tmp_path / "ts"
    root.mkdir()
    shutil.copy(ABIDE / "dataset_description.json", root)
    for sub in ("50272", "50273"):
        shutil.copytree(ABIDE / f"sub-{sub}", root / f"sub-{sub}")
    shutil.copytree(ABIDE / "atlas-CC200", tmp_path / "atlas-CC200")
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root, tmp_path / "atlas-CC200" / "atlas-CC200_dseg.tsv"


def test_twenty_row_timeseries_is_dropped(cli, abide_two, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="bids_semantoks")
    root, atlas = abide_two
    ts = next((root / "sub-50272" / "func").glob("*_timeseries.tsv"))
    lines = ts.read_text().splitlines()
    ts.write_text("\n".join(lines[:21]) + "\n")
    out = tmp_path / "out"
    r = cli(root, out, "participant", "--input-type", "timeseries", "--atlas", atlas, *M, "--min-time", "0")
    assert r.code == 0, r.err
    assert subject_outputs(out, "50272") == []
    assert len(subject_outputs(out, "50273")) == 2
    warn = _dropped_warnings(caplog)
    assert len(warn) == 1 and ts.name in warn[0] and "too few" in warn[0]


# -- ragged tables ------------------------------------------------------------------------------
def test_ragged_timeseries_row_is_bad_data(cli, abide_two, tmp_path):
    """One row with 50 of 200 fields used to become 150 silent n/a regions (exit 0)."""
    root, atlas = abide_two
    ts = next((root / "sub-50272" / "func").glob("*_timeseries.tsv"))
    lines = ts.read_text().splitlines()
    lines[7] = "\t".join(lines[7].split("\t")[:50])
    ts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    r = cli(root, out, "participant", "--input-type", "timeseries", "--atlas", atlas, *M)
    assert r.code == 65, r.err
    assert ts.name in r.message and "line 8 has 50 fields but the header has 200" in r.message
    assert subject_outputs(out, "50272") == []
    assert len(subject_outputs(out, "50273")) == 2
    assert invalid_outputs(out) == []


# -- atlas tables -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_index", ["6a", "0"])
def test_atlas_table_bad_index_is_one_early_line(cli, tiny_bids, tmp_path, bad_index):
    table = pd.read_csv(DSEG_TSV, sep="\t", dtype=str)
    table.loc[5, "index"] = bad_index
    tsv = tmp_path / "atlas-Mine_dseg.tsv"
    table.to_csv(tsv, sep="\t", index=False)
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M, "--atlas", tsv)
    assert r.code == 65, r.err
    assert tsv.name in r.message and f"index '{bad_index}' on line 7 is not a positive integer" in r.message
    assert subject_outputs(out, "01") == [] and subject_outputs(out, "02") == []


# -- band-pass edges ----------------------------------------------------------------------------
def test_high_pass_above_nyquist_is_refused(cli, tiny_bids, tmp_path):
    """--lower-bpf 0.3 at TR 2 s (Nyquist 0.25 Hz) used to be skipped while the sidecar said 0.3."""
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M, "--lower-bpf", "0.3", "--upper-bpf", "0", "--participant-label", "01")
    assert r.code == 64, r.err
    assert "--lower-bpf 0.3 Hz is at or above the Nyquist frequency" in r.message and "sub-01" in r.message
    assert not list(out.rglob("*_timeseries.tsv"))


# -- sidecar TR ---------------------------------------------------------------------------------
@pytest.mark.parametrize("meta", [{"SamplingFrequency": "half"}, {"SamplingFrequency": 0.25}],
                         ids=["non_numeric_frequency", "disagreeing_frequency"])
def test_sidecar_tr_problems_are_per_run_bad_data(cli, tiny_bids, tmp_path, meta):
    side = sidecar_of_bold(tiny_bids)
    side.write_text(json.dumps({**json.loads(side.read_text()), **meta}))
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 65, r.err
    assert side.name in r.message and "SamplingFrequency" in r.message
    assert subject_outputs(out, "01") == []
    assert len(subject_outputs(out, "02")) == 2  # the other subject still runs


def test_timeseries_non_numeric_frequency_stops_only_that_run(cli, abide_two, tmp_path):
    root, atlas = abide_two
    side = next((root / "sub-50272" / "func").glob("*_timeseries.json"))
    meta = json.loads(side.read_text())
    meta.pop("RepetitionTime")
    meta["SamplingFrequency"] = "fast"
    side.write_text(json.dumps(meta))
    out = tmp_path / "out"
    r = cli(root, out, "participant", "--input-type", "timeseries", "--atlas", atlas, *M)
    assert r.code == 65, r.err
    assert side.name in r.message and "'fast' is not a number" in r.message
    assert len(subject_outputs(out, "50273")) == 2


def test_short_run_too_short_for_anti_aliasing_is_dropped(cli, make_fmriprep, tmp_path, caplog):
    """17 volumes at TR 1 s without band-pass: the anti-aliasing low-pass before resampling to 2 s
    needs 19 (it used to crash with exit 1 for 16-18 volumes)."""
    caplog.set_level(logging.WARNING, logger="bids_semantoks")
    bids = make_fmriprep(subjects=("01",), n_vols=17, voxel_mm=8.0, tr=1.0)
    out = tmp_path / "out"
    r = cli(bids, out, "participant", *M, "--min-time", "0", "--lower-bpf", "0", "--upper-bpf", "0")
    assert r.code == 18, r.err  # the only run dropped: nothing produced is not success
    warn = _dropped_warnings(caplog)
    assert len(warn) == 1 and "anti-aliasing low-pass" in warn[0] and "needs at least 19" in warn[0]
    assert invalid_outputs(out) == []
