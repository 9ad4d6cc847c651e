"""Atlas registry: the default 457-label model atlas per space, and user atlases.

The presets are data (``bids_semantoks/data/atlases.json``): the upstream files with their
pinned URLs, sizes and sha256, and per template space the inputs of the derived atlas.

Cache layout (the layout of ``../shared/atlases``)::

    <atlas_dir>/tian_subcortex/...        unchanged upstream files, upstream names
    <atlas_dir>/cbig_schaefer2018/...
    <atlas_dir>/buckner2011/...
    <atlas_dir>/derived/Schaefer400-7N_TianS3_Buckner7_<space>_2mm_dseg.{nii.gz,tsv,json}

``atlas_dir`` is, in this order: the explicit argument; ``$BIDS_SEMANTOKS_ATLAS_DIR``;
``<data_dir>/atlases`` with ``data_dir`` = explicit argument (``--data-dir``),
``$BIDS_SEMANTOKS_DATA``, ``$XDG_CACHE_HOME/bids_semantoks`` or ``~/.cache/bids_semantoks``.

A cache that already holds verified derived files is used read-only (nothing is written,
no lock is taken). Derived files verify when their sha256 equals the reference files
(``reference_derived`` in atlases.json) or the build record the app wrote beside them
(``derived/.<stem>.build.json``, used when another nibabel/zlib compresses differently).
"""

from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from filelock import Timeout

from bids_semantoks.atlas import build as _build
from bids_semantoks.atlas.fetch import RemoteFile, ensure_file, is_valid, lock_for, sha256_of, write_atomic
from bids_semantoks.atlas.table import AtlasTable, _entity
from bids_semantoks.errors import DataError, MissingInputError, UsageError

#: Atlas label of the model's default atlas (``atlas-<label>`` in output names).
DEFAULT_ATLAS_LABEL = "SchaeferTianBuckner457"
#: Template spaces for which the default atlas exists (first = default).
SUPPORTED_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")

ATLAS_DIR_ENV = "BIDS_SEMANTOKS_ATLAS_DIR"
DATA_DIR_ENV = "BIDS_SEMANTOKS_DATA"


@dataclass(frozen=True)
class ResolvedAtlas:
    """An atlas ready for extraction.

    Attributes
    ----------
    table : AtlasTable
        Regions in channel order, with network labels.
    dseg_img_path : Path or None
        The label image (``_dseg.nii.gz``); None for a user atlas resolved without image.
    space : str or None
        Template space of the image (None when unknown).
    sources : list of str
        Provenance: upstream URLs with a ``#sha256=<hex>`` fragment (default atlas), or the
        user's files (user atlas).
    citation : str
        Methods/citation paragraph (Markdown) for logs and ``CITATION.md``.
    dseg_tsv_path : Path or None
        The ``_dseg.tsv`` the table came from (None when built from the label files).
    """

    table: AtlasTable
    dseg_img_path: Path | None
    space: str | None
    sources: list[str] = field(default_factory=list)
    citation: str = ""
    dseg_tsv_path: Path | None = None

    @property
    def label(self) -> str:
        """Atlas label (``atlas-<label>``)."""
        return self.table.label


# ---------------------------------------------------------------------------------------
# registry data


@lru_cache(maxsize=1)
def load_registry() -> dict:
    """The parsed ``bids_semantoks/data/atlases.json`` (do not modify the result)."""
    text = resources.files("bids_semantoks.data").joinpath("atlases.json").read_text()
    return json.loads(text)


def remote_file(relpath: str) -> RemoteFile:
    """The registry entry of an upstream file, by its cache-relative path."""
    entry = load_registry()["files"][relpath]
    return RemoteFile(relpath, tuple(entry["urls"]), entry["sha256"], int(entry["size"]))


def _space_inputs(space: str) -> list[str]:
    """Cache-relative paths of the upstream inputs of ``space``, in sidecar ``Sources`` order."""
    reg = load_registry()
    lab = reg["labels"]
    return [
        reg["spaces"][space]["tian_combined"],
        lab["tian_combined_lut"],
        lab["tian_names"],
        lab["schaefer_order"],
        reg["buckner"],
    ]


def check_space(space: str) -> str:
    """Return ``space`` if the default atlas supports it, else raise :class:`UsageError`."""
    if space not in SUPPORTED_SPACES:
        raise UsageError(
            f"space {space!r} is not supported by the default atlas (supported: "
            f"{', '.join(SUPPORTED_SPACES)}); use BOLD in a supported space or pass a user atlas "
            "with --atlas"
        )
    return space


# ---------------------------------------------------------------------------------------
# cache location


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Data directory: ``data_dir`` > ``$BIDS_SEMANTOKS_DATA`` > ``$XDG_CACHE_HOME|~/.cache``/bids_semantoks."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(cache).expanduser() / "bids_semantoks"


def resolve_atlas_dir(atlas_dir: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """Folder of the atlas cache.

    Parameters
    ----------
    atlas_dir : str or Path, optional
        Explicit atlas cache folder; wins over everything.
    data_dir : str or Path, optional
        Data directory (``--data-dir``); the cache is ``<data_dir>/atlases``.

    Returns
    -------
    Path
        ``atlas_dir``, else ``$BIDS_SEMANTOKS_ATLAS_DIR``, else ``<data_dir>/atlases`` with
        ``data_dir`` from :func:`resolve_data_dir`. The folder is not created here.

    Examples
    --------
    >>> resolve_atlas_dir("/tmp/atlases")
    PosixPath('/tmp/atlases')
    """
    if atlas_dir is not None:
        return Path(atlas_dir).expanduser()
    env = os.environ.get(ATLAS_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return resolve_data_dir(data_dir) / "atlases"


# ---------------------------------------------------------------------------------------
# derived files


def _derived_paths(atlas_dir: Path, space: str) -> dict[str, Path]:
    stem = _build.derived_stem(space)
    d = atlas_dir / "derived"
    return {"nii": d / f"{stem}.nii.gz", "tsv": d / f"{stem}.tsv", "json": d / f"{stem}.json"}


def _build_record_path(atlas_dir: Path, space: str) -> Path:
    return atlas_dir / "derived" / f".{_build.derived_stem(space)}.build.json"


def _derived_ok(atlas_dir: Path, space: str) -> bool:
    """True when the derived files of ``space`` are present and verify (no writes)."""
    paths = _derived_paths(atlas_dir, space)
    ref = load_registry()["spaces"][space]["reference_derived"]
    if all(is_valid(p, ref[f"derived/{p.name}"]["size"], ref[f"derived/{p.name}"]["sha256"])
           for p in paths.values()):
        return True
    record_path = _build_record_path(atlas_dir, space)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    expected_inputs = {rel: remote_file(rel).sha256 for rel in _space_inputs(space)}
    if record.get("inputs") != expected_inputs:
        return False
    files = record.get("files", {})
    for p in paths.values():
        entry = files.get(p.name)
        if not entry or not is_valid(p, int(entry["size"]), entry["sha256"]):
            return False
    return True


def _ensure_derived(atlas_dir: Path, space: str, download: bool) -> None:
    if _derived_ok(atlas_dir, space):
        return
    inputs = {rel: ensure_file(remote_file(rel), atlas_dir, download=download) for rel in _space_inputs(space)}
    out_dir = atlas_dir / "derived"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MissingInputError(
            f"{out_dir}: cannot create the derived atlas folder ({exc.strerror}); set "
            f"{ATLAS_DIR_ENV} or --data-dir to a writable folder"
        ) from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise MissingInputError(
            f"{out_dir}: the derived {space} atlas is missing or does not verify and the cache is "
            f"read-only; set {ATLAS_DIR_ENV} or --data-dir to a writable folder"
        )
    try:
        with lock_for(atlas_dir, f"derived/{_build.derived_stem(space)}"):
            if _derived_ok(atlas_dir, space):  # built by another process meanwhile
                return
            _build_space(atlas_dir, space, inputs, download)
    except Timeout as exc:
        raise MissingInputError(
            f"{exc.lock_file}: held by another process for too long; delete it if no other "
            "bids_semantoks job is running"
        ) from exc


def _build_space(atlas_dir: Path, space: str, inputs: dict[str, Path], download: bool) -> None:
    reg = load_registry()
    spec = reg["spaces"][space]
    out_dir = atlas_dir / "derived"
    rows = _rows_from_label_files(atlas_dir, download=download)
    paths = _build.build_derived(
        space,
        tian_combined=inputs[spec["tian_combined"]],
        buckner=inputs[reg["buckner"]],
        rows=rows,
        out_dir=out_dir,
        resolution=spec["resolution"],
        placement=spec["placement"],
        sources=[remote_file(rel).urls[0] for rel in _space_inputs(space)],
        shape=spec["shape"],
        affine=spec["affine"],
    )
    record = {
        "inputs": {rel: remote_file(rel).sha256 for rel in _space_inputs(space)},
        "files": {
            p.name: {"sha256": sha256_of(p), "size": p.stat().st_size}
            for key, p in paths.items() if key in ("nii", "tsv", "json")
        },
    }
    write_atomic(_build_record_path(atlas_dir, space), (json.dumps(record, indent=2) + "\n").encode())


def _rows_from_label_files(atlas_dir: Path, download: bool) -> list[tuple[int, str, str]]:
    lab = load_registry()["labels"]
    schaefer = ensure_file(remote_file(lab["schaefer_order"]), atlas_dir, download=download)
    tian = ensure_file(remote_file(lab["tian_names"]), atlas_dir, download=download)
    lut = ensure_file(remote_file(lab["tian_combined_lut"]), atlas_dir, download=download)
    return _build.default_rows(
        _build.read_schaefer_names(schaefer), _build.read_tian_names(tian), _build.read_lut_names(lut)
    )


def _check_default_table(table: AtlasTable, where: Path) -> AtlasTable:
    expected = load_registry()["labels"]["network_sizes"]
    got = dict(zip(table.networks, table.network_sizes))
    if table.n_regions != _build.N_TOTAL or got != expected or table.indices != tuple(range(1, _build.N_TOTAL + 1)):
        raise DataError(
            f"{where}: default atlas table has {table.n_regions} rows and networks {got}, expected "
            f"{_build.N_TOTAL} rows with {expected}; delete the cached file to rebuild it"
        )
    return table


def citation_text(space: str) -> str:
    """Methods/citation paragraph of the default atlas in ``space`` (Markdown)."""
    check_space(space)
    template = resources.files("bids_semantoks.data").joinpath("atlas_citation.md").read_text()
    note = load_registry()["spaces"][space]["citation_note"]
    return string.Template(template).substitute(space=space, placement_note=note)


# ---------------------------------------------------------------------------------------
# public API


def get_default_atlas(
    space: str,
    *,
    atlas_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> ResolvedAtlas:
    """The model's 457-label atlas (Schaefer-400 7N + Tian S3 + Buckner-7) for ``space``.

    Uses the derived files in the cache when they verify (read-only is fine). Otherwise
    makes sure the upstream files are in the cache (downloading them when allowed, sha256
    checked) and builds the derived files into the cache.

    Parameters
    ----------
    space : str
        Template space of the BOLD data; one of :data:`SUPPORTED_SPACES`. Any ``res-`` is
        fine: the atlas is resampled to each BOLD grid later.
    atlas_dir, data_dir : str or Path, optional
        Cache location (see :func:`resolve_atlas_dir`).
    download : bool, default True
        Allow downloads of missing upstream files.

    Returns
    -------
    ResolvedAtlas
        ``table.label`` is :data:`DEFAULT_ATLAS_LABEL`; ``dseg_img_path`` is the 2 mm
        ``_dseg.nii.gz`` of ``space``.

    Raises
    ------
    UsageError
        ``space`` is not supported.
    MissingInputError
        Files are missing and cannot be downloaded or written.
    DataError
        A file does not verify (wrong sha256).
    """
    check_space(space)
    root = resolve_atlas_dir(atlas_dir, data_dir)
    _ensure_derived(root, space, download)
    paths = _derived_paths(root, space)
    table = _check_default_table(AtlasTable.from_tsv(paths["tsv"], label=DEFAULT_ATLAS_LABEL), paths["tsv"])
    return ResolvedAtlas(
        table=table,
        dseg_img_path=paths["nii"],
        space=space,
        sources=[remote_file(rel).provenance for rel in _space_inputs(space)],
        citation=citation_text(space),
        dseg_tsv_path=paths["tsv"],
    )


#: Package data: the 457-row region table of the default atlas (byte-identical to the derived
#: ``_dseg.tsv`` of both spaces, whose sha256 is pinned in atlases.json).
PACKAGED_TABLE = "atlas-SchaeferTianBuckner457_dseg.tsv"


@lru_cache(maxsize=1)
def packaged_default_table() -> AtlasTable:
    """The default atlas's region table shipped with the package (no cache, no network).

    The file is checked against the pinned sha256 of the derived ``_dseg.tsv``
    (``reference_derived`` in atlases.json), so it cannot drift from the atlas the
    cache builds.

    Returns
    -------
    AtlasTable
        Label :data:`DEFAULT_ATLAS_LABEL`, 457 regions in channel order.

    Raises
    ------
    DataError
        The packaged file does not match its pinned sha256 (a damaged installation).
    """
    res = resources.files("bids_semantoks.data").joinpath(PACKAGED_TABLE)
    with resources.as_file(res) as path:
        ref = load_registry()["spaces"][SUPPORTED_SPACES[0]]["reference_derived"]
        pinned = ref[f"derived/{_build.derived_stem(SUPPORTED_SPACES[0])}.tsv"]
        if not is_valid(Path(path), int(pinned["size"]), pinned["sha256"]):
            raise DataError(
                f"{path}: the packaged default atlas table does not match its pinned sha256; "
                "reinstall bids_semantoks"
            )
        return _check_default_table(AtlasTable.from_tsv(path, label=DEFAULT_ATLAS_LABEL), Path(path))


def get_default_table(
    *,
    atlas_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> AtlasTable:
    """The 457-row region table of the default atlas, without any image.

    Shipped as package data (:func:`packaged_default_table`), so it needs neither an atlas
    cache nor a network: ``load_encoder`` of the authors' checkpoint and time-series input
    work on a fresh installation. The cache arguments are accepted for compatibility and
    not used.

    Returns
    -------
    AtlasTable
        Label :data:`DEFAULT_ATLAS_LABEL`; 457 regions; network sizes Vis 61, SomMot 77,
        DorsAttn 46, SalVentAttn 47, Limbic 26, Cont 52, Default 91, Subcortex 50,
        Cerebellum 7, in this token order.
    """
    return packaged_default_table()


def table_from_label_files(
    *,
    atlas_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> AtlasTable:
    """The default table rebuilt from the three upstream label text files (about 37 kB).

    Used to check the packaged table against its upstream sources; downloads the label
    files into the cache when missing and allowed.
    """
    root = resolve_atlas_dir(atlas_dir, data_dir)
    rows = _rows_from_label_files(root, download=download)
    table = AtlasTable(
        label=DEFAULT_ATLAS_LABEL,
        indices=tuple(r[0] for r in rows),
        names=tuple(r[1] for r in rows),
        network_labels=tuple(r[2] for r in rows),
    )
    return _check_default_table(table, root)


def get_user_atlas(
    tsv_path: str | Path,
    space: str | None = None,
    need_image: bool = True,
) -> ResolvedAtlas:
    """A user atlas from its BIDS ``_dseg.tsv`` (``index``, ``name``, ``network_label``).

    The label image is looked for beside the table: first ``<stem>_dseg.nii[.gz]`` (same
    stem), then a ``_dseg.nii[.gz]`` whose entities are the table's plus ``space-<space>``
    (and optionally ``res-<label>``; without ``res`` preferred), e.g.
    ``atlas-CC200_dseg.tsv`` -> ``atlas-CC200_space-MNI152NLin6Asym_dseg.nii.gz``.

    Parameters
    ----------
    tsv_path : str or Path
        The atlas ``_dseg.tsv``.
    space : str, optional
        Template space of the BOLD data. When None, a space-specific image is used only if
        it is the only one.
    need_image : bool, default True
        When False, no image is needed (e.g. the input is already region time series);
        ``dseg_img_path`` is then the image if found, else None.

    Returns
    -------
    ResolvedAtlas
        ``table.label`` is :func:`user_atlas_label` of the table's file name: a valid BIDS
        label for the ``atlas-`` entity of the output names.

    Raises
    ------
    MissingInputError
        The table is missing, or ``need_image`` and no matching image was found (the
        message lists the names looked for).
    DataError
        The table is malformed.
    """
    tsv = Path(tsv_path).expanduser()
    if not tsv.name.endswith("_dseg.tsv"):
        raise UsageError(f"{tsv}: a user atlas must be a BIDS '_dseg.tsv' file; rename it or pass the _dseg.tsv")
    table = AtlasTable.from_tsv(tsv, label=user_atlas_label(tsv))
    image, looked_for = _find_user_image(tsv, space)
    if image is None and need_image:
        raise MissingInputError(
            f"{tsv}: no label image found beside it (looked for {', '.join(looked_for)}); put the "
            f"atlas _dseg.nii.gz next to the table under one of these names"
        )
    img_space = _entity(image.name, "space") if image is not None else None
    sources = [str(tsv.resolve())] + ([str(image.resolve())] if image is not None else [])
    citation = (
        f"Regional time series were extracted with a user-provided atlas ({tsv.name}, "
        f"{table.n_regions} regions in {len(table.networks)} networks"
        + (f", {img_space or space} space" if (img_space or space) else "")
        + "); cite its authors."
    )
    return ResolvedAtlas(
        table=table,
        dseg_img_path=image,
        space=img_space or space,
        sources=sources,
        citation=citation,
        dseg_tsv_path=tsv,
    )


def user_atlas_label(tsv_path: str | Path) -> str:
    """The ``atlas-<label>`` of a user atlas's outputs, derived from its file name.

    The value of the file's own ``atlas-`` entity when it has one, else the name before
    ``_dseg.tsv``; either with every character outside ``[A-Za-z0-9]`` removed, since a BIDS
    label is alphanumeric (a ``-`` or ``_`` inside it would make pybids, and the group
    level, split the output names into other entities).

    Parameters
    ----------
    tsv_path : str or Path
        The atlas ``_dseg.tsv``.

    Returns
    -------
    str
        An alphanumeric label, never empty.

    Raises
    ------
    UsageError
        The name holds no letter or digit to make a label from.

    Examples
    --------
    >>> user_atlas_label("atlas-CC200_space-MNI152NLin6Asym_dseg.tsv")
    'CC200'
    >>> user_atlas_label("Schaefer400-7N_TianS3_Buckner7_MNI152NLin2009cAsym_2mm_dseg.tsv")
    'Schaefer4007NTianS3Buckner7MNI152NLin2009cAsym2mm'
    """
    name = Path(tsv_path).name
    stem = name[: -len("_dseg.tsv")] if name.endswith("_dseg.tsv") else name.split(".")[0]
    raw = _entity(stem, "atlas") or stem
    label = re.sub(r"[^A-Za-z0-9]", "", raw)
    if not label:
        raise UsageError(f"{tsv_path}: cannot make an atlas label from this file name; name it atlas-<label>_dseg.tsv")
    return label


def _find_user_image(tsv: Path, space: str | None) -> tuple[Path | None, list[str]]:
    stem = tsv.name[: -len("_dseg.tsv")]
    same = [f"{stem}_dseg.nii.gz", f"{stem}_dseg.nii"]
    for name in same:
        if (tsv.parent / name).is_file():
            return tsv.parent / name, same
    base = _entities(stem)
    matches = []
    for cand in sorted(tsv.parent.glob("*_dseg.nii*")):
        if not (cand.name.endswith("_dseg.nii.gz") or cand.name.endswith("_dseg.nii")):
            continue
        ents = _entities(cand.name.split("_dseg.nii")[0])
        cand_space = ents.pop("space", None)
        ents.pop("res", None)
        if ents != base or cand_space is None:
            continue
        if space is None or cand_space == space:
            matches.append(cand)
    if space is not None:
        looked = same + [f"{_with_space(stem, space)}[_res-<label>]_dseg.nii[.gz]"]
    else:
        looked = same + [f"{_with_space(stem, '<space>')}_dseg.nii[.gz] (only one space present)"]
    if space is None and len({_entity(m.name, 'space') for m in matches}) > 1:
        return None, looked
    if not matches:
        return None, looked
    matches.sort(key=lambda p: (_entity(p.name, "res") is not None, p.name))
    return matches[0], looked


def _entities(stem: str) -> dict[str, str]:
    out = {}
    for part in stem.split("_"):
        key, sep, value = part.partition("-")
        out[key if sep else f"_suffix_{part}"] = value
    return out


def _with_space(stem: str, space: str) -> str:
    """Insert ``space-<space>`` after the ``atlas``/``tpl`` entity (BIDS entity order)."""
    parts = stem.split("_")
    pos = next((i + 1 for i, p in enumerate(parts) if p.startswith(("atlas-", "tpl-"))), len(parts))
    return "_".join(parts[:pos] + [f"space-{space}"] + parts[pos:])
