"""Bad confounds, sidecars (RepetitionTime), short or censored runs and time-series TSVs."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import pandas as pd
import pytest
from reliability_helpers import bold_of, confounds_of, invalid_outputs, sidecar_of_bold, subject_outputs

from tests.conftest import ABIDE

M = ("--model", "none")


def _only_02_done(out):
    assert subject_outputs(out, "01") == []
    assert len(subject_outputs(out, "02")) == 2  # the other subject's TSV + JSON
    assert invalid_outputs(out) == []


# -- confounds --------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["missing_columns", "wrong_rows", "non_numeric", "garbage"])
def test_bad_confounds(cli, tiny_bids, tmp_path, damage):
    conf = confounds_of(tiny_bids)
    frame = pd.read_csv(conf, sep="\t")
    if damage == "missing_columns":
        frame = frame.drop(columns=[c for c in frame.columns if c.startswith(("trans_", "rot_"))])
    elif damage == "wrong_rows":
        frame = frame.iloc[:-7]
    elif damage == "non_numeric":
        frame["trans_x"] = frame["trans_x"].astype(object)
        frame.loc[12, "trans_x"] = "oops"
    if damage == "garbage":
        conf.write_bytes(b"\x00\x01\x02 not a table \xff\n\x00")
    else:
        frame.to_csv(conf, sep="\t", index=False, na_rep="n/a")
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 65, r.err
    assert conf.name in r.message
    _only_02_done(out)


def test_missing_confounds_file(cli, tiny_bids, tmp_path):
    conf = confounds_of(tiny_bids)
    conf.unlink()
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 66 and "desc-confounds_timeseries.tsv" in r.message and "--denoise-strategy none" in r.message
    _only_02_done(out)


# -- RepetitionTime --------------------------------------------------------------------------
@pytest.mark.parametrize("tr", [None, 0, -2, "two", 2.5])
def test_bad_repetition_time(cli, tiny_bids, tmp_path, tr):
    side = sidecar_of_bold(tiny_bids)
    meta = json.loads(side.read_text())
    if tr is None:
        del meta["RepetitionTime"]
    else:
        meta["RepetitionTime"] = tr
    side.write_text(json.dumps(meta))
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 65, r.err
    assert "RepetitionTime" in r.message
    assert (side.name if tr != 2.5 else bold_of(tiny_bids).name) in r.message
    if tr == 2.5:
        assert "header" in r.message
    _only_02_done(out)


def test_sidecar_bad_json(cli, tiny_bids, tmp_path):
    side = sidecar_of_bold(tiny_bids)
    side.write_text('{"RepetitionTime": 2.0,')
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 65 and side.name in r.message
    _only_02_done(out)


def test_header_tr_in_milliseconds_is_fine(cli, tiny_bids, tmp_path):
    bold = bold_of(tiny_bids)
    img = nib.load(bold)
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms(img.header.get_zooms()[:3] + (2000.0,))
    nib.save(img, bold)
    r = cli(tiny_bids, tmp_path / "out", "participant", *M, "--participant-label", "01")
    assert r.code == 0, r.err


# -- short and censored runs ------------------------------------------------------------------
def test_run_shorter_than_min_time_is_dropped(cli, make_fmriprep, tmp_path, caplog):
    bids = make_fmriprep(subjects=("01",), n_vols=40, voxel_mm=8.0)  # 80 s
    out = tmp_path / "out"
    r = cli(bids, out, "participant", *M)
    # its only run dropped: nothing produced is not success (issue 12), 18 with one clear line
    assert r.code == 18, r.err
    assert "--min-time" in r.message
    assert not list(out.rglob("*_timeseries.*"))
    warn = [rec.getMessage() for rec in caplog.records if "run dropped" in rec.getMessage()]
    assert len(warn) == 1 and "desc-preproc_bold.nii.gz" in warn[0] and "--min-time" in warn[0]
    assert invalid_outputs(out) == []


def test_run_emptied_by_censoring(cli, tiny_bids, tmp_path, caplog):
    conf = confounds_of(tiny_bids)
    frame = pd.read_csv(conf, sep="\t")
    frame["framewise_displacement"] = 3.0
    frame.to_csv(conf, sep="\t", index=False, na_rep="n/a")
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M, "--denoise-strategy", "scrubbing", "--min-time", "0")
    assert r.code == 0, r.err
    assert subject_outputs(out, "01") == []
    assert len(subject_outputs(out, "02")) == 2
    warn = [rec.getMessage() for rec in caplog.records if "run dropped" in rec.getMessage()]
    assert len(warn) == 1 and "sub-01" in warn[0] and "censoring" in warn[0]


def test_short_run_with_model_is_zero_padded(cli, make_fmriprep, tmp_path):
    """Shorter than one 100-TR window but kept (--min-time 0): embedded with zero padding, said so."""
    bids = make_fmriprep(subjects=("01",), n_vols=60, voxel_mm=8.0)
    out = tmp_path / "out"
    from reliability_helpers import PARITY_CKPT

    r = cli(bids, out, "participant", "--model", PARITY_CKPT, "--min-time", "0", "--device", "cpu")
    assert r.code == 0, r.err
    meta = json.loads(next(out.rglob("*_task-rest_*_embedding.json")).read_text())
    assert meta["ZeroPadded"] and meta["Warnings"]
    assert invalid_outputs(out) == []


# -- time-series input ------------------------------------------------------------------------
@pytest.fixture
def small_timeseries(tmp_path):
    root = tmp_path / "ts"
    root.mkdir()
    shutil.copy(ABIDE / "dataset_description.json", root)
    for sub in ("50272", "50273"):
        shutil.copytree(ABIDE / f"sub-{sub}", root / f"sub-{sub}")
    shutil.copytree(ABIDE / "atlas-CC200", tmp_path / "atlas-CC200")
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root, tmp_path / "atlas-CC200" / "atlas-CC200_dseg.tsv"


@pytest.mark.parametrize("damage", ["renamed_column", "no_header_match", "non_numeric", "empty"])
def test_timeseries_tsv_bad(cli, small_timeseries, tmp_path, damage):
    root, atlas = small_timeseries
    bad = next((root / "sub-50272" / "func").glob("*_timeseries.tsv"))
    frame = pd.read_csv(bad, sep="\t")
    if damage == "renamed_column":
        frame = frame.rename(columns={"CC200_007": "ROI_7"})
    elif damage == "no_header_match":
        frame.columns = [f"c{i}" for i in range(frame.shape[1])]
    elif damage == "non_numeric":
        frame["CC200_003"] = frame["CC200_003"].astype(object)
        frame.loc[5, "CC200_003"] = "x1"
    if damage == "empty":
        bad.write_text("")
    else:
        frame.to_csv(bad, sep="\t", index=False)
    out = tmp_path / "out"
    r = cli(root, out, "participant", "--input-type", "timeseries", "--atlas", atlas, *M)
    assert r.code == 65, r.err
    assert bad.name in r.message
    if damage == "renamed_column":
        assert "ROI_7" in r.message and "--atlas" in r.message
    assert subject_outputs(out, "50272") == []
    assert len(subject_outputs(out, "50273")) == 2
    assert invalid_outputs(out) == []
