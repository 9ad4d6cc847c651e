"""TemplateFlow: template grids, brain masks and Schaefer 2018 files, offline only.

The app never downloads from TemplateFlow. It reads:

- the **grids** (shape, voxel size, origin per ``res-``) of MNI152NLin2009cAsym and
  MNI152NLin6Asym from TemplateFlow's ``template_description.json``: the one in
  ``$TEMPLATEFLOW_HOME`` when it is populated, else the copy inside the installed
  ``templateflow`` package (its skeleton archive), so a grid check needs no network and no
  TemplateFlow home;
- **files** (brain masks, the Schaefer 2018 400-parcel 7-network ``_dseg``) only when they
  are already in ``$TEMPLATEFLOW_HOME`` (shared with fMRIPrep/XCP-D users), listed with
  ``templateflow``'s own client. TemplateFlow keeps not-yet-downloaded files as empty
  placeholders; those count as absent, and ``templateflow.api.get`` (which would download
  them) is never called.

``templateflow`` is imported only when the home it would use is already populated, because
importing it with an empty home writes a skeleton of several hundred files there.

On the Schaefer files: the default atlas does not use the CBIG Schaefer *volumes* at all
(its Schaefer parcels come inside the Tian combined file, whose sha256 is pinned), so a
TemplateFlow copy saves no download. TemplateFlow's Schaefer files also differ from the CBIG
ones byte-wise: the NLin6 volume is stored RAS (CBIG: LAS), and TemplateFlow's
``_dseg.tsv`` carries the pre-2019 parcel names (66 of 400 differ, e.g. ``FrOper`` for
CBIG's ``FrOperIns``), so it cannot replace the pinned CBIG name list. What they are good
for is an independent check of the label order of our derived atlas
(:func:`schaefer_crosscheck`), run by ``prefetch --verify`` when they are present.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from bids_semantoks.errors import DataError

__all__ = [
    "TEMPLATES",
    "templateflow_home",
    "template_grids",
    "template_file",
    "brain_mask",
    "schaefer_dseg",
    "GridCheck",
    "check_bold_grid",
    "schaefer_crosscheck",
]

LOGGER = logging.getLogger("bids_semantoks")

#: TemplateFlow templates the app knows (the spaces of the default atlas).
TEMPLATES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
HOME_ENV = "TEMPLATEFLOW_HOME"


def templateflow_home() -> Path:
    """The TemplateFlow home the ``templateflow`` package would use (nothing is created).

    ``$TEMPLATEFLOW_HOME``, else the platform's user cache folder ``templateflow``
    (``~/.cache/templateflow`` on Linux), exactly as ``templateflow.conf`` computes it.
    """
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("templateflow")).absolute()


def _populated(home: Path) -> bool:
    try:
        return home.is_dir() and any(home.iterdir())
    except OSError:
        return False


def _present(path: Path) -> bool:
    """A real file: not an empty TemplateFlow placeholder, not a dangling annex link."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _skeleton_zip() -> Path | None:
    spec = importlib.util.find_spec("templateflow")  # locates the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "conf" / "templateflow-skel.zip"
    return path if path.is_file() else None


@lru_cache(maxsize=8)
def _description(space: str, home: str) -> dict:
    local = Path(home) / f"tpl-{space}" / "template_description.json"
    if _present(local):
        return json.loads(local.read_text())
    skel = _skeleton_zip()
    if skel is None:
        raise DataError(
            f"{local}: TemplateFlow's description of {space} is not available (no TemplateFlow home and "
            "no templateflow package); install templateflow"
        )
    with zipfile.ZipFile(skel) as zf:
        return json.loads(zf.read(f"tpl-{space}/template_description.json"))


def template_grids(space: str) -> dict[str, tuple[tuple[int, int, int], np.ndarray]]:
    """TemplateFlow's grids of ``space``: ``{res: (shape, affine)}`` (RAS, as TemplateFlow stores them).

    Parameters
    ----------
    space : str
        A TemplateFlow template id, e.g. ``"MNI152NLin2009cAsym"``.

    Returns
    -------
    dict
        Keys are TemplateFlow ``res-`` labels (``"01"``, ``"02"``, ...); values the voxel
        shape and the 4x4 affine (diagonal voxel size, first voxel centre at ``origin``).

    Examples
    --------
    >>> shape, affine = template_grids("MNI152NLin2009cAsym")["02"]
    >>> shape, affine[:3, 3].tolist()
    ((97, 115, 97), [-96.5, -132.5, -78.5])
    """
    desc = _description(space, str(templateflow_home()))
    grids = {}
    for res, spec in (desc.get("res") or {}).items():
        affine = np.eye(4)
        affine[:3, :3] = np.diag([float(z) for z in spec["zooms"]])
        affine[:3, 3] = [float(o) for o in spec["origin"]]
        grids[str(res)] = (tuple(int(s) for s in spec["shape"]), affine)
    return grids


@lru_cache(maxsize=4)
def _client(home: str):
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=home, autoupdate=False)


def template_file(space: str, **entities) -> Path | None:
    """A file of ``space`` already in the TemplateFlow home, or None (never downloads).

    Parameters
    ----------
    space : str
        Template id.
    **entities
        TemplateFlow query entities (``resolution=2``, ``desc="brain"``, ``suffix="mask"``,
        ``atlas=...``).

    Returns
    -------
    Path or None
        The one matching file with content; None when the home is empty, the file is a
        not-downloaded placeholder, or the query matches zero or several files.
    """
    home = templateflow_home()
    if not _populated(home):
        return None  # importing templateflow now would write a skeleton into the home
    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    try:
        found = [Path(p) for p in _client(str(home)).ls(space, **entities)]
    except Exception as exc:  # noqa: BLE001 - a pybids/templateflow mismatch: fall back to the name
        LOGGER.debug("templateflow could not list %s (%s); looking the file up by name", home, exc)
        found = _by_name(home, space, **entities)
    found = [p for p in found if _present(p)]
    return found[0] if len(found) == 1 else None


def _by_name(home: Path, space: str, *, resolution=None, atlas=None, desc=None, suffix=None, **_) -> list[Path]:
    parts = [f"tpl-{space}"]
    if resolution is not None:
        parts.append(f"res-{int(resolution):02d}")
    if atlas:
        parts.append(f"atlas-{atlas}")
    if desc:
        parts.append(f"desc-{desc}")
    name = "_".join(parts + [suffix]) + ".nii.gz"
    return [home / f"tpl-{space}" / name]


def brain_mask(space: str, resolution: int = 2) -> Path | None:
    """TemplateFlow's brain mask of ``space`` at ``resolution`` when it is in the home."""
    return template_file(space, resolution=resolution, desc="brain", suffix="mask")


def schaefer_dseg(space: str, resolution: int = 2) -> Path | None:
    """TemplateFlow's Schaefer 2018 400-parcel 7-network ``_dseg`` when it is in the home."""
    return template_file(space, resolution=resolution, atlas="Schaefer2018", desc="400Parcels7Networks",
                         suffix="dseg")


# ---------------------------------------------------------------------------------------
# is a BOLD on its template's grid?


@dataclass(frozen=True)
class GridCheck:
    """Result of :func:`check_bold_grid`.

    Attributes
    ----------
    res : str or None
        The TemplateFlow ``res-`` whose voxel centres the image shares (any storage order).
    message : str or None
        None when the image is on the grid its name announces (or on any grid of the
        template when its name has no ``res-``); otherwise a one-line explanation.
    """

    res: str | None
    message: str | None


def _corner_centres(shape, affine) -> np.ndarray:
    idx = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    pts = (np.asarray(affine, dtype=float) @ idx.T).T[:, :3]
    return np.array(sorted(map(tuple, np.round(pts, 2))))


def _same_voxels(shape, affine, grid_shape, grid_affine) -> bool:
    """Same voxel centres, whatever the axis order or direction (e.g. FSL LAS vs TemplateFlow RAS)."""
    if sorted(shape) != sorted(grid_shape):
        return False
    zooms = np.sort(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
    if not np.allclose(zooms, np.sort(np.diag(grid_affine)[:3]), atol=1e-3):
        return False
    return np.allclose(_corner_centres(shape, affine), _corner_centres(grid_shape, grid_affine), atol=0.01)


def check_bold_grid(img, space: str | None, res: str | None = None, where: str | Path = "") -> GridCheck:
    """Check that a BOLD image lies on the TemplateFlow grid of its space.

    fMRIPrep writes ``space-<template>_res-<n>`` outputs on TemplateFlow's ``res-<n>``
    grid (e.g. 97x115x97, 2 mm, first voxel at (-96.5, -132.5, -78.5) for
    MNI152NLin2009cAsym res-2; 91x109x91, 2 mm, (-90, -126, -72) for MNI152NLin6Asym). A
    file that announces a ``res-`` but is not on that grid was resampled after fMRIPrep, or
    its name is wrong: a warning. Outputs without ``res-`` (fMRIPrep's native resolution)
    and other grids are fine: the atlas is resampled to the BOLD grid by nearest
    neighbour, which gives the same regional signals. Only a field of view that misses the
    template entirely is an error: such an image cannot be in ``space``.

    Parameters
    ----------
    img : nibabel image
        The BOLD (3-D or 4-D).
    space : str or None
        The ``space-`` entity; other spaces than :data:`TEMPLATES` are not checked.
    res : str, optional
        The ``res-`` entity of the file name.
    where : str or Path
        File name for the messages.

    Returns
    -------
    GridCheck

    Raises
    ------
    DataError
        The image's field of view does not overlap the template's at all.
    """
    if space not in TEMPLATES:
        return GridCheck(None, None)
    shape, affine = tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=float)
    try:
        grids = template_grids(space)
    except (DataError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # no description: no check
        LOGGER.debug("%s: TemplateFlow grids of %s unavailable (%s); grid not checked", where, space, exc)
        return GridCheck(None, None)
    if not grids:
        return GridCheck(None, None)
    on = next((r for r, (gs, ga) in grids.items() if _same_voxels(shape, affine, gs, ga)), None)
    # field of view: bounding boxes of the voxel centres
    box = _corner_centres(shape, affine)
    gshape, gaff = grids.get("01", next(iter(grids.values())))
    gbox = _corner_centres(gshape, gaff)
    lo, hi = np.maximum(box.min(0), gbox.min(0)), np.minimum(box.max(0), gbox.max(0))
    if np.any(hi <= lo):
        raise DataError(
            f"{where}: its field of view ({box.min(0).tolist()} to {box.max(0).tolist()} mm) does not overlap "
            f"the {space} template at all; the image is not in {space}: check its space- entity"
        )
    wanted = None
    if res is not None:
        try:
            wanted = f"{int(str(res)):02d}"
        except ValueError:
            wanted = None
    if wanted is not None and wanted in grids and on != wanted:
        gs, ga = grids[wanted]
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).round(3).tolist()
        return GridCheck(on, (
            f"{where}: named res-{res} but not on TemplateFlow's {space} res-{wanted} grid "
            f"({'x'.join(map(str, gs))}, {ga[0, 0]:g} mm, first voxel at {ga[:3, 3].tolist()}); it has "
            f"{'x'.join(map(str, shape))} voxels of {zooms} mm: it was resampled after fMRIPrep or is misnamed "
            "(the atlas is resampled to it all the same)"
        ))
    return GridCheck(on, None)


# ---------------------------------------------------------------------------------------
# an independent check of the derived atlas's Schaefer labels


def schaefer_crosscheck(derived_dseg: str | Path, space: str, resolution: int = 2) -> dict | None:
    """Compare the Schaefer labels (1-400) of our derived atlas with TemplateFlow's Schaefer 2018.

    Both are mapped by world coordinates (never by array index: TemplateFlow stores RAS,
    the FSL/CBIG grid LAS). On the voxels both label as Schaefer cortex, the fraction with
    the same parcel number is measured; it is close to 1 when the label order is right and
    near 0 for a shifted order.

    Parameters
    ----------
    derived_dseg : str or Path
        Our ``_dseg.nii.gz`` of ``space``.
    space : str
        Template space.
    resolution : int
        TemplateFlow ``res-`` of the Schaefer file.

    Returns
    -------
    dict or None
        ``{"templateflow_file", "common_voxels", "agreement"}``; None when TemplateFlow's
        file is not in the home.

    Raises
    ------
    DataError
        Fewer than half of the common voxels agree: the label order is wrong.
    """
    import nibabel as nib
    from nilearn.image import resample_to_img

    tf_path = schaefer_dseg(space, resolution)
    if tf_path is None:
        return None
    ours = nib.load(str(derived_dseg))
    try:
        theirs = resample_to_img(nib.load(str(tf_path)), ours, interpolation="nearest",
                                 force_resample=True, copy_header=True)
    except Exception as exc:  # noqa: BLE001 - unreadable file: say which
        raise DataError(f"{tf_path}: cannot read TemplateFlow's Schaefer file ({exc}); delete it") from None
    a = np.asarray(ours.dataobj).astype(np.int64)
    b = np.rint(np.asarray(theirs.dataobj)).astype(np.int64)
    common = (a >= 1) & (a <= 400) & (b >= 1) & (b <= 400)
    n = int(common.sum())
    agreement = float((a[common] == b[common]).mean()) if n else 0.0
    if agreement < 0.5:
        raise DataError(
            f"{derived_dseg}: only {agreement:.1%} of {n} cortical voxels carry the same Schaefer parcel as "
            f"TemplateFlow's {tf_path.name}; the label order is wrong: delete the derived files to rebuild them"
        )
    return {"templateflow_file": str(tf_path), "common_voxels": n, "agreement": agreement}
