"""The default atlas's 457-row table ships with the package: no atlas cache needed."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np
import pytest

from bids_semantoks.atlas import registry


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Every cache the app could read points at an empty folder; no mirror, no hub."""
    atlases, data = tmp_path / "atlases", tmp_path / "data"
    atlases.mkdir()
    monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_DIR", str(atlases))
    monkeypatch.setenv("BIDS_SEMANTOKS_DATA", str(data))
    monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_MIRROR", "http://127.0.0.1:9")  # a download would fail
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return atlases


def test_load_authors_checkpoint_with_an_empty_atlas_cache(empty_caches, parity_dir, parity_expected):
    """Failed before: load_encoder needed the default table, built from the atlas cache."""
    from bids_semantoks.model import load_encoder

    enc = load_encoder(parity_dir / "checkpoint.pth")  # no network_map: the packaged table's
    assert enc.config.channel_networks == parity_expected["network_map"].tolist()
    assert list(empty_caches.iterdir()) == []  # nothing downloaded or written


def test_packaged_table_is_the_pinned_derived_table(empty_caches):
    data = resources.files("bids_semantoks.data").joinpath(registry.PACKAGED_TABLE).read_bytes()
    pinned = registry.load_registry()["spaces"]["MNI152NLin6Asym"]["reference_derived"]
    tsv = pinned["derived/Schaefer400-7N_TianS3_Buckner7_MNI152NLin6Asym_2mm_dseg.tsv"]
    assert hashlib.sha256(data).hexdigest() == tsv["sha256"] and len(data) == tsv["size"]
    table = registry.get_default_table()
    assert table.n_regions == 457 and table.label == registry.DEFAULT_ATLAS_LABEL
    assert dict(zip(table.networks, table.network_sizes)) == registry.load_registry()["labels"]["network_sizes"]
    assert np.array_equal(table.network_index[:3], [0, 0, 0])


def test_packaged_table_in_the_wheel_package_data():
    """pyproject's package-data globs include the table (data/*)."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["bids_semantoks"]
    assert "data/*" in globs
    assert json.loads(resources.files("bids_semantoks.data").joinpath("models.json").read_text())["official"]
