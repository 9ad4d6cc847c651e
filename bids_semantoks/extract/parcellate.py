"""Region-mean reduction ("parcellation") of a BOLD run with an integer label atlas.

The reduction agrees with nilearn's :func:`nilearn.regions.img_to_signals_labels` (with
``mask_img``) to float rounding, but is much faster and needs little memory: the run is read
block of volumes by block of volumes (:func:`bids_semantoks.extract.io.iter_volume_blocks`,
which inflates ``.nii.gz`` files with zlib directly), the in-mask labelled voxels of each
volume are gathered once (stored dtype, no float64 copy of the run) and summed per region
with a sparse ``(R x V_sel)`` matrix, accumulating in float64. The header's
``scl_slope``/``scl_inter`` are applied to the region means, not to every voxel.

Behaviour choices
-----------------
* **Mask**: a voxel is in the mask when its mask value is finite and non-zero (nilearn:
  ``labels[logical_not(mask)] = background``).
* **Non-finite BOLD values** (NaN, +/-Inf): replaced by 0 and *kept* in the mean, exactly as
  nilearn does (``safe_get_data(..., ensure_finite=True)``). A voxel that is NaN in some
  volume therefore pulls its region's mean towards 0 in that volume; mask such voxels out
  (fMRIPrep's brain mask does) if that matters.
* **Non-finite label values** are background (nilearn, likewise). Non-integer labels are an
  error.
* **Regions with no voxel** (after masking) get a NaN column (nilearn drops the label).
* **Coverage** of a region = (voxels of the region on the BOLD grid inside the brain mask) /
  (voxels of the region on the BOLD grid); 0 for a region with no voxel on the BOLD grid
  (e.g. lost when a small region is resampled to a coarse grid). See :func:`region_coverage`.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
import scipy.sparse as sp

from bids_semantoks.errors import DataError, UsageError
from bids_semantoks.extract.io import data_scaling, image_name, iter_volume_blocks, load_image

__all__ = ["resample_labels_to", "region_coverage", "region_means", "extract_regions"]

# Affines closer than this (mm, element-wise) are the same grid.
_AFFINE_ATOL = 1e-4


# ----------------------------------------------------------------------------- input checks
def _same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(
        np.asarray(affine_a, dtype=float), np.asarray(affine_b, dtype=float), rtol=0, atol=_AFFINE_ATOL
    )


def _squeeze_3d(shape, name: str, what: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"{name}: expected a 3-D {what} image, got shape {shape}; pass a single volume")
    return shape


def _bold_source(bold):
    """Return (source for iter_volume_blocks, shape4, affine or None, name)."""
    if isinstance(bold, np.ndarray):
        arr = bold
        name = image_name(bold)
        affine = None
    else:
        arr = load_image(bold, "BOLD")
        name = image_name(arr)
        affine = arr.affine
    shape = tuple(int(s) for s in arr.shape)
    if len(shape) == 3:
        raise DataError(
            f"{name}: expected a 4-D BOLD run, got a 3-D image of shape {shape}; pass a BOLD time series"
        )
    if len(shape) != 4:
        raise DataError(f"{name}: expected a 4-D BOLD run, got shape {shape}")
    if shape[3] < 1 or min(shape[:3]) < 1:
        raise DataError(f"{name}: the BOLD run is empty (shape {shape})")
    dtype = np.dtype(arr.dtype if isinstance(arr, np.ndarray) else arr.get_data_dtype())
    if dtype.kind not in "biuf":
        raise DataError(f"{name}: unsupported BOLD data type {dtype}; expected integers or floats")
    return arr, shape, affine, name


def _volume_data(img, shape3, affine, name_bold: str, what: str) -> np.ndarray:
    """Return the 3-D data of a labels/mask image or array, checked against the BOLD grid."""
    if img is None:
        return None
    if isinstance(img, np.ndarray):
        name = image_name(img)
        data = img
        img_affine = None
    else:
        img = load_image(img, what)
        name = image_name(img)
        data = None
        img_affine = img.affine
    shp = _squeeze_3d(img.shape, name, what)
    if shp != tuple(shape3[:3]) or (
        img_affine is not None and affine is not None and not _same_grid(shp, img_affine, shape3, affine)
    ):
        raise DataError(
            f"{name}: the {what} is not on the BOLD grid of {name_bold} "
            f"(shape {shp} vs {tuple(shape3[:3])}); resample it to the BOLD grid first"
        )
    if data is None:
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as exc:  # zlib.error, EOFError, OSError, ValueError for a damaged file
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{name}: cannot read the {what} image data ({msg}); the file is corrupt, replace it") from exc
    data = np.asarray(data).reshape(shp)
    if data.dtype.kind not in "biuf":
        raise DataError(f"{name}: unsupported {what} data type {data.dtype}")
    return data


def _label_array(data: np.ndarray, name: str) -> np.ndarray:
    """Integer label array (int64); non-finite values are background (0)."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        clean = np.where(finite, data, 0)
        rounded = np.rint(clean)
        if not np.array_equal(rounded, clean):
            raise DataError(f"{name}: atlas labels are not integers; use a label (dseg) image")
        return rounded.astype(np.int64)
    return data.astype(np.int64, copy=False)


def _mask_array(data: np.ndarray | None) -> np.ndarray | None:
    if data is None:
        return None
    if data.dtype.kind == "f":
        return np.isfinite(data) & (data != 0)
    return data != 0


def _check_indices(indices, name: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise DataError(f"{name}: the list of region indices is empty or not 1-D")
    if idx.dtype.kind == "f":
        if not np.all(np.isfinite(idx)) or not np.array_equal(np.rint(idx), idx):
            raise DataError(f"{name}: region indices must be integers")
    elif idx.dtype.kind not in "iu":
        raise DataError(f"{name}: region indices must be integers, got {idx.dtype}")
    idx = idx.astype(np.int64)
    if np.any(idx == 0):
        raise DataError(f"{name}: region index 0 is the background and cannot be a region")
    if np.unique(idx).size != idx.size:
        raise DataError(f"{name}: region indices contain duplicates")
    return idx


def _region_positions(labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Position in ``indices`` of each label value, -1 where the label is not a region."""
    order = np.argsort(indices, kind="stable")
    sorted_idx = indices[order]
    pos = np.searchsorted(sorted_idx, labels)
    pos = np.clip(pos, 0, sorted_idx.size - 1)
    hit = sorted_idx[pos] == labels
    return np.where(hit, order[pos], -1)


# ----------------------------------------------------------------------------- public API
def resample_labels_to(labels_img, target_img) -> nib.Nifti1Image:
    """Resample an integer label image onto the 3-D grid of ``target_img`` (nearest neighbour).

    Parameters
    ----------
    labels_img : str, os.PathLike or nibabel image
        3-D label image (a 4-D image with one volume is accepted).
    target_img : str, os.PathLike or nibabel image
        Image whose grid (first three dimensions of the shape, and affine) is the target,
        typically the 4-D BOLD run. Its data are not read.

    Returns
    -------
    nibabel.Nifti1Image
        ``labels_img`` itself (loaded) when it is already on the target grid (same 3-D shape,
        affines equal within 1e-4 mm), else a new image on the target grid with the label
        image's header (data type) and values taken from the nearest atlas voxel (0 outside
        the atlas field of view).

    Raises
    ------
    DataError
        An input cannot be read, or the label image is not 3-D.
    """
    from nilearn.image import resample_img

    labels = load_image(labels_img, "atlas")
    target = load_image(target_img, "BOLD")
    lname = image_name(labels)
    lshape = _squeeze_3d(labels.shape, lname, "atlas")
    tshape = tuple(int(s) for s in target.shape)
    if len(tshape) < 3:
        raise DataError(f"{image_name(target)}: expected a 3-D or 4-D image, got shape {tshape}")
    if _same_grid(lshape, labels.affine, tshape, target.affine):
        return labels
    if len(labels.shape) == 4:
        labels = labels.slicer[..., 0]
    from nilearn.image.resampling import BoundingBoxError

    try:
        return resample_img(
            labels,
            target_affine=np.asarray(target.affine, dtype=float),
            target_shape=tshape[:3],
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        )
    except BoundingBoxError:
        raise DataError(
            f"{image_name(target)}: the atlas does not overlap the BOLD grid (affine {np.round(target.affine[:3, 3], 1).tolist()}); "
            "the run is not in the atlas space: check its space- entity and --space"
        ) from None


def region_coverage(labels_data, mask_data, indices, atlas_labels_data_ref=None) -> np.ndarray:
    """Per-region fraction of the region's voxels (on the BOLD grid) inside the brain mask.

    ``coverage[r] = n_in_mask[r] / n_grid[r]`` where ``n_grid[r]`` is the number of voxels
    labelled ``indices[r]`` in ``atlas_labels_data_ref`` (default: ``labels_data``), i.e. the
    region on the BOLD grid, and ``n_in_mask[r]`` the number of voxels labelled ``indices[r]``
    in ``labels_data`` whose mask value is finite and non-zero. A region with no voxel on the
    grid (not in the atlas, or lost by resampling to a coarse grid) has coverage 0.

    Parameters
    ----------
    labels_data : array-like, shape (X, Y, Z)
        Atlas labels on the BOLD grid (integer-valued; non-finite values are background).
    mask_data : array-like, shape (X, Y, Z), or None
        Brain mask on the same grid (non-zero = brain). None: every voxel is in the brain.
    indices : sequence of int
        Region labels, in output order.
    atlas_labels_data_ref : array-like, shape (X, Y, Z), optional
        Labels on the same grid that define the denominator, for when ``labels_data`` has
        already been restricted (e.g. to voxels with usable data). Default ``labels_data``.

    Returns
    -------
    numpy.ndarray, shape (R,), float64
        Coverage in [0, 1].

    Raises
    ------
    DataError
        Shapes differ, labels are not integers, or ``indices`` is invalid.
    """
    lab = np.asarray(labels_data)
    idx = _check_indices(indices, "atlas")
    lab = _label_array(lab, "atlas")
    ref = lab if atlas_labels_data_ref is None else _label_array(np.asarray(atlas_labels_data_ref), "atlas")
    if ref.shape != lab.shape:
        raise DataError(f"atlas: reference labels shape {ref.shape} differs from labels shape {lab.shape}")
    r = idx.size
    pos_ref = _region_positions(ref.ravel(), idx)
    n_grid = np.bincount(pos_ref[pos_ref >= 0], minlength=r)
    pos = _region_positions(lab.ravel(), idx)
    if mask_data is not None:
        m = np.asarray(mask_data)
        if m.shape != lab.shape:
            raise DataError(f"mask: shape {m.shape} differs from the atlas shape {lab.shape}; resample it")
        pos = pos[_mask_array(m).ravel()]
    n_in = np.bincount(pos[pos >= 0], minlength=r)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = np.where(n_grid > 0, n_in / np.maximum(n_grid, 1), 0.0)
    return np.clip(cov, 0.0, 1.0)


def region_means(bold, labels, indices, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean BOLD signal of each region, over the region's voxels inside the mask.

    Matches :func:`nilearn.regions.img_to_signals_labels` (``mask_img=mask``, default
    ``background_label=0``) to float rounding, with a column per entry of ``indices``.

    Parameters
    ----------
    bold : str, os.PathLike, nibabel image or numpy.ndarray
        4-D BOLD run ``(X, Y, Z, T)``. A file-backed image is streamed block by block (the run
        is never held in memory as a whole); ``scl_slope``/``scl_inter`` are honoured.
    labels : str, os.PathLike, nibabel image or numpy.ndarray
        Integer label image on the BOLD grid (3-D, or 4-D with one volume). Values not in
        ``indices`` (0 included) are ignored; non-finite values are background.
    indices : sequence of int
        Region labels, in output column order (no 0, no duplicates).
    mask : str, os.PathLike, nibabel image or numpy.ndarray, optional
        Brain mask on the BOLD grid; voxels with a zero or non-finite mask value are ignored.

    Returns
    -------
    signals : numpy.ndarray, shape (T, R), float64
        Region means; NaN columns for regions without an in-mask voxel. Non-finite BOLD
        values count as 0 (as in nilearn).
    n_voxels : numpy.ndarray, shape (R,), int64
        Number of in-mask voxels averaged per region.

    Raises
    ------
    DataError
        ``bold`` is not 4-D, labels or mask are not on the BOLD grid (shape, or affine when
        both are images), labels are not integers, ``indices`` is invalid, or the file is
        corrupt.
    """
    src, shape, affine, name = _bold_source(bold)
    lab_data = _volume_data(labels, shape, affine, name, "atlas")
    if lab_data is None:
        raise DataError(f"{name}: no atlas given")
    lab_name = image_name(labels)
    idx = _check_indices(indices, lab_name)
    lab = _label_array(lab_data, lab_name)
    msk = _mask_array(_volume_data(mask, shape, affine, name, "mask"))

    lab_f = lab.ravel(order="F")  # file order of a volume
    pos = _region_positions(lab_f, idx)
    keep = pos >= 0
    if msk is not None:
        keep &= msk.ravel(order="F")
    sel = np.flatnonzero(keep)  # increasing: cache-friendly gather
    pos = pos[sel]
    r = idx.size
    n_vox = np.bincount(pos, minlength=r).astype(np.int64)
    summer = sp.csr_matrix(
        (np.ones(sel.size, dtype=np.float64), (pos, np.arange(sel.size))), shape=(r, sel.size)
    )

    nt = shape[3]
    nvox_total = shape[0] * shape[1] * shape[2]
    sums = np.empty((nt, r), dtype=np.float64)
    n_bad = None  # (T, R) count of non-finite voxels, only if any
    for t0, block in iter_volume_blocks(src):
        k = block.shape[3]
        flat = block.reshape((nvox_total, k), order="F")  # a view for Fortran-ordered blocks
        for j in range(k):
            v = flat[:, j].take(sel)
            s = summer @ v
            if not np.all(np.isfinite(s)):
                bad = ~np.isfinite(v)
                v = np.where(bad, 0, v)
                s = summer @ v
                if n_bad is None:
                    n_bad = np.zeros((nt, r), dtype=np.float64)
                n_bad[t0 + j] = summer @ bad.astype(np.float64)
            sums[t0 + j] = s
    slope, inter = data_scaling(src)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_good = n_vox[None, :] if n_bad is None else n_vox[None, :] - n_bad
        signals = (slope * sums + inter * n_good) / n_vox[None, :]
    signals[:, n_vox == 0] = np.nan
    return signals, n_vox


def extract_regions(
    bold_img, labels_img, indices: Sequence[int], mask_img=None, min_coverage: float = 0.5
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Region-mean time series of a BOLD run, with per-region coverage of the brain mask.

    The atlas is resampled to the BOLD grid (nearest neighbour, :func:`resample_labels_to`);
    the mask must already be on the BOLD grid (fMRIPrep writes it so).

    Parameters
    ----------
    bold_img : str, os.PathLike or nibabel image
        4-D BOLD run.
    labels_img : str, os.PathLike or nibabel image
        Integer label atlas, on any grid in the same space as the BOLD run.
    indices : sequence of int
        Region labels, in output column order.
    mask_img : str, os.PathLike or nibabel image, optional
        Brain mask on the BOLD grid. None: all voxels count as brain.
    min_coverage : float
        Regions whose coverage (:func:`region_coverage`) is below this fraction, or that have
        no voxel at all, become NaN columns and are listed in ``missing``.

    Returns
    -------
    signals : numpy.ndarray, shape (T, R), float64
        Region means, NaN for missing regions.
    coverage : numpy.ndarray, shape (R,), float64
        Fraction of each region's voxels (on the BOLD grid) inside the mask.
    missing : list of int
        Column positions (0-based, into ``indices`` and ``signals``) of the NaN regions,
        increasing. ``[indices[i] for i in missing]`` gives their labels.

    Raises
    ------
    DataError
        See :func:`region_means`; also when the mask is on another grid than the BOLD run.
    UsageError
        ``min_coverage`` is not in [0, 1].
    """
    if not (0.0 <= float(min_coverage) <= 1.0):
        raise UsageError(f"min_coverage must be between 0 and 1, got {min_coverage}")
    bold = load_image(bold_img, "BOLD")
    src, shape, affine, name = _bold_source(bold)
    labels = resample_labels_to(labels_img, bold)
    lab_data = _volume_data(labels, shape, affine, name, "atlas")
    mask_data = _volume_data(mask_img, shape, affine, name, "mask")
    idx = _check_indices(indices, image_name(labels_img))
    if not np.isin(lab_data, idx).any():
        raise DataError(
            f"{name}: no atlas region lies on the BOLD grid; the run is not in the atlas space: "
            "check its space- entity and --space"
        )
    coverage = region_coverage(lab_data, mask_data, idx)
    signals, n_vox = region_means(bold, lab_data, idx, mask=mask_data)
    bad = (coverage < float(min_coverage)) | (n_vox == 0)
    signals[:, bad] = np.nan
    missing = [int(i) for i in np.flatnonzero(bad)]
    return signals, coverage, missing
