"""User atlases get a valid BIDS ``atlas-<label>``: pybids parses every output name back.

Before: ``--atlas .../Schaefer400-7N_TianS3_Buckner7_MNI152NLin2009cAsym_2mm_dseg.tsv`` wrote
``..._atlas-Schaefer400-7N_TianS3_Buckner7_MNI152NLin2009cAsym_2mm_desc-..._timeseries.tsv``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bids.layout import parse_file_entities

from bids_semantoks.atlas.registry import get_user_atlas, user_atlas_label
from bids_semantoks.errors import UsageError

SHARED_DERIVED = Path(__file__).resolve().parents[2].parent / "shared" / "atlases" / "derived"
ISSUE_NAME = "Schaefer400-7N_TianS3_Buckner7_MNI152NLin2009cAsym_2mm_dseg"
LABEL = "Schaefer4007NTianS3Buckner7MNI152NLin2009cAsym2mm"


@pytest.mark.parametrize(("name", "label"), [
    (f"{ISSUE_NAME}.tsv", LABEL),
    ("atlas-CC200_dseg.tsv", "CC200"),
    ("atlas-CC200_space-MNI152NLin6Asym_res-2_dseg.tsv", "CC200"),  # the atlas- entity, not the rest
    ("tpl-X_atlas-My-Atlas.v2_dseg.tsv", "MyAtlasv2"),
    ("my atlas (v2)_dseg.tsv", "myatlasv2"),
    ("atlasé_dseg.tsv", "atlas"),  # BIDS labels are ASCII alphanumeric
])
def test_user_atlas_label(name, label):
    assert user_atlas_label(name) == label


def test_user_atlas_label_needs_a_letter():
    with pytest.raises(UsageError, match="atlas-<label>_dseg.tsv"):
        user_atlas_label("-_-_dseg.tsv")


def run_cli(*args) -> int:
    from bids_semantoks.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0)


@pytest.fixture
def issue_atlas(tmp_path) -> Path:
    folder = tmp_path / "atlases"
    folder.mkdir()
    for ext in (".tsv", ".nii.gz"):
        shutil.copyfile(SHARED_DERIVED / f"{ISSUE_NAME}{ext}", folder / f"{ISSUE_NAME}{ext}")
    return folder / f"{ISSUE_NAME}.tsv"


def test_resolved_user_atlas_label(issue_atlas):
    resolved = get_user_atlas(issue_atlas, "MNI152NLin2009cAsym")
    assert resolved.label == LABEL and resolved.dseg_img_path.name == f"{ISSUE_NAME}.nii.gz"


def test_participant_outputs_parse_back(make_fmriprep, issue_atlas, tmp_path):
    """Every output name of a participant run with such an atlas parses into the entities we meant."""
    from bids_semantoks.atlas.registry import get_default_table
    from bids_semantoks.demo_run import make_demo_model

    bids = make_fmriprep(n_vols=110)
    table = get_default_table()
    model = make_demo_model(tmp_path / "models" / "demotiny", table.networks, table.network_index.tolist())
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--atlas", issue_atlas, "--model", model,
                   "--min-coverage", "0.01", "-w", tmp_path / "work") == 0
    files = sorted(p for p in (out / "sub-01").rglob("*") if p.is_file() and "log" not in p.parts)
    assert any(p.name.endswith("_timeseries.tsv") for p in files)
    assert any("_embedding" in p.name for p in files)
    long = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition", "run": "run",
            "space": "space", "res": "resolution", "atlas": "atlas", "desc": "desc"}
    for path in files:
        ents = parse_file_entities(str(path))
        stem_parts = path.name.split(".")[0].split("_")
        assert ents.get("atlas") == LABEL and ents["subject"] == "01", path.name
        assert ents.get("suffix") == stem_parts[-1], path.name
        for part in stem_parts[:-1]:  # each key-value pair of the name is the entity pybids reads
            key, sep, value = part.partition("-")
            assert sep and value.isalnum() and value.isascii(), f"{path.name}: {part!r}"
            assert str(ents.get(long[key])) == value, f"{path.name}: {key} parsed as {ents.get(long[key])!r}"
