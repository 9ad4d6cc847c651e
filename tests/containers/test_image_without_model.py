"""An image built with ``WITH_MODEL=0`` (``BIDS_SEMANTOKS_IMAGE_HAS_MODEL=0``) and ``--model official``.

It must say at once that the image carries no weights and what to do (exit 66), not retry the
hub for half a minute or blame an unwritable cache (exit 73). A cache mounted over the image's
(holding the weights) and an explicit ``--data-dir`` keep working. Tested through the CLI in a
real subprocess; the hub endpoint points at a closed port, so any download attempt would show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bids_semantoks.model import hub
from bids_semantoks.model.checkpoint import ModelNotAvailable

from containers_helpers import REPO_ROOT, SHARED_ATLASES


@pytest.fixture
def image_env(tmp_path, monkeypatch):
    data = tmp_path / "image_data"
    (data / "models").mkdir(parents=True)
    data.chmod(0o555)  # read-only like the image's cache for a --user
    monkeypatch.setenv("BIDS_SEMANTOKS_DATA", str(data))
    monkeypatch.setenv("BIDS_SEMANTOKS_IMAGE_HAS_MODEL", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield data
    data.chmod(0o755)


def test_fetch_official_says_the_image_has_no_weights(image_env):
    with pytest.raises(ModelNotAvailable) as info:
        hub.fetch_official()
    msg = str(info.value)
    assert "carries no model weights" in msg and "WITH_MODEL=0" in msg and "--model" in msg
    assert info.value.code == 66
    assert not list((image_env / "models").iterdir()), "nothing written into the image's cache"


def test_a_mounted_cache_with_the_weights_is_used(image_env):
    target = image_env / "models" / hub.FILENAME
    image_env.chmod(0o755)
    (image_env / "models").chmod(0o755)
    target.write_bytes(b"weights")
    hub._write_record(target, "test")
    assert hub.fetch_official() == target


def test_an_explicit_data_dir_is_not_the_image_cache(image_env, tmp_path):
    with pytest.raises(ModelNotAvailable) as info:  # tries the (closed) endpoint, then says so
        hub.fetch_official(tmp_path / "mine")
    assert "carries no model weights" not in str(info.value)


@pytest.mark.skipif(not (SHARED_ATLASES / "README.md").is_file(), reason=f"{SHARED_ATLASES} not found")
def test_cli_exit_66_with_the_message_before_any_subject(image_env, tmp_path):
    bids = tmp_path / "bids"
    env = {**os.environ, "BIDS_SEMANTOKS_ATLAS_DIR": str(SHARED_ATLASES), "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-m", "bids_semantoks.demo", str(bids), "--subjects", "1", "--n-vols", "60"],
                   env=env, check=True, capture_output=True, timeout=300)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bids_semantoks", str(bids), str(out), "participant", "-w",
                           str(tmp_path / "work"), "--nprocs", "1"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 66, proc.stderr[-2000:]
    assert "carries no model weights" in proc.stderr
    assert "could not be downloaded" not in proc.stderr  # no hub attempt
    assert not list(out.rglob("*_embedding.tsv"))
    desc = out / "dataset_description.json"
    if desc.is_file():
        json.loads(desc.read_text())
