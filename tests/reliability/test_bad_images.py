"""Bad NIfTI inputs. Two subjects, sub-01 broken: the job exits with sub-01's code and one line
naming its file, sub-02's outputs are complete, and sub-01 leaves no partial output."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from reliability_helpers import ATLAS, bold_of, invalid_outputs, mask_of, subject_outputs

M = ("--model", "none")
GOOD_02 = [
    f"sub-02_task-rest_space-MNI152NLin2009cAsym_atlas-{ATLAS}_desc-simple_timeseries.json",
    f"sub-02_task-rest_space-MNI152NLin2009cAsym_atlas-{ATLAS}_desc-simple_timeseries.tsv",
]


def _bad_subject_fails(cli, bids, out, code, *names, args=M):
    r = cli(bids, out, "participant", *args)
    assert r.code == code, r.err
    for name in names:
        assert name in r.message, r.message
    assert subject_outputs(out, "02") == GOOD_02  # the other subject was processed
    assert subject_outputs(out, "01") == []  # nothing partial for the failed run
    assert invalid_outputs(out) == []
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))
    return r


def test_truncated_bold(cli, tiny_bids, tmp_path):
    bold = bold_of(tiny_bids)
    data = bold.read_bytes()
    bold.write_bytes(data[: len(data) // 2])
    r = _bad_subject_fails(cli, tiny_bids, tmp_path / "out", 65, bold.name)
    assert "truncated" in r.message


def test_corrupt_gzip_crc(cli, tiny_bids, tmp_path):
    """Bytes flipped inside the compressed stream: the header reads, the data do not."""
    bold = bold_of(tiny_bids)
    data = bytearray(bold.read_bytes())
    mid = len(data) * 3 // 4
    data[mid: mid + 64] = bytes(64)
    bold.write_bytes(bytes(data))
    _bad_subject_fails(cli, tiny_bids, tmp_path / "out", 65, bold.name)


def test_not_a_nifti(cli, tiny_bids, tmp_path):
    bold = bold_of(tiny_bids)
    bold.write_bytes(gzip.compress(b"this is not a NIfTI file" * 20))
    _bad_subject_fails(cli, tiny_bids, tmp_path / "out", 65, bold.name)


def test_3d_bold(cli, tiny_bids, tmp_path):
    bold = bold_of(tiny_bids)
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj[..., 0]), img.affine), bold)
    r = _bad_subject_fails(cli, tiny_bids, tmp_path / "out", 65, bold.name)
    assert "4-D" in r.message


def test_mask_on_another_grid(cli, tiny_bids, tmp_path):
    mask = mask_of(tiny_bids)
    img = nib.load(mask)
    data = np.asarray(img.dataobj)[:-2]
    nib.save(nib.Nifti1Image(data, img.affine), mask)
    r = _bad_subject_fails(cli, tiny_bids, tmp_path / "out", 65, mask.name)
    assert "grid" in r.message


def test_bold_outside_the_atlas(cli, tiny_bids, tmp_path):
    """A BOLD labelled MNI whose grid lies elsewhere (e.g. a native-space image mislabelled)."""
    bold, mask = bold_of(tiny_bids), mask_of(tiny_bids)
    for path in (bold, mask):
        img = nib.load(path)
        affine = img.affine.copy()
        affine[:3, 3] += 2000.0  # 2 m away: no atlas voxel lands on this grid
        out_img = img.__class__(np.asarray(img.dataobj), affine, img.header)
        nib.save(out_img, path)
    r = _bad_subject_fails(cli, tiny_bids, tmp_path / "out", 65, bold.name)
    # caught by the TemplateFlow grid check before any atlas voxel is looked up
    assert str(bold) in r.message and "does not overlap the MNI152NLin2009cAsym template" in r.message


def test_space_without_atlas(cli, tiny_bids, tmp_path):
    """BOLD runs only in a space no atlas exists for: a usage error naming the supported spaces."""
    for sub in ("01", "02"):
        for path in list((tiny_bids / f"sub-{sub}" / "func").glob("*space-MNI152NLin2009cAsym*")):
            path.rename(path.with_name(path.name.replace("space-MNI152NLin2009cAsym", "space-T1w")))
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--space", "T1w", *M)
    assert r.code == 64, r.err
    assert "T1w" in r.message and "MNI152NLin6Asym" in r.message
    assert subject_outputs(out, "01") == subject_outputs(out, "02") == []


def test_nan_inf_voxels_are_handled(cli, tiny_bids, tmp_path):
    """NaN/Inf voxels inside the brain count as 0 (nilearn); outputs stay finite or n/a."""
    bold = bold_of(tiny_bids)
    img = nib.load(bold)
    data = np.asarray(img.dataobj).copy()
    inside = np.argwhere(data[..., 0] != 0)
    rng = np.random.default_rng(0)
    pick = inside[rng.choice(len(inside), 40, replace=False)]
    data[pick[:20, 0], pick[:20, 1], pick[:20, 2], :] = np.nan
    data[pick[20:, 0], pick[20:, 1], pick[20:, 2], 5] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine, img.header), bold)
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 0, r.err
    ts = next(out.glob("sub-01/func/*_timeseries.tsv"))
    text = ts.read_text()
    assert "inf" not in text.lower() and "nan" not in text.lower()
    frame = pd.read_csv(ts, sep="\t", na_values="n/a").to_numpy()
    assert np.isfinite(frame[:, np.isfinite(frame).all(axis=0)]).all()
    assert invalid_outputs(out) == []


def test_all_zero_regions_become_na(cli, tiny_bids, tmp_path):
    bold = bold_of(tiny_bids)
    img = nib.load(bold)
    data = np.asarray(img.dataobj).copy()
    from bids_semantoks.demo import resample_atlas
    from tests.conftest import DSEG

    labels = np.asarray(resample_atlas(nib.load(str(DSEG["MNI152NLin2009cAsym"])), 8.0).dataobj)
    present = [lab for lab in (1, 2, 3) if (labels == lab).any()]
    assert present
    data[np.isin(labels, present)] = 0.0
    nib.save(nib.Nifti1Image(data, img.affine, img.header), bold)
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M, "--min-coverage", "0")
    assert r.code == 0, r.err
    ts = next(out.glob("sub-01/func/*_timeseries.tsv"))
    frame = pd.read_csv(ts, sep="\t", na_values="n/a")
    meta = json.loads(ts.with_suffix(".json").read_text())
    zero_names = [frame.columns[lab - 1] for lab in present]
    assert frame[zero_names].isna().all().all()
    assert set(zero_names) <= set(meta["MissingRegions"])


def test_all_zero_run(cli, tiny_bids, tmp_path):
    """A BOLD run of zeros (a failed conversion): no region has data -> error naming the file."""
    bold = bold_of(tiny_bids)
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine, img.header), bold)
    r = _bad_subject_fails(cli, tiny_bids, tmp_path / "out", 65, bold.name)
    assert "no region" in r.message


@pytest.mark.parametrize("broken", ["mask", "missing_mask"])
def test_corrupt_or_missing_mask(cli, tiny_bids, tmp_path, broken):
    mask = mask_of(tiny_bids)
    if broken == "mask":
        mask.write_bytes(mask.read_bytes()[:100])
        _bad_subject_fails(cli, tiny_bids, tmp_path / "out", 65, mask.name)
    else:  # no mask: extraction runs without one (every atlas voxel counts)
        mask.unlink()
        r = cli(tiny_bids, tmp_path / "out", "participant", *M)
        assert r.code == 0, r.err
