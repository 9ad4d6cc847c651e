"""Shared fixtures: paths into ../shared, the atlas cache, synthetic fMRIPrep datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_ATLASES = SHARED / "atlases"
ABIDE = SHARED / "data" / "abide_cc200"
PARITY = SHARED / "fixtures" / "reference_parity"
DSEG = {
    "MNI152NLin2009cAsym": SHARED_ATLASES / "derived" / "Schaefer400-7N_TianS3_Buckner7_MNI152NLin2009cAsym_2mm_dseg.nii.gz",
    "MNI152NLin6Asym": SHARED_ATLASES / "derived" / "Schaefer400-7N_TianS3_Buckner7_MNI152NLin6Asym_2mm_dseg.nii.gz",
}
DSEG_TSV = SHARED_ATLASES / "derived" / "Schaefer400-7N_TianS3_Buckner7_MNI152NLin6Asym_2mm_dseg.tsv"

# Tests use the read-only shared atlas folder as the app's atlas cache (no network).
os.environ.setdefault("BIDS_SEMANTOKS_ATLAS_DIR", str(SHARED_ATLASES))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need the read-only shared folder beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def default_networks() -> np.ndarray:
    from bids_semantoks.atlas import AtlasTable

    return AtlasTable.from_tsv(DSEG_TSV).network_index


@pytest.fixture
def make_fmriprep(tmp_path, default_networks):
    """Factory: a small synthetic fMRIPrep dataset (real NIfTI, sidecars, confounds)."""
    from bids_semantoks.demo import make_dataset

    def _make(name="fmriprep", space="MNI152NLin2009cAsym", **kwargs):
        kwargs.setdefault("subjects", ("01",))
        kwargs.setdefault("voxel_mm", 6.0)
        kwargs.setdefault("n_vols", 140)
        kwargs.setdefault("tr", 2.0)
        return make_dataset(tmp_path / name, DSEG[space], default_networks, space=space, **kwargs)

    return _make


def run_cli(*args) -> int:
    """Run the CLI in-process and return its exit code."""
    from bids_semantoks.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0)
