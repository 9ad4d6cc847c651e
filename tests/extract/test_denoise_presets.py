"""Denoising strategies are data presets; ica_aroma reads fMRIPrep's AROMA BOLD (issue 13, item 2)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from tests.conftest import run_cli


def test_presets_are_listed_once():
    from bids_semantoks.extract.denoise import load_strategy, strategy_names

    names = strategy_names()
    assert names[0] == "simple" and set(names) == {"simple", "scrubbing", "compcor", "ica_aroma", "none"}
    assert load_strategy("ica_aroma")["bold_desc"] == "smoothAROMAnonaggr"
    assert load_strategy("ica_aroma")["space"] == "MNI152NLin6Asym"
    assert load_strategy("scrubbing")["censoring"] and not load_strategy("none")["detrend"]
    from bids_semantoks.config import DENOISE_STRATEGIES

    assert set(DENOISE_STRATEGIES) == set(names)  # the settings offer exactly the presets


def _aroma_dataset(make_fmriprep, with_aroma=True):
    bids = make_fmriprep(space="MNI152NLin6Asym", subjects=("01",), n_vols=110, voxel_mm=8.0)
    func = bids / "sub-01" / "func"
    if with_aroma:
        for src in func.glob("*_desc-preproc_bold.*"):
            shutil.copy(src, src.with_name(src.name.replace("desc-preproc", "desc-smoothAROMAnonaggr")))
    return bids


def _quiet_run(*args):
    try:
        return run_cli(*args)
    finally:
        for handler in list(logging.getLogger().handlers):
            if type(handler) is logging.StreamHandler:
                logging.getLogger().removeHandler(handler)


def test_ica_aroma_reads_the_aroma_bold(make_fmriprep, tmp_path):
    bids = _aroma_dataset(make_fmriprep)
    out = tmp_path / "out"
    code = _quiet_run(bids, out, "participant", "--space", "MNI152NLin6Asym", "--denoise-strategy", "ica_aroma",
                      "--model", "none")
    assert code == 0
    meta = json.loads(next(out.rglob("*_timeseries.json")).read_text())
    assert any("desc-smoothAROMAnonaggr_bold" in s for s in meta["Sources"]), meta["Sources"]
    assert meta["DenoiseStrategy"] == "ica_aroma"
    assert {"white_matter", "csf"} <= set(meta["ConfoundsUsed"])
    assert not any(c.startswith(("trans_", "rot_")) for c in meta["ConfoundsUsed"])  # AROMA handled motion


def test_ica_aroma_without_aroma_files_says_how_to_get_them(make_fmriprep, tmp_path, capsys):
    bids = _aroma_dataset(make_fmriprep, with_aroma=False)
    code = _quiet_run(bids, tmp_path / "out", "participant", "--space", "MNI152NLin6Asym",
                      "--denoise-strategy", "ica_aroma", "--model", "none")
    err = capsys.readouterr().err
    assert code == 66
    assert "desc-smoothAROMAnonaggr_bold" in err and "--use-aroma" in err


def test_ica_aroma_needs_its_space(make_fmriprep, tmp_path, capsys):
    bids = _aroma_dataset(make_fmriprep)
    code = _quiet_run(bids, tmp_path / "out", "participant", "--denoise-strategy", "ica_aroma", "--model", "none")
    err = capsys.readouterr().err
    assert code == 64 and "--space MNI152NLin6Asym" in err
