"""TemplateFlow, offline: grids, brain masks and Schaefer 2018 files from a TEMPLATEFLOW_HOME.

The home is laid out in a temporary folder from ../shared/atlases (TemplateFlow's own
``template_description.json`` files come from the ``templateflow`` package's skeleton); every
test runs with sockets refused, so a network attempt by templateflow would fail it.
"""

from __future__ import annotations

import importlib.util
import socket
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_semantoks.atlas import templates
from bids_semantoks.atlas.build import derived_stem
from bids_semantoks.atlas.registry import load_registry
from bids_semantoks.errors import DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "atlases"
NLIN6, C2009 = "MNI152NLin6Asym", "MNI152NLin2009cAsym"
SCHAEFER = "atlas-Schaefer2018_desc-400Parcels7Networks_dseg.nii.gz"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt (templateflow's S3 or GitHub) fails the test loudly."""
    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a[0] if a else None))
    templates._description.cache_clear()


def _ras(img: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
    """The image stored RAS, as TemplateFlow stores its volumes (same voxel centres)."""
    ras = nib.as_closest_canonical(img)
    out = nib.Nifti1Image(np.asarray(ras.dataobj).astype(dtype), ras.affine)
    out.set_qform(ras.affine, 4)
    out.set_sform(ras.affine, 4)
    return out


@pytest.fixture
def tf_home(tmp_path, monkeypatch) -> Path:
    """A TemplateFlow home with the files fMRIPrep users typically have, made from ../shared/atlases.

    - NLin6 res-02: brain mask (our NLin6 atlas > 0) and Schaefer 400x7 (CBIG's FSL 2 mm volume),
      both stored RAS like TemplateFlow's (CBIG: LAS);
    - 2009c res-02: Schaefer 400x7 (the Schaefer part of Tian's 2009c combined file), and the brain
      mask only as TemplateFlow's empty not-downloaded placeholder.
    """
    if not (SHARED / "derived").is_dir():
        pytest.skip(f"{SHARED} not found")
    home = tmp_path / "templateflow"
    skel = Path(importlib.util.find_spec("templateflow").origin).parent / "conf" / "templateflow-skel.zip"
    with zipfile.ZipFile(skel) as zf:
        for space in (NLIN6, C2009):
            (home / f"tpl-{space}").mkdir(parents=True)
            (home / f"tpl-{space}" / "template_description.json").write_bytes(
                zf.read(f"tpl-{space}/template_description.json"))
    d6 = nib.load(SHARED / "derived" / f"{derived_stem(NLIN6)}.nii.gz")
    mask = nib.Nifti1Image((np.asarray(d6.dataobj) > 0).astype(np.uint8), d6.affine)
    nib.save(_ras(mask, np.uint8), home / f"tpl-{NLIN6}" / f"tpl-{NLIN6}_res-02_desc-brain_mask.nii.gz")
    cbig = nib.load(SHARED / "cbig_schaefer2018" / "Schaefer2018_400Parcels_7Networks_order_FSLMNI152_2mm.nii.gz")
    nib.save(_ras(cbig, np.int16), home / f"tpl-{NLIN6}" / f"tpl-{NLIN6}_res-02_{SCHAEFER}")
    tian = nib.load(SHARED / "tian_subcortex" /
                    "Schaefer2018_400Parcels_7Networks_order_Tian_Subcortex_S3_3T_MNI152NLin2009cAsym_2mm.nii.gz")
    lab = np.rint(np.asarray(tian.dataobj)).astype(np.int16)
    lab = np.where(lab > 50, lab - 50, 0).astype(np.int16)
    nib.save(nib.Nifti1Image(lab, tian.affine), home / f"tpl-{C2009}" / f"tpl-{C2009}_res-02_{SCHAEFER}")
    (home / f"tpl-{C2009}" / f"tpl-{C2009}_res-02_desc-brain_mask.nii.gz").touch()  # placeholder
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    return home


# ------------------------------------------------------------------------------- grids


def test_grids_match_the_registry_and_the_derived_atlases(tf_home):
    for space in (C2009, NLIN6):
        shape, affine = templates.template_grids(space)["02"]
        spec = load_registry()["spaces"][space]
        assert list(shape) == spec["shape"]
        img = nib.load(SHARED / "derived" / f"{derived_stem(space)}.nii.gz")
        check = templates.check_bold_grid(img, space, res="2", where=img.get_filename())
        assert check == templates.GridCheck("02", None)
    # 2009c: identical affine; NLin6: TemplateFlow RAS vs our LAS, the same voxel centres
    assert np.allclose(templates.template_grids(C2009)["02"][1], load_registry()["spaces"][C2009]["affine"])
    assert templates.template_grids(NLIN6)["02"][1][0, 0] == 2.0
    assert load_registry()["spaces"][NLIN6]["affine"][0][0] == -2.0


def test_grids_without_a_templateflow_home_write_nothing(tmp_path, monkeypatch):
    """No home: grids from the installed package; templateflow is not imported (it would write a stub)."""
    home = tmp_path / "no_home"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    assert templates.template_grids(C2009)["02"][0] == (97, 115, 97)
    assert templates.brain_mask(C2009) is None and templates.schaefer_dseg(NLIN6) is None
    assert not home.exists()


def _bold(shape, affine, n_vol=3):
    return nib.Nifti1Image(np.zeros((*shape, n_vol), np.float32), affine)


def test_check_bold_grid(tf_home):
    shape, affine = templates.template_grids(C2009)["02"]
    assert templates.check_bold_grid(_bold(shape, affine), C2009, "2").message is None  # fMRIPrep res-2
    las = np.diag([-2.0, 2, 2, 1])
    las[:3, 3] = [90, -126, -72]
    assert templates.check_bold_grid(_bold((91, 109, 91), las), NLIN6, "2").res == "02"  # FSL storage order
    six = np.diag([6.0, 6, 6, 1])
    six[:3, 3] = [-96, -132, -78]
    assert templates.check_bold_grid(_bold((32, 38, 32), six), C2009, None) == templates.GridCheck(None, None)
    shifted = affine.copy()
    shifted[:3, 3] += 1.0  # res-2 in the name, but moved by 1 mm: not fMRIPrep's grid
    msg = templates.check_bold_grid(_bold(shape, shifted), C2009, "2", where="sub-01_bold.nii.gz").message
    assert msg and "sub-01_bold.nii.gz" in msg and "res-02" in msg and "\n" not in msg
    far = affine.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(DataError, match="does not overlap"):
        templates.check_bold_grid(_bold(shape, far), C2009, "2", where="sub-01_bold.nii.gz")
    assert templates.check_bold_grid(_bold(shape, far), "T1w", None) == templates.GridCheck(None, None)


# ------------------------------------------------------------------------------- files


def test_files_from_the_home_and_placeholders_are_absent(tf_home):
    assert templates.brain_mask(NLIN6) == tf_home / f"tpl-{NLIN6}" / f"tpl-{NLIN6}_res-02_desc-brain_mask.nii.gz"
    assert templates.brain_mask(C2009) is None  # an empty placeholder: not downloaded, not fetched now
    assert templates.schaefer_dseg(NLIN6).name == f"tpl-{NLIN6}_res-02_{SCHAEFER}"
    assert templates.schaefer_dseg(NLIN6, resolution=1) is None


def test_schaefer_crosscheck_agrees_and_catches_a_shifted_order(tf_home, tmp_path):
    for space in (NLIN6, C2009):
        check = templates.schaefer_crosscheck(SHARED / "derived" / f"{derived_stem(space)}.nii.gz", space)
        assert check is not None and check["common_voxels"] > 100_000
        assert check["agreement"] == 1.0, (space, check)  # same parcels, matched by world coordinates
    # a label order shifted by one is caught
    path = tf_home / f"tpl-{NLIN6}" / f"tpl-{NLIN6}_res-02_{SCHAEFER}"
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.int16)
    nib.save(nib.Nifti1Image(np.where(data > 0, data % 400 + 1, 0).astype(np.int16), img.affine), path)
    with pytest.raises(DataError, match="label order is wrong"):
        templates.schaefer_crosscheck(SHARED / "derived" / f"{derived_stem(NLIN6)}.nii.gz", NLIN6)


def test_prefetch_verify_reports_the_crosscheck(tf_home, monkeypatch, capsys):
    from bids_semantoks import prefetch as pf

    monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_DIR", str(SHARED))
    assert pf.main(["--skip-model", "--verify"]) == 0
    out = capsys.readouterr().out
    assert f"Schaefer labels agree with TemplateFlow's tpl-{NLIN6}_res-02_{SCHAEFER} on 100.0%" in out
    assert f"tpl-{C2009}_res-02_{SCHAEFER} on 100.0%" in out
