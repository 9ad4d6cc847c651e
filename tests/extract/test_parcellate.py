"""Region-mean reduction: agreement with nilearn, phantoms, coverage, grids, input checks."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_semantoks.errors import DataError
from bids_semantoks.extract.io import iter_volume_blocks
from bids_semantoks.extract.parcellate import (
    extract_regions,
    region_coverage,
    region_means,
    resample_labels_to,
)

REPO = Path(__file__).resolve().parents[2]
ATLAS_2009C = (
    REPO.parent
    / "shared/atlases/derived/Schaefer400-7N_TianS3_Buckner7_MNI152NLin2009cAsym_2mm_dseg.nii.gz"
)

AFF2 = np.diag([2.0, 2.0, 2.0, 1.0])
AFF2[:3, 3] = [-20.0, -24.0, -16.0]
SHAPE = (20, 24, 16)


def _save(data, affine, path, dtype=None):
    img = nib.Nifti1Image(np.asarray(data), affine)
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    img.to_filename(path)
    return Path(path)


def _atlas(shape=SHAPE, n_regions=6, seed=0, holes=True):
    """Blocky atlas with labels 1..n (in slabs along x), background border and random holes."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, dtype=np.int16)
    edges = np.linspace(2, shape[0] - 2, n_regions + 1).astype(int)
    for r in range(n_regions):
        lab[edges[r] : edges[r + 1], 2:-2, 2:-2] = r + 1
    if holes:
        lab[rng.random(shape) < 0.1] = 0
    return lab


def _nilearn(bold, labels, mask):
    from nilearn.regions import img_to_signals_labels

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sig, labs, _ = img_to_signals_labels(str(bold), str(labels), mask_img=str(mask) if mask else None)
    return sig, [int(x) for x in labs]


# ----------------------------------------------------------------------------- nilearn
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_matches_nilearn_with_mask_and_holes(tmp_path, suffix):
    rng = np.random.default_rng(1)
    lab = _atlas()
    lab[lab == 4] = 0  # label 4 absent -> NaN column
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:-3, 1:-1, 1:-2] = 1
    mask[rng.random(SHAPE) < 0.05] = 0
    data = (rng.standard_normal(SHAPE + (23,)) * 50 + 10).astype(np.float32)
    bold = _save(data, AFF2, tmp_path / f"bold{suffix}")
    labels = _save(lab, AFF2, tmp_path / "atlas.nii.gz")
    maskf = _save(mask, AFF2, tmp_path / "mask.nii.gz")
    indices = [6, 1, 2, 3, 4, 5, 9]  # any order; 4 and 9 have no voxels

    ours, n_vox = region_means(bold, labels, indices, mask=maskf)
    ref, ref_labels = _nilearn(bold, labels, maskf)

    assert ours.shape == (23, 7)
    assert ref_labels == [1, 2, 3, 5, 6]
    for j, lbl in enumerate(ref_labels):
        col = indices.index(lbl)
        np.testing.assert_allclose(ours[:, col], ref[:, j], rtol=1e-5, atol=0)
        assert n_vox[col] == np.count_nonzero((lab == lbl) & (mask > 0))
    assert np.all(np.isnan(ours[:, [indices.index(4), indices.index(9)]]))
    assert n_vox[indices.index(4)] == 0

    # the in-memory array path gives the same numbers
    arr, _ = region_means(data, lab, indices, mask=mask)
    np.testing.assert_allclose(arr, ours, rtol=1e-12, equal_nan=True)


def test_matches_nilearn_int16_with_scaling(tmp_path):
    """scl_slope != 1 and scl_inter != 0 are honoured (stored int16, data = 0.5 * raw + 100)."""
    rng = np.random.default_rng(2)
    lab = _atlas(holes=False)
    raw = rng.integers(-3000, 3000, size=SHAPE + (9,)).astype(np.int16)
    img = nib.Nifti1Image(raw, AFF2)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, 100.0)
    bold = tmp_path / "bold.nii.gz"
    nib.save(img, bold)
    assert nib.load(bold).dataobj.slope == 0.5
    labels = _save(lab, AFF2, tmp_path / "atlas.nii.gz")
    indices = list(range(1, 7))

    ours, _ = region_means(bold, labels, indices)
    ref, _ = _nilearn(bold, labels, None)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    expected = np.stack([(raw[lab == i] * 0.5 + 100).mean(axis=0) for i in indices], axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_float_slope_on_float32(tmp_path):
    rng = np.random.default_rng(3)
    lab = _atlas(holes=False)
    raw = rng.standard_normal(SHAPE + (5,)).astype(np.float32)
    img = nib.Nifti1Image(raw, AFF2)
    img.header.set_slope_inter(3.0, -7.0)
    bold = tmp_path / "bold.nii.gz"
    nib.save(img, bold)
    ours, _ = region_means(bold, lab, [1, 2, 3])
    expected = np.stack([(raw[lab == i].astype(float) * 3.0 - 7.0).mean(axis=0) for i in (1, 2, 3)], axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-9)


# ----------------------------------------------------------------------------- phantom
def test_phantom_signals_recovered(tmp_path):
    rng = np.random.default_rng(4)
    lab = _atlas(n_regions=8)
    n_t = 50
    truth = rng.standard_normal((n_t, 8))
    data = np.zeros(SHAPE + (n_t,), dtype=np.float32)
    for r in range(8):
        data[lab == r + 1] = truth[:, r]
    bold = _save(data, AFF2, tmp_path / "bold.nii.gz")
    labels = _save(lab, AFF2, tmp_path / "atlas.nii.gz")
    signals, coverage, missing = extract_regions(bold, labels, list(range(1, 9)))
    assert missing == []
    np.testing.assert_allclose(coverage, 1.0)
    for r in range(8):
        assert np.corrcoef(signals[:, r], truth[:, r])[0, 1] > 0.99
    np.testing.assert_allclose(signals, truth.astype(np.float32), rtol=1e-6)


# ----------------------------------------------------------------------------- coverage
def test_coverage_and_min_coverage(tmp_path):
    lab = np.zeros(SHAPE, dtype=np.int16)
    lab[2:6, 2:6, 2:6] = 1  # 64 voxels, fully in the mask
    lab[10:14, 2:6, 2:6] = 2  # 64 voxels, 1/4 in the mask
    lab[15:19, 2:6, 2:6] = 3  # 64 voxels, outside the mask
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[:10] = 1
    mask[10:14, 2:3] = 1
    n_t = 7
    rng = np.random.default_rng(5)
    data = rng.standard_normal(SHAPE + (n_t,)).astype(np.float32)
    bold = _save(data, AFF2, tmp_path / "bold.nii.gz")
    labels = _save(lab, AFF2, tmp_path / "atlas.nii.gz")
    maskf = _save(mask, AFF2, tmp_path / "mask.nii.gz")

    cov = region_coverage(lab, mask, [1, 2, 3, 7])
    np.testing.assert_allclose(cov, [1.0, 0.25, 0.0, 0.0])
    ref = lab.copy()
    ref[2:6, 2:6, 2:4] = 0  # denominator from another (e.g. unrestricted) label map
    np.testing.assert_allclose(region_coverage(lab, mask, [1], atlas_labels_data_ref=ref), [1.0])
    np.testing.assert_allclose(region_coverage(lab, None, [1, 2, 7]), [1.0, 1.0, 0.0])

    signals, coverage, missing = extract_regions(bold, labels, [1, 2, 3, 7], mask_img=maskf, min_coverage=0.5)
    np.testing.assert_allclose(coverage, [1.0, 0.25, 0.0, 0.0])
    assert missing == [1, 2, 3]  # positions in indices (labels 2, 3, 7)
    assert np.all(np.isfinite(signals[:, 0]))
    assert np.all(np.isnan(signals[:, 1:]))
    expected = data[lab == 1].astype(float).mean(axis=0)
    np.testing.assert_allclose(signals[:, 0], expected, rtol=1e-6)

    signals, _, missing = extract_regions(bold, labels, [1, 2, 3, 7], mask_img=maskf, min_coverage=0.2)
    assert missing == [2, 3]  # region 2 kept: mean of its in-mask voxels
    np.testing.assert_allclose(signals[:, 1], data[(lab == 2) & (mask > 0)].astype(float).mean(axis=0), rtol=1e-6)


# ----------------------------------------------------------------------------- resampling
def _expected_nearest(src, src_aff, tgt_shape, tgt_aff):
    ijk = np.indices(tgt_shape).reshape(3, -1)
    vox = np.linalg.inv(src_aff) @ tgt_aff @ np.vstack([ijk, np.ones(ijk.shape[1])])
    idx = np.rint(vox[:3]).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(src.shape)[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], dtype=float)
    out[inside] = src[tuple(idx[:, inside])]
    return out.reshape(tgt_shape)


@pytest.mark.parametrize("voxel", [3.0, 2.5])
def test_resample_to_coarser_grids_and_extract(tmp_path, voxel):
    lab = _atlas(holes=False)
    labels = _save(lab, AFF2, tmp_path / "atlas.nii.gz")
    tgt_aff = np.diag([voxel, voxel, voxel, 1.0])
    tgt_aff[:3, 3] = AFF2[:3, 3] + 0.4  # no ties in nearest-neighbour rounding
    tgt_shape = tuple(int(np.ceil(s * 2 / voxel)) for s in SHAPE)
    n_t = 30
    rng = np.random.default_rng(6)
    truth = rng.standard_normal((n_t, 6))

    res = resample_labels_to(labels, nib.Nifti1Image(np.zeros(tgt_shape + (n_t,), np.float32), tgt_aff))
    assert res.shape == tgt_shape
    np.testing.assert_allclose(res.affine, tgt_aff)
    res_data = np.asarray(res.dataobj)
    np.testing.assert_array_equal(res_data, _expected_nearest(lab, AFF2, tgt_shape, tgt_aff))

    data = np.zeros(tgt_shape + (n_t,), dtype=np.float32)
    for r in range(6):
        data[res_data == r + 1] = truth[:, r]
    bold = _save(data, tgt_aff, tmp_path / "bold.nii.gz")
    signals, coverage, missing = extract_regions(bold, labels, list(range(1, 7)))
    assert missing == []
    np.testing.assert_allclose(signals, truth.astype(np.float32), rtol=1e-6)


def test_resample_same_grid_returns_input(tmp_path):
    labels = nib.load(_save(_atlas(), AFF2, tmp_path / "atlas.nii.gz"))
    target = nib.Nifti1Image(np.zeros(SHAPE + (3,), np.float32), AFF2.copy())
    assert resample_labels_to(labels, target) is labels


@pytest.mark.skipif(not ATLAS_2009C.exists(), reason="shared atlases not available")
def test_resample_real_atlas_to_fsl_las_grid():
    fsl_aff = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    target = nib.Nifti1Image(np.zeros((91, 109, 91), np.float32), fsl_aff)
    atlas = nib.load(ATLAS_2009C)
    res = resample_labels_to(atlas, target)
    assert res.shape == (91, 109, 91)
    np.testing.assert_allclose(res.affine, fsl_aff)
    src = np.asarray(atlas.dataobj)
    got = np.asarray(res.dataobj)
    assert set(np.unique(got)) == set(np.unique(src))  # all 457 regions survive
    # 2009c voxel centres sit at odd half-mm, FSL ones at even mm: no rounding ties
    np.testing.assert_array_equal(got, _expected_nearest(src, atlas.affine, got.shape, fsl_aff))
    # the LAS flip is honoured: region centroids agree in world coordinates (mm)
    for lbl in (1, 200, 401, 457):
        c_src = nib.affines.apply_affine(atlas.affine, np.argwhere(src == lbl).mean(axis=0))
        c_got = nib.affines.apply_affine(fsl_aff, np.argwhere(got == lbl).mean(axis=0))
        np.testing.assert_allclose(c_got, c_src, atol=1.5)


# ----------------------------------------------------------------------------- input checks
def test_3d_bold_is_a_data_error(tmp_path):
    bold = _save(np.zeros(SHAPE, np.float32), AFF2, tmp_path / "bold3d.nii.gz")
    with pytest.raises(DataError, match="bold3d.nii.gz.*4-D"):
        region_means(bold, _atlas(), [1])
    with pytest.raises(DataError, match="4-D"):
        extract_regions(bold, _save(_atlas(), AFF2, tmp_path / "a.nii.gz"), [1])


def test_mask_on_other_grid_is_a_data_error(tmp_path):
    bold = _save(np.zeros(SHAPE + (3,), np.float32), AFF2, tmp_path / "bold.nii.gz")
    labels = _save(_atlas(), AFF2, tmp_path / "atlas.nii.gz")
    shifted = AFF2.copy()
    shifted[0, 3] += 2
    mask_shift = _save(np.ones(SHAPE, np.uint8), shifted, tmp_path / "mask_shift.nii.gz")
    mask_shape = _save(np.ones((10, 12, 8), np.uint8), AFF2 * [[2], [2], [2], [1]], tmp_path / "mask_shape.nii.gz")
    for m in (mask_shift, mask_shape):
        with pytest.raises(DataError, match=m.name + ".*BOLD grid"):
            extract_regions(bold, labels, [1], mask_img=m)
        with pytest.raises(DataError, match=m.name):
            region_means(bold, labels, [1], mask=m)


def test_bad_labels_and_indices(tmp_path):
    data = np.zeros(SHAPE + (2,), np.float32)
    lab = _atlas().astype(np.float32)
    with pytest.raises(DataError, match="not integers"):
        region_means(data, lab + 0.5, [1])
    with pytest.raises(DataError, match="background"):
        region_means(data, lab, [0, 1])
    with pytest.raises(DataError, match="duplicates"):
        region_means(data, lab, [1, 1])
    with pytest.raises(DataError, match="BOLD grid"):
        region_means(data, lab[:-1], [1])


def test_non_finite_values_like_nilearn(tmp_path):
    """NaN/Inf voxels count as 0 in the mean (nilearn's ensure_finite); NaN labels are background."""
    rng = np.random.default_rng(7)
    lab = _atlas(holes=False)
    data = (rng.standard_normal(SHAPE + (6,)) + 5).astype(np.float32)
    v1 = np.argwhere(lab == 1)[0]
    v2 = np.argwhere(lab == 2)[3]
    data[tuple(v1)][2] = np.nan
    data[tuple(v2)][[0, 4]] = [np.inf, -np.inf]
    lab_f = lab.astype(np.float32)
    lab_f[tuple(np.argwhere(lab == 3)[0])] = np.nan
    bold = _save(data, AFF2, tmp_path / "bold.nii.gz")
    labels = _save(lab_f, AFF2, tmp_path / "atlas.nii.gz")
    ours, n_vox = region_means(bold, labels, [1, 2, 3])
    ref, _ = _nilearn(bold, labels, None)
    np.testing.assert_allclose(ours, ref[:, :3], rtol=1e-5)
    assert np.all(np.isfinite(ours))
    clean = np.where(np.isfinite(data), data, 0).astype(float)
    np.testing.assert_allclose(ours[:, 0], clean[lab == 1].mean(axis=0), rtol=1e-9)
    assert n_vox[2] == np.count_nonzero(lab == 3) - 1


# ----------------------------------------------------------------------------- reader
def test_streaming_reader_blocks_multimember_and_truncation(tmp_path):
    rng = np.random.default_rng(8)
    data = rng.standard_normal((5, 6, 7, 11)).astype(np.float32)
    path = _save(data, np.eye(4), tmp_path / "bold.nii.gz")
    vol_bytes = 5 * 6 * 7 * 4
    got = np.concatenate(
        [b.copy() for _, b in iter_volume_blocks(nib.load(path), block_bytes=3 * vol_bytes)], axis=3
    )
    np.testing.assert_array_equal(got, data)
    starts = [t0 for t0, _ in iter_volume_blocks(nib.load(path), block_bytes=3 * vol_bytes)]
    assert starts == [0, 3, 6, 9]

    raw = gzip.decompress(path.read_bytes())
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    got = np.concatenate([b.copy() for _, b in iter_volume_blocks(nib.load(multi))], axis=3)
    np.testing.assert_array_equal(got, data)

    comp = path.read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(comp[: len(comp) * 2 // 3])
    with pytest.raises(DataError, match="short.nii.gz"):
        region_means(short, np.ones(data.shape[:3]), [1])

    corrupt = bytearray(comp)
    corrupt[-6] ^= 0xFF  # inside the CRC/size trailer
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(DataError, match="bad.nii.gz"):
        region_means(bad, np.ones(data.shape[:3]), [1])
