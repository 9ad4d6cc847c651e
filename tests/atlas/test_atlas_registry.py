"""Atlas registry: cache location, read-only shared cache, spaces, default table, user atlases,
concurrent processes filling one cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_semantoks.atlas import (
    DEFAULT_ATLAS_LABEL,
    SUPPORTED_SPACES,
    AtlasTable,
    get_default_atlas,
    get_default_table,
    get_user_atlas,
    resolve_atlas_dir,
)
from bids_semantoks.atlas.build import derived_stem
from bids_semantoks.atlas.fetch import MIRROR_ENV, sha256_of
from bids_semantoks.atlas.registry import ATLAS_DIR_ENV, DATA_DIR_ENV, load_registry
from bids_semantoks.errors import MissingInputError, UsageError

EXPECTED_SIZES = (61, 77, 46, 47, 26, 52, 91, 50, 7)
CC200_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "abide_cc200" / "atlas-CC200"


# ---------------------------------------------------------------- cache location


def test_resolve_atlas_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_atlas_dir() == tmp_path / "home" / ".cache" / "bids_semantoks" / "atlases"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_atlas_dir() == tmp_path / "xdg" / "bids_semantoks" / "atlases"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data_env"))
    assert resolve_atlas_dir() == tmp_path / "data_env" / "atlases"
    assert resolve_atlas_dir(data_dir=tmp_path / "data_arg") == tmp_path / "data_arg" / "atlases"
    monkeypatch.setenv(ATLAS_DIR_ENV, str(tmp_path / "atlas_env"))
    assert resolve_atlas_dir(data_dir=tmp_path / "data_arg") == tmp_path / "atlas_env"
    assert resolve_atlas_dir(tmp_path / "atlas_arg", tmp_path / "data_arg") == tmp_path / "atlas_arg"
    assert not (tmp_path / "atlas_env").exists()  # resolving creates nothing


# ---------------------------------------------------------------- read-only shared cache


def test_shared_cache_is_used_read_only(shared_atlases, tree_snapshot, monkeypatch):
    monkeypatch.setenv(ATLAS_DIR_ENV, str(shared_atlases))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")  # would fail if anything were fetched
    before = tree_snapshot(shared_atlases)
    for space in SUPPORTED_SPACES:
        atlas = get_default_atlas(space, download=False)
        assert atlas.dseg_img_path == shared_atlases / "derived" / f"{derived_stem(space)}.nii.gz"
        assert atlas.space == space
        assert atlas.table.label == DEFAULT_ATLAS_LABEL
        assert atlas.table.network_sizes == EXPECTED_SIZES
    assert get_default_table(download=False).n_regions == 457
    assert tree_snapshot(shared_atlases) == before  # no file, lock or record written


def test_unsupported_space(shared_atlases):
    with pytest.raises(UsageError) as err:
        get_default_atlas("MNI152NLin2009cSym", atlas_dir=shared_atlases)
    msg = str(err.value)
    assert "MNI152NLin2009cSym" in msg
    assert all(space in msg for space in SUPPORTED_SPACES)
    assert "--atlas" in msg
    assert err.value.code == 64


def test_tampered_derived_file_is_rebuilt(shared_atlases, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(shared_atlases, cache, ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.md"))
    for p in cache.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    space = "MNI152NLin6Asym"
    nii = cache / "derived" / f"{derived_stem(space)}.nii.gz"
    nii.write_bytes(nii.read_bytes()[:-10])  # truncated
    atlas = get_default_atlas(space, atlas_dir=cache, download=False)
    assert atlas.dseg_img_path == nii
    assert _same_volume(nii, shared_atlases / "derived" / nii.name)
    # a second call accepts the rebuilt files (reference sha256 or the build record)
    assert get_default_atlas(space, atlas_dir=cache, download=False).dseg_img_path == nii


def _same_volume(a: Path, b: Path) -> bool:
    img_a, img_b = nib.load(a), nib.load(b)
    return bool(
        np.array_equal(img_a.affine, img_b.affine)
        and np.array_equal(np.asarray(img_a.dataobj), np.asarray(img_b.dataobj))
    )


# ---------------------------------------------------------------- default table


def test_default_table_from_label_files_only(tmp_path, atlas_server, shared_atlases, monkeypatch):
    """Empty cache: only the three label text files are downloaded, no image; the table they
    give equals the one shipped with the package."""
    from bids_semantoks.atlas.registry import table_from_label_files

    monkeypatch.setenv(MIRROR_ENV, atlas_server.url)
    cache = tmp_path / "cache"
    table = table_from_label_files(atlas_dir=cache)
    assert table == get_default_table(atlas_dir=tmp_path / "unused")
    assert isinstance(table, AtlasTable)
    assert table.label == DEFAULT_ATLAS_LABEL
    assert table.n_regions == 457
    assert table.indices == tuple(range(1, 458))
    assert table.networks == (
        "Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default", "Subcortex", "Cerebellum",
    )
    assert table.network_sizes == EXPECTED_SIZES
    downloaded = sorted(p.name for p in cache.rglob("*") if p.is_file() and ".locks" not in p.parts)
    assert downloaded == sorted(
        Path(load_registry()["labels"][k]).name for k in ("schaefer_order", "tian_names", "tian_combined_lut")
    )
    ref = AtlasTable.from_tsv(
        shared_atlases / "derived" / f"{derived_stem('MNI152NLin6Asym')}.tsv", label=DEFAULT_ATLAS_LABEL
    )
    assert table == ref
    ref_2009c = shared_atlases / "derived" / f"{derived_stem('MNI152NLin2009cAsym')}.tsv"
    assert table.to_frame().equals(pd.read_csv(ref_2009c, sep="\t"))


def test_default_table_offline_empty_cache(tmp_path):
    """The packaged table needs no cache; rebuilding it from label files offline fails clearly."""
    from bids_semantoks.atlas.registry import table_from_label_files

    assert get_default_table(atlas_dir=tmp_path / "empty", download=False).n_regions == 457
    assert not (tmp_path / "empty").exists()
    with pytest.raises(MissingInputError, match="to work offline"):
        table_from_label_files(atlas_dir=tmp_path / "empty", download=False)


# ---------------------------------------------------------------- user atlases


@pytest.fixture
def cc200():
    tsv = CC200_DIR / "atlas-CC200_dseg.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} not found")
    return tsv


def test_user_atlas_space_entity(cc200):
    atlas = get_user_atlas(cc200, "MNI152NLin6Asym", need_image=True)
    assert atlas.dseg_img_path == CC200_DIR / "atlas-CC200_space-MNI152NLin6Asym_dseg.nii.gz"
    assert atlas.label == "CC200"
    assert atlas.space == "MNI152NLin6Asym"
    assert atlas.table.n_regions == 200
    assert atlas.dseg_tsv_path == cc200
    assert str(cc200.resolve()) in atlas.sources
    # with no space given, the only space-specific image is used
    assert get_user_atlas(cc200, None, need_image=True).dseg_img_path == atlas.dseg_img_path


def test_user_atlas_missing_image(cc200):
    with pytest.raises(MissingInputError) as err:
        get_user_atlas(cc200, "MNI152NLin2009cAsym", need_image=True)
    msg = str(err.value)
    assert "atlas-CC200_dseg.nii.gz" in msg
    assert "atlas-CC200_space-MNI152NLin2009cAsym" in msg
    assert err.value.code == 66


def test_user_atlas_without_image(cc200):
    atlas = get_user_atlas(cc200, "MNI152NLin2009cAsym", need_image=False)
    assert atlas.dseg_img_path is None
    assert atlas.table.n_regions == 200
    assert atlas.space == "MNI152NLin2009cAsym"


def test_user_atlas_same_stem_and_res(tmp_path, cc200):
    folder = tmp_path / "atlas"
    folder.mkdir()
    shutil.copy(cc200, folder / "atlas-Foo_desc-x_dseg.tsv")
    with pytest.raises(MissingInputError):
        get_user_atlas(folder / "atlas-Foo_desc-x_dseg.tsv", "MNI152NLin6Asym")
    img = CC200_DIR / "atlas-CC200_space-MNI152NLin6Asym_dseg.nii.gz"
    shutil.copy(img, folder / "atlas-Foo_space-MNI152NLin6Asym_res-2_desc-x_dseg.nii.gz")
    shutil.copy(img, folder / "atlas-Foo_space-MNI152NLin6Asym_desc-x_dseg.nii.gz")
    shutil.copy(img, folder / "atlas-Bar_space-MNI152NLin6Asym_desc-x_dseg.nii.gz")
    got = get_user_atlas(folder / "atlas-Foo_desc-x_dseg.tsv", "MNI152NLin6Asym")
    assert got.dseg_img_path.name == "atlas-Foo_space-MNI152NLin6Asym_desc-x_dseg.nii.gz"  # no res preferred
    shutil.copy(img, folder / "atlas-Foo_desc-x_dseg.nii.gz")
    got = get_user_atlas(folder / "atlas-Foo_desc-x_dseg.tsv", "MNI152NLin6Asym")
    assert got.dseg_img_path.name == "atlas-Foo_desc-x_dseg.nii.gz"  # same stem first


def test_user_atlas_bad_paths(tmp_path):
    with pytest.raises(MissingInputError):
        get_user_atlas(tmp_path / "atlas-X_dseg.tsv", "MNI152NLin6Asym")
    (tmp_path / "regions.tsv").write_text("index\tname\tnetwork_label\n1\ta\tVis\n")
    with pytest.raises(UsageError, match="_dseg.tsv"):
        get_user_atlas(tmp_path / "regions.tsv", "MNI152NLin6Asym")


# ---------------------------------------------------------------- concurrency


def test_two_processes_fill_one_cache(tmp_path, atlas_server, shared_atlases):
    cache = tmp_path / "cache"
    code = textwrap.dedent(
        """
        from bids_semantoks.atlas import get_default_atlas
        a = get_default_atlas("MNI152NLin6Asym")
        print(a.dseg_img_path)
        """
    )
    env = dict(os.environ, **{ATLAS_DIR_ENV: str(cache), MIRROR_ENV: atlas_server.url})
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    stem = derived_stem("MNI152NLin6Asym")
    assert {out.strip() for out, _ in outs} == {str(cache / "derived" / f"{stem}.nii.gz")}
    reg = load_registry()
    for rel, entry in reg["files"].items():
        if (cache / rel).exists():
            assert sha256_of(cache / rel) == entry["sha256"], rel
    assert (cache / "derived" / f"{stem}.tsv").read_bytes() == (shared_atlases / "derived" / f"{stem}.tsv").read_bytes()
    assert _same_volume(cache / "derived" / f"{stem}.nii.gz", shared_atlases / "derived" / f"{stem}.nii.gz")
    assert not [p for p in cache.rglob("*.part")]
