"""Discovery with pybids: only the selected subjects are indexed; runs are paired with their files."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bids_semantoks.bids.layout import collect_runs, index
from bids_semantoks.config import ParticipantSettings


def _many_subjects(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0",
                                                               "DatasetType": "derivative"}))
    for i in range(n):
        func = root / f"sub-{i:04d}" / "func"
        func.mkdir(parents=True)
        for suffix in ("desc-preproc_bold.nii.gz", "desc-brain_mask.nii.gz", "desc-preproc_bold.json"):
            (func / f"sub-{i:04d}_task-rest_space-MNI152NLin2009cAsym_{suffix}").write_text("{}")


def test_only_selected_subjects_are_indexed(tmp_path):
    root = tmp_path / "ds"
    _many_subjects(root, 200)
    t0 = time.perf_counter()
    layout = index(root, participant_labels=["0007"], database_dir=tmp_path / "db")
    one = time.perf_counter() - t0
    assert layout.get_subjects() == ["0007"]
    assert len(layout.get(suffix="bold", extension=".nii.gz")) == 1
    # the database is kept and reused; another selection gets its own database
    assert len(list((tmp_path / "db").iterdir())) == 1
    layout2 = index(root, participant_labels=["0008", "0009"], database_dir=tmp_path / "db")
    assert layout2.get_subjects() == ["0008", "0009"]
    assert len(list((tmp_path / "db").iterdir())) == 2
    assert one < 60  # sanity only; speed is measured in benchmarks/, not here


def test_runs_paired_with_confounds_mask_and_tr(make_fmriprep):
    bids = make_fmriprep(subjects=("01",), sessions=("a", "b"), runs=("1",), res="6")
    settings = ParticipantSettings(session_label=["ses-b"])
    runs = collect_runs(index(bids), settings)
    assert [r.name for r in runs] == ["sub-01_ses-b_task-rest_run-1"]
    run = runs[0]
    assert run.tr == 2.0 and run.res == "6" and run.space == "MNI152NLin2009cAsym"
    assert run.confounds.name == "sub-01_ses-b_task-rest_run-1_desc-confounds_timeseries.tsv"
    assert run.mask.name.endswith("_res-6_desc-brain_mask.nii.gz") and "ses-b" in run.mask.name
