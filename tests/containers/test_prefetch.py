"""``python -m bids_semantoks.prefetch``: fills the cache (both spaces, sha256 checked), world-readable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bids_semantoks import prefetch as pf

from containers_helpers import SHARED_ATLASES, serve

SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")


@pytest.fixture
def mirror(monkeypatch):
    if not (SHARED_ATLASES / "README.md").is_file():
        pytest.skip(f"{SHARED_ATLASES} not found")
    for var in ("BIDS_SEMANTOKS_ATLAS_DIR", "BIDS_SEMANTOKS_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    with serve(SHARED_ATLASES) as url:
        monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_MIRROR", url)
        yield url


@pytest.fixture
def strict_umask():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path):
    return {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_fills_both_spaces_world_readable(mirror, tmp_path, strict_umask, monkeypatch):
    data = tmp_path / "data"
    # ATLAS_DIR is ignored with --data-dir: everything goes under DIR
    monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_DIR", str(tmp_path / "elsewhere"))
    assert pf.main(["--data-dir", str(data), "--skip-model"]) == 0
    for space in SPACES:
        assert (data / "atlases" / "derived" / f"Schaefer400-7N_TianS3_Buckner7_{space}_2mm_dseg.nii.gz").is_file()
    assert not (tmp_path / "elsewhere").exists() and not (data / "models").exists()
    for path, mode in _modes(data).items():
        assert mode & 0o444 == 0o444, f"{path}: {oct(mode)}"
        if path.is_dir():
            assert mode & 0o111 == 0o111, f"{path}: {oct(mode)}"
    # a filled cache: a second run downloads nothing (the mirror is gone) and changes nothing
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_MIRROR", "http://127.0.0.1:9")
    assert pf.main(["--data-dir", str(data), "--skip-model"]) == 0
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before


def test_one_space_and_the_model(mirror, tmp_path, strict_umask, monkeypatch, capsys):
    """A checkpoint put in the cache by hand: used without a download, said to be user-placed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub: the hand-placed file must be enough
    data = tmp_path / "data"
    models = data / "models"
    models.mkdir(parents=True)
    (models / "brainsemantoks_ckpt_epoch_100.pth").write_bytes(b"weights")
    assert pf.main(["--data-dir", str(data), "--spaces", "MNI152NLin6Asym"]) == 0
    derived = sorted(p.name for p in (data / "atlases" / "derived").glob("*_dseg.nii.gz"))
    assert derived == ["Schaefer400-7N_TianS3_Buckner7_MNI152NLin6Asym_2mm_dseg.nii.gz"]
    assert stat.S_IMODE((models / "brainsemantoks_ckpt_epoch_100.pth").stat().st_mode) & 0o444 == 0o444
    out = capsys.readouterr().out
    assert "user-placed" in out and "label userplaced" in out and "label official" not in out


def test_without_data_dir_uses_the_app_cache(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("BIDS_SEMANTOKS_DATA", str(tmp_path / "d"))
    out = pf.prefetch(None, ["MNI152NLin2009cAsym"], model=False, log=lambda m: None)
    assert out["atlases"] == tmp_path / "d" / "atlases"
    assert out["MNI152NLin2009cAsym"].is_file()


def test_errors_map_to_exit_codes(mirror, tmp_path, monkeypatch, capsys):
    assert pf.main(["--spaces", "MNI305"]) == 64
    monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_MIRROR", "http://127.0.0.1:9")
    assert pf.main(["--data-dir", str(tmp_path / "d"), "--skip-model"]) == 66
    assert "prefetch: error:" in capsys.readouterr().err
