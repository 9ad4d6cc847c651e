"""Discovery with pybids: only the selected subjects are indexed; runs are paired with their files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bids_semantoks.bids.layout import collect_runs, index
from bids_semantoks.config import ParticipantSettings
from bids_semantoks.errors import MissingInputError


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


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def test_one_selected_subject_of_many_reads_only_its_folder(tmp_path, monkeypatch):
    """One subject of 50: pybids never visits the other sub-* folders (it used to list and
    regex-check every one of them, a cost that grows with the dataset), yet every path is BIDS_DIR's,
    the metadata is that subject's, and nothing is written into BIDS_DIR."""
    import bids.layout.index as pybids_index

    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0",
                                                               "DatasetType": "derivative"}))
    for i in range(50):
        func = root / f"sub-{i:02d}" / "func"
        func.mkdir(parents=True)
        for run in ("1", "2"):
            stem = f"sub-{i:02d}_task-rest_run-{run}_space-MNI152NLin2009cAsym"
            for suffix in ("desc-preproc_bold.nii.gz", "desc-brain_mask.nii.gz", "desc-confounds_timeseries.tsv"):
                (func / f"{stem}_{suffix}").write_text("")
            (func / f"{stem}_desc-preproc_bold.json").write_text(json.dumps({"RepetitionTime": 1.0 + i / 100}))
    before = _tree(root)
    visited: list[str] = []
    real = pybids_index._validate_path

    def spy(path, *args, **kwargs):
        visited.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pybids_index, "_validate_path", spy)
    settings = ParticipantSettings(participant_label=["17"])
    db = tmp_path / "db"
    index(root, participant_labels=["17"], database_dir=db)
    (database,) = db.iterdir()
    (database / ".shadow-killed").mkdir()  # a killed job's shadow root: its links go, their targets stay
    os.symlink(root / "sub-03", database / ".shadow-killed" / "sub-03")
    (database / ".complete").unlink()  # (the killed build is redone)
    for attempt in ("built", "reused"):
        runs = collect_runs(index(root, participant_labels=["17"], database_dir=db), settings)
        assert [r.name for r in runs] == ["sub-17_task-rest_run-1", "sub-17_task-rest_run-2"], attempt
        for r in runs:
            assert r.tr == 1.17 and r.metadata == {"RepetitionTime": 1.17}
            for p in (r.bold, r.confounds, r.mask):
                assert p.parent == root.resolve() / "sub-17" / "func" and p.is_file(), (attempt, p)
    assert visited and not [v for v in visited if "/sub-" in v and "/sub-17" not in v]
    assert _tree(root) == before  # nothing written into BIDS_DIR
    assert not list(database.glob(".shadow-*")) and (database / ".complete").is_file()
    # an unknown label names the real folders in its hint
    with pytest.raises(MissingInputError, match="available: 00, 01"):
        collect_runs(index(root, participant_labels=["99"], database_dir=db),
                     ParticipantSettings(participant_label=["99"]))
