"""Checksummed downloads into the atlas cache, from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib

import pytest

from bids_semantoks.atlas import fetch
from bids_semantoks.atlas.registry import load_registry, remote_file
from bids_semantoks.errors import DataError, MissingInputError

TIAN_LABELS = "tian_subcortex/Tian_Subcortex_S3_3T_label.txt"
BUCKNER = "buckner2011/Buckner2011_7Networks_MNI152_FreeSurferConformed1mm_LooseMask.nii.gz"


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


def test_registry_matches_shared_files(shared_atlases):
    """Every upstream entry of atlases.json has the size and sha256 of the shared copy."""
    files = load_registry()["files"]
    assert len(files) == 13
    for rel, entry in files.items():
        data = (shared_atlases / rel).read_bytes()
        assert len(data) == entry["size"], rel
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        assert all(u.startswith("https://raw.githubusercontent.com/") for u in entry["urls"]), rel


def test_download_into_empty_cache(tmp_path, atlas_server, monkeypatch):
    monkeypatch.setenv(fetch.MIRROR_ENV, atlas_server.url + "/")
    cache = tmp_path / "cache"
    for rel in (TIAN_LABELS, BUCKNER):
        remote = remote_file(rel)
        path = fetch.ensure_file(remote, cache)
        assert path == cache / rel
        assert fetch.sha256_of(path) == remote.sha256
        assert path.stat().st_size == remote.size
    assert _leftovers(cache) == []


def test_mirror_url_layout(monkeypatch):
    remote = remote_file(BUCKNER)
    assert fetch.candidate_urls(remote) == list(remote.urls)
    monkeypatch.setenv(fetch.MIRROR_ENV, "http://mirror.example/atlases/")
    assert fetch.candidate_urls(remote) == [f"http://mirror.example/atlases/{BUCKNER}"]


def test_corrupt_download_is_deleted(tmp_path, corrupt_tree, serve_dir, monkeypatch):
    server = serve_dir(corrupt_tree)
    monkeypatch.setenv(fetch.MIRROR_ENV, server.url)
    cache = tmp_path / "cache"
    remote = remote_file(TIAN_LABELS)
    actual = hashlib.sha256((corrupt_tree / TIAN_LABELS).read_bytes()).hexdigest()
    with pytest.raises(DataError) as err:
        fetch.ensure_file(remote, cache)
    msg = str(err.value)
    assert "Tian_Subcortex_S3_3T_label.txt" in msg
    assert f"{server.url}/{TIAN_LABELS}" in msg
    assert remote.sha256 in msg and actual in msg
    assert "\n" not in msg
    assert not (cache / TIAN_LABELS).exists()
    assert _leftovers(cache) == []
    # an uncorrupted file from the same tree still comes through
    assert fetch.ensure_file(remote_file(BUCKNER), cache).is_file()


def test_invalid_cached_file_is_replaced(tmp_path, atlas_server, monkeypatch):
    monkeypatch.setenv(fetch.MIRROR_ENV, atlas_server.url)
    cache = tmp_path / "cache"
    dest = cache / TIAN_LABELS
    dest.parent.mkdir(parents=True)
    dest.write_text("not the Tian labels\n")
    remote = remote_file(TIAN_LABELS)
    with pytest.raises(MissingInputError, match="downloads are disabled"):
        fetch.ensure_file(remote, cache, download=False)
    assert fetch.ensure_file(remote, cache) == dest
    assert fetch.sha256_of(dest) == remote.sha256


def test_unreachable_server_names_url_and_offline_fix(tmp_path, serve_dir, monkeypatch):
    server = serve_dir(tmp_path)
    server.stop()  # nothing listens on that port any more
    monkeypatch.setenv(fetch.MIRROR_ENV, server.url)
    cache = tmp_path / "cache"
    with pytest.raises(MissingInputError) as err:
        fetch.ensure_file(remote_file(TIAN_LABELS), cache)
    msg = str(err.value)
    assert f"{server.url}/{TIAN_LABELS}" in msg
    assert "to work offline" in msg and "BIDS_SEMANTOKS_ATLAS_DIR" in msg
    assert "\n" not in msg
    assert not (cache / TIAN_LABELS).exists()


def test_http_404_is_missing_input(tmp_path, serve_dir, monkeypatch):
    server = serve_dir(tmp_path / "empty_tree")  # a folder that does not exist: every GET is 404
    monkeypatch.setenv(fetch.MIRROR_ENV, server.url)
    with pytest.raises(MissingInputError, match="404|Not Found|No such file"):
        fetch.ensure_file(remote_file(TIAN_LABELS), tmp_path / "cache")
