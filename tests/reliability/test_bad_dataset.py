"""Bad BIDS_DIR / OUTPUT_DIR / selection: one line naming the path and the fix, a documented
exit code, and nothing written (OUTPUT_DIR not even created when the inputs are wrong)."""

from __future__ import annotations

import json

from reliability_helpers import output_files

M = ("--model", "none")


def _nothing_written(out):
    assert not out.exists() or not [p for p in output_files(out) if "sub-" in str(p)], output_files(out)


def test_bids_dir_missing(cli, tmp_path):
    out = tmp_path / "out"
    r = cli(tmp_path / "nope", out, "participant", *M)
    assert r.code == 66
    assert str(tmp_path / "nope") in r.message and "BIDS_DIR" in r.message
    assert not out.exists()


def test_bids_dir_not_a_dataset(cli, tmp_path):
    bids = tmp_path / "empty"
    bids.mkdir()
    out = tmp_path / "out"
    r = cli(bids, out, "participant", *M)
    assert r.code == 66
    assert "dataset_description.json" in r.message and "derivatives" in r.message
    assert not out.exists()


def test_bids_dir_invalid_description(cli, tiny_bids, tmp_path):
    (tiny_bids / "dataset_description.json").write_text("{not json")
    r = cli(tiny_bids, tmp_path / "out", "participant", *M)
    assert r.code == 65 and "dataset_description.json" in r.message
    assert not (tmp_path / "out").exists()


def test_raw_dataset_instead_of_fmriprep(cli, tiny_bids, tmp_path):
    desc = json.loads((tiny_bids / "dataset_description.json").read_text())
    desc["DatasetType"] = "raw"
    (tiny_bids / "dataset_description.json").write_text(json.dumps(desc))
    r = cli(tiny_bids, tmp_path / "out", "participant", *M)
    assert r.code == 64
    assert "raw BIDS dataset" in r.message and "fMRIPrep" in r.message
    assert not (tmp_path / "out").exists()


def test_fmriprep_1x_description_without_dataset_type(cli, tiny_bids, tmp_path):
    """fMRIPrep 1.x wrote no DatasetType (BIDS < 1.4) but a PipelineDescription: a derivative."""
    (tiny_bids / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.1.1",
        "PipelineDescription": {"Name": "fMRIPrep", "Version": "1.5.10", "CodeURL": "https://github.com/nipreps/fmriprep"},
    }))
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 0, r.message
    desc = json.loads((out / "dataset_description.json").read_text())
    assert [g["Name"] for g in desc["GeneratedBy"]] == ["bids_semantoks", "fMRIPrep"]
    assert desc["GeneratedBy"][1]["Version"] == "1.5.10"


def test_raw_description_without_dataset_type_is_refused(cli, tiny_bids, tmp_path):
    """No DatasetType and no pipeline record: BIDS says raw."""
    (tiny_bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.1.1"}))
    r = cli(tiny_bids, tmp_path / "out", "participant", *M)
    assert r.code == 64 and "raw BIDS dataset" in r.message
    assert not (tmp_path / "out").exists()


def test_derivative_without_preproc_bold(cli, tmp_path):
    """A derivatives dataset that is not fMRIPrep's (no desc-preproc_bold at all)."""
    bids = tmp_path / "other"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz").write_bytes(b"")
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    out = tmp_path / "out"
    r = cli(bids, out, "participant", *M)
    assert r.code == 18 and "desc-preproc_bold" in r.message
    _nothing_written(out)


def test_output_inside_or_equal_to_bids_dir(cli, tiny_bids):
    r = cli(tiny_bids, tiny_bids / "derivatives" / "semantoks", "participant", *M)
    assert r.code == 64 and "inside BIDS_DIR" in r.message
    assert not (tiny_bids / "derivatives").exists()
    r = cli(tiny_bids, tiny_bids, "participant", *M)
    assert r.code == 64 and "equals BIDS_DIR" in r.message
    # the same folder through a symbolic link is still the same folder
    link = tiny_bids.parent / "link"
    link.symlink_to(tiny_bids)
    r = cli(tiny_bids, link, "participant", *M)
    assert r.code == 64 and "equals BIDS_DIR" in r.message


def test_participant_not_found(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--participant-label", "01", "99", *M)
    assert r.code == 66
    assert "sub-99" in r.message and "available: 01, 02" in r.message
    _nothing_written(out)


def test_filters_select_nothing(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "-t", "nback", *M)
    assert r.code == 18 and "no desc-preproc_bold" in r.message and "tasks present: rest" in r.message
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"bold": {"acquisition": "mb8"}}))
    r = cli(tiny_bids, out, "participant", "--bids-filter-file", filt, *M)
    assert r.code == 18 and "change --space or the filters" in r.message
    r = cli(tiny_bids, out, "participant", "--space", "MNI152NLin6Asym", *M)
    assert r.code == 18 and "MNI152NLin2009cAsym" in r.message  # names the spaces present
    _nothing_written(out)


def test_filter_file_bad_json(cli, tiny_bids, tmp_path):
    filt = tmp_path / "filter.json"
    filt.write_text('{"bold": {"task": "rest",}}')
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--bids-filter-file", filt, *M)
    assert r.code == 64
    assert str(filt) in r.message and "invalid JSON" in r.message and "line 1" in r.message
    assert not out.exists()
    filt.write_text('["bold"]')
    r = cli(tiny_bids, out, "participant", "--bids-filter-file", filt, *M)
    assert r.code == 64 and str(filt) in r.message
    r = cli(tiny_bids, out, "participant", "--bids-filter-file", tmp_path / "missing.json", *M)
    assert r.code == 66 and "missing.json" in r.message
    assert not out.exists()


def test_bad_option_is_usage_error(cli, tiny_bids, tmp_path):
    r = cli(tiny_bids, tmp_path / "out", "participant", "--min-coverage", "2", *M)
    assert r.code == 64 and "min_coverage" in r.message
    assert not (tmp_path / "out").exists()
