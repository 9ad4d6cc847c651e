"""The released checkpoint's cache: sha256 record, provenance (hub download or placed by hand),
tamper refusal, offline, ``prefetch --verify``; against a real HTTP hub endpoint on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest

from bids_semantoks.errors import DataError
from bids_semantoks.model import ModelNotAvailable, fetch_official
from bids_semantoks.model.hub import (
    FILENAME,
    OFFICIAL_LABEL,
    REPO_ID,
    USERPLACED_LABEL,
    official_provenance,
    verify_official_with_hub,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _no_hub_env(monkeypatch):
    """No hub setting of the calling shell leaks in (huggingface_hub reads its env once, at import)."""
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "BIDS_SEMANTOKS_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_sha256_recorded_and_tampered_file_refused(tmp_path, parity_dir):
    models = tmp_path / "models"
    models.mkdir()
    payload = (parity_dir / "checkpoint.pth").read_bytes()
    (models / FILENAME).write_bytes(payload)
    path = fetch_official(tmp_path)  # cached by hand: recorded on first use, no network
    assert path == models / FILENAME
    record = json.loads((models / f"{FILENAME}.sha256.json").read_text())
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()
    assert record["how_obtained"] == "user-placed" and record["revision"] is None
    assert fetch_official(tmp_path) == path  # verified again
    path.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(DataError, match="delete it") as err:
        fetch_official(tmp_path)
    assert str(path) in str(err.value)


def test_offline_with_empty_cache_is_model_not_available(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as err:
        fetch_official(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "models" / FILENAME) in message
    assert not (tmp_path / "models" / FILENAME).exists()


class _Hub(BaseHTTPRequestHandler):
    """The hub's ``/<repo>/resolve/<revision>/<file>`` endpoint for one file."""

    def __init__(self, *args, payload: bytes, hits: list, etag: list, **kwargs):
        self.payload, self.hits, self.etag = payload, hits, etag
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def _headers(self) -> bool:
        if self.path.split("?")[0] not in {f"/{REPO_ID}/resolve/{rev}/{FILENAME}" for rev in ("main", COMMIT)}:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{self.etag[0] if self.etag else hashlib.sha256(self.payload).hexdigest()}"')
        self.send_header("Content-Length", str(len(self.payload)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        return True

    def do_HEAD(self):  # noqa: N802 - stdlib name
        self.hits.append(("HEAD", self.path))
        self._headers()

    def do_GET(self):  # noqa: N802 - stdlib name
        self.hits.append(("GET", self.path))
        if self._headers():
            self.wfile.write(self.payload)


@pytest.fixture
def local_hub_etag(local_hub):
    """The ``etag`` list of the running hub: put a sha256 in it to publish a different one."""
    return local_hub[3]


@pytest.fixture
def local_hub(parity_dir):
    hits: list = []
    payload = (parity_dir / "checkpoint.pth").read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Hub, payload=payload, hits=hits, etag=[]))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", payload, hits, server.RequestHandlerClass.keywords["etag"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_from_hub_endpoint_then_offline(tmp_path, monkeypatch, local_hub, parity_expected):
    url, payload, hits, _ = local_hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    path = fetch_official(tmp_path)
    assert path == tmp_path / "models" / FILENAME and path.read_bytes() == payload
    assert any(method == "GET" for method, _ in hits)
    record = json.loads((tmp_path / "models" / f"{FILENAME}.sha256.json").read_text())
    sha = hashlib.sha256(payload).hexdigest()
    assert record["sha256"] == sha
    assert (record["how_obtained"], record["revision"], record["hub_sha256"]) == ("hub-download", COMMIT, sha)
    prov = official_provenance(tmp_path)
    assert (prov.label, prov.how_obtained, prov.revision, prov.verified_by) == (OFFICIAL_LABEL, "hub-download", COMMIT, "hub-download")
    assert prov.source.startswith(f"huggingface:{REPO_ID}@{COMMIT}/{FILENAME}")
    # cached: no network needed any more
    hits.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_official(tmp_path) == path and not hits
    from bids_semantoks.model import load_encoder

    enc = load_encoder("official", network_map=parity_expected["network_map"], data_dir=tmp_path)
    assert enc.config.dim == 192


# ------------------------------------------------------------------ provenance of a hand-placed file


def _place(tmp_path, payload: bytes):
    models = tmp_path / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / FILENAME).write_bytes(payload)
    return models / FILENAME


def test_hand_placed_file_is_never_labelled_official(tmp_path, monkeypatch, parity_dir):
    """The old code recorded any hand-placed file as huggingface:... and labelled it official."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _place(tmp_path, b"not the release")
    prov = official_provenance(tmp_path)
    assert prov.path == path and prov.label == USERPLACED_LABEL and prov.how_obtained == "user-placed"
    assert prov.source.startswith(f"user-placed:{path}") and "huggingface" not in prov.source
    assert prov.revision is None and prov.verified_by is None


def test_resolve_model_labels_a_hand_placed_checkpoint_userplaced(tmp_path, monkeypatch, parity_dir):
    """The participant level's model label (desc-<label> in output names) follows the provenance."""
    from bids_semantoks.config import RunSettings, Settings
    from bids_semantoks.workflows.common import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _place(tmp_path / "data", (parity_dir / "checkpoint.pth").read_bytes())
    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                        run=RunSettings(data_dir=tmp_path / "data"))
    settings.participant.device = "cpu"
    model = resolve_model(settings)
    assert model.label == USERPLACED_LABEL != OFFICIAL_LABEL
    assert model.source.startswith("user-placed:")


def test_stale_hub_metadata_does_not_bless_a_replaced_file(tmp_path, monkeypatch, local_hub):
    """Downloaded once, then replaced by hand (and its record deleted): user-placed again."""
    url, payload, hits, _ = local_hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    path = fetch_official(tmp_path)
    assert official_provenance(tmp_path).label == OFFICIAL_LABEL
    (tmp_path / "models" / f"{FILENAME}.sha256.json").unlink()
    path.write_bytes(payload + b"tail")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prov = official_provenance(tmp_path)
    assert (prov.label, prov.how_obtained) == (USERPLACED_LABEL, "user-placed")


def test_download_not_matching_the_hub_sha256_is_refused(tmp_path, monkeypatch, local_hub):
    url, payload, hits, etag = local_hub
    etag.append("ab" * 32)  # the hub publishes another sha256 than the bytes it serves
    monkeypatch.setenv("HF_ENDPOINT", url)
    with pytest.raises(DataError, match="differs from the hub's LFS sha256") as err:
        fetch_official(tmp_path)  # our check: the hub client does not compare the bytes with the ETag
    assert "\n" not in str(err.value)
    assert not (tmp_path / "models" / FILENAME).exists()
    assert not (tmp_path / "models" / f"{FILENAME}.sha256.json").exists()


# ------------------------------------------------------------------ prefetch --verify


def test_verify_blesses_a_hand_placed_copy_of_the_release(tmp_path, monkeypatch, local_hub):
    url, payload, hits, _ = local_hub
    _place(tmp_path, payload)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert official_provenance(tmp_path).label == USERPLACED_LABEL
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", url)
    hits.clear()
    ok, message = verify_official_with_hub(tmp_path)
    assert ok and COMMIT in message
    assert [m for m, p in hits] == ["HEAD"] and "/resolve/main/" in hits[0][1]  # only the metadata, no download
    record = json.loads((tmp_path / "models" / f"{FILENAME}.sha256.json").read_text())
    assert record["how_obtained"] == "user-placed" and record["hub_verified"]["revision"] == COMMIT
    prov = official_provenance(tmp_path)
    assert (prov.label, prov.verified_by, prov.revision) == (OFFICIAL_LABEL, "prefetch --verify", COMMIT)
    assert prov.source.startswith("user-placed:")  # still says how it arrived


def test_prefetch_verify_exit_codes(tmp_path, monkeypatch, local_hub, capsys):
    """--verify: equal -> 0; the hub unreachable -> 0 and said so; a different sha256 -> 65."""
    from bids_semantoks import prefetch as pf

    url, payload, hits, etag = local_hub
    atlases = shared_atlases()
    monkeypatch.setenv("BIDS_SEMANTOKS_ATLAS_DIR", str(atlases))
    monkeypatch.setenv("BIDS_SEMANTOKS_DATA", str(tmp_path))
    _place(tmp_path, payload)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert pf.main(["--verify"]) == 0
    out = capsys.readouterr().out
    assert "user-placed" in out and "label userplaced" in out and "not compared" in out
    monkeypatch.setenv("HF_ENDPOINT", url)
    etag.append("cd" * 32)
    assert pf.main(["--verify"]) == 65
    err = capsys.readouterr().err
    assert "not the released file" in err and "cd" * 32 in err
    etag.clear()
    assert pf.main(["--verify"]) == 0
    out = capsys.readouterr().out
    assert "equals the hub's published sha256" in out and "now labelled official" in out


def shared_atlases():
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2].parent / "shared" / "atlases"
    if not (shared / "derived").is_dir():
        pytest.skip(f"{shared} not found")
    return shared


def test_records_written_before_provenance_was_kept(tmp_path, monkeypatch, local_hub):
    """An old record (sha256 only): official only when the hub client's own metadata shows a download."""
    url, payload, hits, _ = local_hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    fetch_official(tmp_path)
    record = tmp_path / "models" / f"{FILENAME}.sha256.json"
    doc = json.loads(record.read_text())
    record.write_text(json.dumps({k: doc[k] for k in ("file", "sha256", "size")} | {"source": "huggingface:x"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prov = official_provenance(tmp_path)
    assert (prov.label, prov.how_obtained, prov.revision) == (OFFICIAL_LABEL, "hub-download", COMMIT)
    placed = tmp_path / "placed"
    _place(placed, payload)
    (placed / "models" / f"{FILENAME}.sha256.json").write_text(record.read_text())
    assert official_provenance(placed).label == USERPLACED_LABEL
