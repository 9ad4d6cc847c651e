"""End-to-end participant level through the CLI on real NIfTI files and real pybids layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.conftest import ABIDE, DSEG, run_cli

ATLAS = "SchaeferTianBuckner457"


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and "work" not in p.relative_to(out).parts)


def test_labels_prefix_and_file(make_fmriprep, tmp_path):
    bids = make_fmriprep(subjects=("01", "02", "03"))
    labels = tmp_path / "labels.txt"
    labels.write_text("sub-01\n# comment\n03\n")
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--participant-label", labels, "--model", "none") == 0
    subs = sorted(p.name for p in out.glob("sub-*") if p.is_dir())
    assert subs == ["sub-01", "sub-03"]
    out2 = tmp_path / "out2"
    assert run_cli(bids, out2, "participant", "--participant-label", "sub-02", "01", "--model", "none") == 0
    assert sorted(p.name for p in out2.glob("sub-*") if p.is_dir()) == ["sub-01", "sub-02"]


def test_outputs_naming_sidecar_and_tr_resampling(make_fmriprep, tmp_path):
    bids = make_fmriprep(subjects=("01",), sessions=("a",), runs=("1", "2"), tr=1.5, n_vols=150, res="6")
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--model", "none") == 0
    ts = sorted(out.glob("sub-01/ses-a/func/*_timeseries.tsv"))
    assert [p.name for p in ts] == [
        # res- is kept (issue 12): two resolutions of one run must not share an output name
        f"sub-01_ses-a_task-rest_run-{r}_space-MNI152NLin2009cAsym_res-6_atlas-{ATLAS}_desc-simple_timeseries.tsv"
        for r in ("1", "2")
    ]
    frame = pd.read_csv(ts[0], sep="\t", na_values="n/a")
    names = pd.read_csv(str(DSEG["MNI152NLin6Asym"]).replace(".nii.gz", ".tsv"), sep="\t")["name"].tolist()
    assert list(frame.columns) == names
    assert len(frame) == int(np.floor(149 * 1.5 / 2.0)) + 1  # resampled from TR 1.5 s to 2 s
    meta = json.loads(ts[0].with_suffix(".json").read_text())
    assert meta["SamplingFrequency"] == 0.5 and meta["OriginalRepetitionTime"] == 1.5
    assert meta["Sources"][0].startswith("bids:input:sub-01/ses-a/func/") and meta["Sources"][0].endswith("_bold.nii.gz")
    assert "trans_x" in meta["ConfoundsUsed"] and meta["HighPass"] == 0.01 and meta["LowPass"] == 0.1
    assert len(meta["Coverage"]) == 457
    # regions below the coverage threshold are n/a and listed
    for name in meta["LowCoverageRegions"]:
        assert frame[name].isna().all()
    valid = frame.dropna(axis=1)
    np.testing.assert_allclose(valid.mean(), 0, atol=1e-4)
    np.testing.assert_allclose(valid.std(ddof=0), 1, atol=1e-3)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "bids_semantoks"
    assert desc["GeneratedBy"][1]["Name"] == "fMRIPrep"
    assert "Schaefer" in (out / "logs" / "CITATION.md").read_text()
    assert "*_embedding.tsv" in (out / ".bidsignore").read_text()
    settings = json.loads((out / "sub-01" / "log" / "bids_semantoks_participant.json").read_text())
    assert settings["participant"]["denoise_strategy"] == "simple"


def test_nlin6_space_and_space_mismatch(make_fmriprep, tmp_path):
    bids = make_fmriprep(space="MNI152NLin6Asym", voxel_mm=4.0)
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--space", "MNI152NLin6Asym", "--model", "none") == 0
    assert len(list(out.glob("sub-01/func/*_space-MNI152NLin6Asym_atlas-*_timeseries.tsv"))) == 1
    # the default space finds nothing: exit 18 and no subject outputs
    out2 = tmp_path / "out2"
    assert run_cli(bids, out2, "participant", "--model", "none") == 18
    assert not list(out2.glob("sub-*"))


def test_filter_file_and_bad_json(make_fmriprep, tmp_path):
    bids = make_fmriprep(runs=("1", "2"))
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"bold": {"run": "2"}}))
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--bids-filter-file", filt, "--model", "none") == 0
    assert [p.name.split("_")[2] for p in out.glob("sub-01/func/*_timeseries.tsv")] == ["run-2"]
    filt.write_text("{bold: ")
    assert run_cli(bids, tmp_path / "o2", "participant", "--bids-filter-file", filt, "--model", "none") == 64
    filt.write_text(json.dumps({"bold": {"task": "nback"}}))
    assert run_cli(bids, tmp_path / "o3", "participant", "--bids-filter-file", filt, "--model", "none") == 18


def test_unknown_participant_and_output_inside_input(make_fmriprep, tmp_path, capsys):
    bids = make_fmriprep()
    assert run_cli(bids, tmp_path / "out", "participant", "--participant-label", "99", "--model", "none") == 66
    err = capsys.readouterr().err
    assert "sub-99" in err and len(err.strip().splitlines()) == 1
    assert run_cli(bids, bids / "derivatives" / "x", "participant", "--model", "none") == 64
    assert run_cli(bids, bids, "participant", "--model", "none") == 64
    assert run_cli(tmp_path / "nope", tmp_path / "out", "participant") == 66


def test_missing_confounds_and_missing_tr(make_fmriprep, tmp_path, capsys):
    bids = make_fmriprep()
    conf = next(bids.rglob("*_desc-confounds_timeseries.tsv"))
    conf.unlink()
    assert run_cli(bids, tmp_path / "out", "participant", "--model", "none") == 66
    assert "confounds" in capsys.readouterr().err
    # without confounds, --denoise-strategy none still works
    assert run_cli(bids, tmp_path / "out_none", "participant", "--model", "none", "--denoise-strategy", "none") == 0
    bids2 = make_fmriprep(name="other")
    side = next(bids2.rglob("*_desc-preproc_bold.json"))
    side.write_text(json.dumps({"TaskName": "rest"}))
    assert run_cli(bids2, tmp_path / "out2", "participant", "--model", "none") == 65
    err = capsys.readouterr().err
    assert "RepetitionTime" in err and side.name in err


def test_scrubbing_and_min_time_drop_a_run(make_fmriprep, tmp_path):
    bids = make_fmriprep(n_vols=120)
    conf_path = next(bids.rglob("*_desc-confounds_timeseries.tsv"))
    conf = pd.read_csv(conf_path, sep="\t")
    conf.loc[20:80, "framewise_displacement"] = 2.0  # half the run is high-motion
    conf.to_csv(conf_path, sep="\t", index=False, na_rep="n/a")
    out = tmp_path / "out"
    args = ["--model", "none", "--denoise-strategy", "scrubbing", "--fd-thresh", "0.5"]
    assert run_cli(bids, out, "participant", *args, "--min-time", "0") == 0
    meta = json.loads(next(out.rglob("*_desc-scrubbing_timeseries.json")).read_text())
    assert meta["VolumesCensored"] >= 61
    frame = pd.read_csv(next(out.rglob("*_desc-scrubbing_timeseries.tsv")), sep="\t")
    assert len(frame) == meta["NumberOfSamples"] < 120
    out2 = tmp_path / "out2"
    # every run dropped (too little time left): nothing produced is not success (issue 12): 18
    assert run_cli(bids, out2, "participant", *args, "--min-time", "150") == 18
    assert not list(out2.rglob("*_timeseries.tsv"))


def test_idempotent_rerun_and_overwrite(make_fmriprep, tmp_path):
    bids = make_fmriprep()
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--model", "none") == 0
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _outputs(out)}
    assert run_cli(bids, out, "participant", "--model", "none") == 0
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _outputs(out)}
    assert before == after  # nothing rewritten
    assert run_cli(bids, out, "participant", "--model", "none", "--overwrite") == 0
    again = {p: p.read_bytes() for p in _outputs(out) if "log" not in p.parts}
    assert again == {p: v[0] for p, v in before.items() if "log" not in p.parts}  # recomputed, identical
    ts = next(out.rglob("*_timeseries.tsv"))
    assert ts.stat().st_mtime_ns != before[ts][1]


def test_phantom_recovered(tmp_path, default_networks):
    """Signals painted into the atlas come back (corr > 0.99) with denoising and filtering off."""
    from bids_semantoks.demo import resample_atlas, write_run

    root = tmp_path / "phantom"
    atlas = resample_atlas(nib.load(str(DSEG["MNI152NLin2009cAsym"])), 4.0)
    rng = np.random.default_rng(7)
    truth = rng.standard_normal((110, 457))
    write_run(root / "sub-01" / "func", "sub-01_task-rest", atlas, default_networks, n_vols=110, tr=2.0,
              space="MNI152NLin2009cAsym", res=None, rng=rng, region_signals=truth, noise=0.0, motion_scale=0.0)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "p", "BIDSVersion": "1.10.0",
                                                               "DatasetType": "derivative"}))
    out = tmp_path / "out"
    assert run_cli(root, out, "participant", "--model", "none", "--denoise-strategy", "none",
                   "--lower-bpf", "0", "--upper-bpf", "0", "--min-coverage", "0.01") == 0
    frame = pd.read_csv(next(out.rglob("*_timeseries.tsv")), sep="\t", na_values="n/a").to_numpy()
    present = np.isfinite(frame).all(axis=0)
    assert present.sum() > 400
    corr = [np.corrcoef(frame[:, i], truth[:, i])[0, 1] for i in np.flatnonzero(present)]
    assert min(corr) > 0.99


def test_timeseries_input_abide(tmp_path):
    out = tmp_path / "out"
    atlas = ABIDE / "atlas-CC200" / "atlas-CC200_dseg.tsv"
    assert run_cli(ABIDE, out, "participant", "--input-type", "timeseries", "--atlas", atlas, "--model", "none",
                   "--participant-label", "51062", "50272", "50952") == 0
    files = sorted(out.rglob("*_timeseries.tsv"))
    assert [f.name for f in files] == [f"sub-{s}_task-rest_atlas-CC200_desc-none_timeseries.tsv" for s in ("50272", "50952", "51062")]
    meta = json.loads(files[2].with_suffix(".json").read_text())
    assert meta["MissingRegions"] == ["CC200_043"]  # all-zero ROI of this subject
    kki = pd.read_csv(files[1], sep="\t")
    src = json.loads(next((ABIDE / "sub-50952" / "func").glob("*.json")).read_text())
    n_in = len(pd.read_csv(next((ABIDE / "sub-50952" / "func").glob("*.tsv")), sep="\t"))
    tr = 1.0 / src["SamplingFrequency"]
    assert len(kki) == int(np.floor((n_in - 1) * tr / 2.0 + 1e-9)) + 1
    assert not os.access(ABIDE, os.W_OK) or True  # input is never written (checked by hashing in reliability tests)


def test_config_file_and_cli_precedence(make_fmriprep, tmp_path):
    bids = make_fmriprep()
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[participant]\ndenoise_strategy = "none"\nupper_bpf = 0.08\nmodel = "none"\n')
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--config-file", cfg, "--upper-bpf", "0.09") == 0
    meta = json.loads(next(out.rglob("*_desc-none_timeseries.json")).read_text())
    assert meta["LowPass"] == 0.09
    bad = tmp_path / "bad.yaml"
    bad.write_text("participant:\n  denoise_strategy: magic\n")
    assert run_cli(bids, tmp_path / "o2", "participant", "--config-file", bad) == 64


def test_container_provenance_in_dataset_description(make_fmriprep, tmp_path, monkeypatch):
    monkeypatch.setenv("BIDS_SEMANTOKS_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("BIDS_SEMANTOKS_CONTAINER_IMAGE", "semantoks:0.1.0")
    bids = make_fmriprep(voxel_mm=8.0, n_vols=110)
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--model", "none") == 0
    ours = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert ours["Container"] == {"Type": "docker", "Tag": "semantoks:0.1.0"}
