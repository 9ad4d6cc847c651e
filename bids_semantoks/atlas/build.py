"""Build the derived 457-label atlas (Schaefer-400 7N + Tian S3 + Buckner-7) for one space.

This reimplements, from ``../shared/atlases/README.md`` §4, what our script
``make_derived_atlas.py`` does (without its one-off label-order checks, which validated the
upstream files; those files are pinned by sha256 here):

1. The Buckner 2011 LooseMask volume (FreeSurfer conformed 1 mm, FSL MNI152 world
   coordinates) is squeezed to 3-D and resampled with nilearn nearest neighbour onto the
   exact grid of the space's Schaefer+Tian combined file.
2. Buckner voxels that the combined file already labels are set to 0.
3. Labels in model channel order (channel = label - 1):
   Schaefer = combined label - 50 (1..400), Tian = combined label + 400 (401..450),
   Buckner = Buckner label + 450 (451..457).
4. Volumes are int16 with the combined file's affine, qform/sform code 4 (MNI),
   xyz units mm, ``descrip`` ``"<space> 2mm labels"``.

Outputs (all written atomically, through a temporary file and :func:`os.replace`):
``Buckner2011_7Networks_<space>_2mm.nii.gz`` and
``Schaefer400-7N_TianS3_Buckner7_<space>_2mm_dseg.{nii.gz,tsv,json}``.

The 2009c variant involves nearest-neighbour ties (its 2 mm voxel centres fall on
half-millimetres of the 1 mm Buckner grid); nilearn's (scipy's) tie-breaking decides them,
so the result is reproducible for a given nilearn/scipy, and matches the reference files made
with nilearn 0.14.1 / scipy 1.17.1 (checked by ``tests/atlas``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_semantoks.errors import DataError
from bids_semantoks.atlas.fetch import write_atomic

N_SCHAEFER, N_TIAN, N_BUCKNER = 400, 50, 7
N_TOTAL = N_SCHAEFER + N_TIAN + N_BUCKNER
YEO7 = ("Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default")


def derived_stem(space: str) -> str:
    """File stem of the derived 457-label atlas of ``space`` (without extension)."""
    return f"Schaefer400-7N_TianS3_Buckner7_{space}_2mm_dseg"


def buckner_name(space: str) -> str:
    """File name of the masked 2 mm Buckner volume of ``space``."""
    return f"Buckner2011_7Networks_{space}_2mm.nii.gz"


# ---------------------------------------------------------------------------------------
# label tables (no images needed)


def read_schaefer_names(path: Path) -> list[str]:
    """Parcel names of a CBIG ``*_order.txt`` (``index<TAB>name<TAB>R G B 0``), in index order."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            fields = line.split("\t")
            rows.append((int(fields[0]), fields[1].strip()))
    if [i for i, _ in rows] != list(range(1, N_SCHAEFER + 1)):
        raise DataError(f"{path}: expected indices 1..{N_SCHAEFER} in order; replace the file")
    return [name for _, name in rows]


def read_tian_names(path: Path) -> list[str]:
    """Tian S3 region names, one per line (the upstream file has no trailing newline)."""
    names = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if len(names) != N_TIAN:
        raise DataError(f"{path}: {len(names)} names, expected {N_TIAN}; replace the file")
    return names


def read_lut_names(path: Path) -> dict[int, str]:
    """FreeSurfer-LUT-style label file: a name line, then an ``index R G B A`` line."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    return {int(lines[i + 1].split()[0]): lines[i] for i in range(0, len(lines) - 1, 2)}


def network_of(schaefer_name: str) -> str:
    """Network token of a 7-network Schaefer name (``7Networks_<LH|RH>_<Net>_...``)."""
    parts = schaefer_name.split("_")
    if len(parts) < 3 or parts[0] != "7Networks" or parts[1] not in ("LH", "RH") or parts[2] not in YEO7:
        raise DataError(f"unexpected Schaefer 7-network parcel name {schaefer_name!r}")
    return parts[2]


def default_rows(
    schaefer_names: Sequence[str],
    tian_names: Sequence[str],
    combined_lut: Mapping[int, str] | None = None,
) -> list[tuple[int, str, str]]:
    """Rows ``(index, name, network_label)`` of the 457-label atlas, in model channel order.

    Parameters
    ----------
    schaefer_names : sequence of str
        The 400 CBIG 7-network parcel names, in index order.
    tian_names : sequence of str
        The 50 Tian S3 names, in label order.
    combined_lut : mapping, optional
        Label names of the Tian combined file; if given, checked to be 1..50 Tian and
        51..450 Schaefer (the relabelling below relies on that order).
    """
    if combined_lut is not None:
        expected = {k: n for k, n in enumerate(tian_names, start=1)}
        expected.update({N_TIAN + k: n for k, n in enumerate(schaefer_names, start=1)})
        if dict(combined_lut) != expected:
            raise DataError(
                "Tian combined label file: labels 1..50 are not the Tian S3 names or 51..450 not "
                "the Schaefer 7-network names; the relabelling would be wrong, replace the files"
            )
    rows = [(k, nm, network_of(nm)) for k, nm in enumerate(schaefer_names, start=1)]
    rows += [(N_SCHAEFER + k, nm, "Subcortex") for k, nm in enumerate(tian_names, start=1)]
    rows += [
        (N_SCHAEFER + N_TIAN + k, f"Buckner2011_7Networks_{k}_{YEO7[k - 1]}", "Cerebellum")
        for k in range(1, N_BUCKNER + 1)
    ]
    return rows


def rows_to_tsv(rows: Sequence[tuple[int, str, str]]) -> bytes:
    """The ``_dseg.tsv`` bytes (``index``, ``name``, ``network_label``; LF line ends)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["index", "name", "network_label"])
    w.writerows(rows)
    return buf.getvalue().encode()


# ---------------------------------------------------------------------------------------
# volumes


def _load_labels(path: Path, squeeze: bool = False) -> tuple[nib.Nifti1Image, np.ndarray]:
    img = nib.load(path)
    arr = np.asarray(img.dataobj)
    if squeeze:
        arr = arr.reshape(arr.shape[:3])
    if not np.array_equal(arr, np.round(arr)):
        raise DataError(f"{path}: label volume is not integer valued; replace the file")
    return img, arr.astype(np.int32)


def build_volumes(
    tian_combined: Path,
    buckner: Path,
    *,
    shape: Sequence[int] | None = None,
    affine: Sequence[Sequence[float]] | None = None,
) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """Compute the 457-label volume and the masked Buckner volume on the combined file's grid.

    Parameters
    ----------
    tian_combined : Path
        Tian Schaefer400-7N + S3 combined volume (labels 1..50 Tian, 51..450 Schaefer).
    buckner : Path
        Buckner 2011 7-network LooseMask volume (FreeSurfer conformed 1 mm).
    shape, affine : optional
        Expected grid of ``tian_combined`` (checked when given).

    Returns
    -------
    grid_img : nibabel.Nifti1Image
        The combined file (its affine is the output affine).
    combined : ndarray of int16
        Labels 0..457 in model channel order.
    buckner_kept : ndarray of int16
        Buckner labels 1..7 where the combined file is unlabelled, else 0.
    """
    from nilearn.image import resample_to_img  # heavy import, only when building

    tian_img, tian = _load_labels(tian_combined)
    if shape is not None and tuple(tian_img.shape) != tuple(shape):
        raise DataError(f"{tian_combined}: grid {tian_img.shape}, expected {tuple(shape)}; replace the file")
    if affine is not None and not np.allclose(tian_img.affine, np.asarray(affine, dtype=float)):
        raise DataError(f"{tian_combined}: unexpected affine; replace the file")
    if set(np.unique(tian).tolist()) != set(range(0, N_SCHAEFER + N_TIAN + 1)):
        raise DataError(f"{tian_combined}: does not hold exactly labels 0..450; replace the file")
    is_schaefer = tian > N_TIAN
    is_tian = (tian >= 1) & (tian <= N_TIAN)

    buck_img, buck = _load_labels(buckner, squeeze=True)  # stored as 256x256x256x1
    if set(np.unique(buck).tolist()) != set(range(0, N_BUCKNER + 1)):
        raise DataError(f"{buckner}: does not hold exactly labels 0..7; replace the file")
    buck3d = nib.Nifti1Image(buck.astype(np.int16), buck_img.affine)
    buck_rs = resample_to_img(
        buck3d, tian_img, interpolation="nearest", force_resample=True, copy_header=True
    )
    buck_2mm = np.rint(np.asarray(buck_rs.dataobj)).astype(np.int16)
    buck_2mm[tian > 0] = 0
    kept = buck_2mm > 0

    combined = np.zeros(tian.shape, dtype=np.int16)
    combined[is_schaefer] = tian[is_schaefer] - N_TIAN
    combined[is_tian] = tian[is_tian] + N_SCHAEFER
    combined[kept] = buck_2mm[kept] + N_SCHAEFER + N_TIAN
    present = np.unique(combined)
    if present.tolist() != list(range(0, N_TOTAL + 1)):
        missing = sorted(set(range(1, N_TOTAL + 1)) - set(present.tolist()))
        raise DataError(f"{tian_combined}: built atlas lacks labels {missing[:10]}; replace the inputs")
    return tian_img, combined, buck_2mm


def _label_image(arr: np.ndarray, affine: np.ndarray, space: str) -> nib.Nifti1Image:
    img = nib.Nifti1Image(arr.astype(np.int16), affine)
    img.set_qform(affine, code=4)  # 4 = MNI_152
    img.set_sform(affine, code=4)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = f"{space} 2mm labels".encode()
    return img


def _save_atomic(img: nib.Nifti1Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".nii.gz")
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def sidecar(space: str, resolution: str, placement: str, sources: Sequence[str]) -> dict:
    """BIDS atlas sidecar (``_dseg.json``) of the derived atlas."""
    from bids_semantoks import __version__

    return {
        "Name": (
            "Schaefer 2018 400 parcels (7-network order) + Tian 2020 subcortex S3 + "
            f"Buckner 2011 cerebellum 7 networks, 457 labels, {space} 2 mm"
        ),
        "Description": (
            "Brain-Semantoks input atlas. Labels 1-457 are in model channel order "
            "(channel = label - 1); 0 = background. 1-400: Schaefer 2018 400 parcels, "
            "7-network order; 401-450: Tian subcortex scale III; 451-457: Buckner 2011 "
            "cerebellar networks 1-7 (Yeo order Vis, SomMot, DorsAttn, SalVentAttn, Limbic, "
            "Cont, Default). Labels 1-450 are the relabelled Schaefer+Tian combined volume of "
            "the Tian atlas (its labels 1-50 Tian, 51-450 Schaefer). Buckner (FreeSurfer "
            "LooseMask) was resampled by nearest neighbour onto this grid and kept only where "
            f"that volume is unlabelled. {placement} Names and network tokens are in the "
            "matching _dseg.tsv. Built by bids_semantoks.atlas.build (the procedure of "
            "make_derived_atlas.py) from unchanged upstream copies of the Sources. Cite "
            "Schaefer et al. 2018, Yeo et al. 2011, Tian et al. 2020 and Buckner et al. 2011."
        ),
        "SpatialReference": space,
        "Resolution": resolution,
        "Sources": list(sources),
        "GeneratedBy": [{"Name": "bids_semantoks", "Version": __version__}],
    }


def build_derived(
    space: str,
    *,
    tian_combined: Path,
    buckner: Path,
    rows: Sequence[tuple[int, str, str]],
    out_dir: Path,
    resolution: str,
    placement: str,
    sources: Sequence[str],
    shape: Sequence[int] | None = None,
    affine: Sequence[Sequence[float]] | None = None,
) -> dict[str, Path]:
    """Build and write the derived atlas files of ``space`` into ``out_dir``.

    The caller holds the build lock. The ``_dseg.nii.gz`` is written last but one and the
    ``_dseg.tsv`` last, each atomically, so readers never see a partial file.

    Returns
    -------
    dict
        Keys ``"buckner"``, ``"json"``, ``"nii"``, ``"tsv"`` -> written paths.
    """
    if len(rows) != N_TOTAL:
        raise DataError(f"atlas table has {len(rows)} rows, expected {N_TOTAL}")
    grid_img, combined, buck = build_volumes(tian_combined, buckner, shape=shape, affine=affine)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = derived_stem(space)
    paths = {
        "buckner": out_dir / buckner_name(space),
        "json": out_dir / f"{stem}.json",
        "nii": out_dir / f"{stem}.nii.gz",
        "tsv": out_dir / f"{stem}.tsv",
    }
    _save_atomic(_label_image(buck, grid_img.affine, space), paths["buckner"])
    meta = sidecar(space, resolution, placement, sources)
    write_atomic(paths["json"], (json.dumps(meta, indent=2) + "\n").encode())
    _save_atomic(_label_image(combined, grid_img.affine, space), paths["nii"])
    write_atomic(paths["tsv"], rows_to_tsv(rows))
    return paths
