"""Building the derived 457-label atlas from downloaded upstream files; offline reuse."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_semantoks.atlas import SUPPORTED_SPACES, get_default_atlas, get_default_table
from bids_semantoks.atlas.build import derived_stem
from bids_semantoks.atlas.fetch import MIRROR_ENV
from bids_semantoks.atlas.registry import ATLAS_DIR_ENV, load_registry


@pytest.fixture(scope="module")
def filled(tmp_path_factory, shared_atlases, file_server_cls):
    """An empty cache filled through a local mirror (both spaces); the server then stops."""
    cache = tmp_path_factory.mktemp("atlas_cache")
    server = file_server_cls(shared_atlases)
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv(MIRROR_ENV, server.url)
        for var in (ATLAS_DIR_ENV, "BIDS_SEMANTOKS_DATA"):
            mp.delenv(var, raising=False)
        resolved = {space: get_default_atlas(space, atlas_dir=cache) for space in SUPPORTED_SPACES}
    finally:
        server.stop()
        mp.undo()
    return cache, resolved, server.url


@pytest.mark.parametrize("space", SUPPORTED_SPACES)
def test_built_atlas_equals_reference(filled, shared_atlases, space):
    cache, resolved, _ = filled
    atlas = resolved[space]
    stem = derived_stem(space)
    assert atlas.dseg_img_path == cache / "derived" / f"{stem}.nii.gz"
    ours = nib.load(atlas.dseg_img_path)
    ref = nib.load(shared_atlases / "derived" / f"{stem}.nii.gz")
    # voxel-identical, same grid and header codes (also the 2009c variant: nilearn's
    # nearest-neighbour tie-breaking is deterministic, no disagreement was measured)
    assert ours.shape == ref.shape
    assert np.array_equal(ours.affine, ref.affine)
    assert ours.get_data_dtype() == np.int16 == ref.get_data_dtype()
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
    assert int(ours.header["qform_code"]) == 4 and int(ours.header["sform_code"]) == 4
    assert ours.header["descrip"] == ref.header["descrip"]
    assert np.unique(np.asarray(ours.dataobj)).tolist() == list(range(458))
    # TSV identical to the shared one
    assert (cache / "derived" / f"{stem}.tsv").read_bytes() == (shared_atlases / "derived" / f"{stem}.tsv").read_bytes()
    # sidecar: same keys and provenance as the reference one, plus GeneratedBy
    side = json.loads((cache / "derived" / f"{stem}.json").read_text())
    ref_side = json.loads((shared_atlases / "derived" / f"{stem}.json").read_text())
    assert set(side) == set(ref_side) | {"GeneratedBy"}
    for key in ("Sources", "SpatialReference", "Resolution", "Name"):
        assert side[key] == ref_side[key]
    # only the needed upstream files were downloaded; the layout is that of ../shared/atlases
    reg = load_registry()
    wanted = {reg["spaces"][s]["tian_combined"] for s in SUPPORTED_SPACES} | {reg["buckner"]}
    wanted |= {reg["labels"][k] for k in ("schaefer_order", "tian_names", "tian_combined_lut")}
    wanted |= {f"derived/{derived_stem(s)}.{ext}" for s in SUPPORTED_SPACES for ext in ("nii.gz", "tsv", "json")}
    wanted |= {f"derived/Buckner2011_7Networks_{s}_2mm.nii.gz" for s in SUPPORTED_SPACES}
    visible = {
        p.relative_to(cache).as_posix()
        for p in cache.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(cache).parts)
    }
    assert visible == wanted
    assert all((shared_atlases / rel).is_file() for rel in wanted)


def test_resolved_atlas_fields(filled):
    _, resolved, _ = filled
    for space, atlas in resolved.items():
        assert atlas.space == space
        assert atlas.label == "SchaeferTianBuckner457"
        assert atlas.table.n_regions == 457
        assert len(atlas.sources) == 5
        assert all("#sha256=" in s for s in atlas.sources)
        assert space in atlas.citation and "Buckner" in atlas.citation and "Tian" in atlas.citation
        assert "$" not in atlas.citation
    assert "without a template warp" in resolved["MNI152NLin2009cAsym"].citation
    assert "without a template warp" not in resolved["MNI152NLin6Asym"].citation


def test_offline_once_filled(filled, tree_snapshot, monkeypatch):
    """The server is stopped: the filled cache still serves both spaces and the table."""
    cache, resolved, dead_url = filled
    monkeypatch.setenv(MIRROR_ENV, dead_url)
    before = tree_snapshot(cache)
    for space in SUPPORTED_SPACES:
        again = get_default_atlas(space, atlas_dir=cache)
        assert again.dseg_img_path == resolved[space].dseg_img_path
        assert again.table == resolved[space].table
        assert get_default_atlas(space, atlas_dir=cache, download=False).table == again.table
    assert get_default_table(atlas_dir=cache, download=False) == resolved["MNI152NLin6Asym"].table
    assert tree_snapshot(cache) == before  # nothing rewritten


def test_offline_rebuild_from_cached_upstream(filled, tmp_path, monkeypatch):
    """Derived files deleted, server down: rebuilt from the cached upstream files."""
    import shutil

    cache, resolved, dead_url = filled
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    shutil.rmtree(copy / "derived")
    monkeypatch.setenv(MIRROR_ENV, dead_url)
    space = "MNI152NLin6Asym"
    atlas = get_default_atlas(space, atlas_dir=copy, download=False)
    ref = resolved[space]
    assert atlas.dseg_img_path.read_bytes() == ref.dseg_img_path.read_bytes()


def test_env_atlas_dir_and_data_dir(filled, tmp_path, monkeypatch):
    cache, resolved, dead_url = filled
    monkeypatch.setenv(MIRROR_ENV, dead_url)
    monkeypatch.setenv(ATLAS_DIR_ENV, str(cache))
    assert get_default_atlas("MNI152NLin6Asym").dseg_img_path == resolved["MNI152NLin6Asym"].dseg_img_path
    monkeypatch.delenv(ATLAS_DIR_ENV)
    monkeypatch.setenv("BIDS_SEMANTOKS_DATA", str(cache.parent))
    from bids_semantoks.atlas import resolve_atlas_dir

    assert resolve_atlas_dir() == cache.parent / "atlases"
