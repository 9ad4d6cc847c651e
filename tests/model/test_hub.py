"""The released checkpoint's cache: sha256 record, tamper refusal, offline, a local hub endpoint."""

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
from bids_semantoks.model.hub import FILENAME, REPO_ID


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

    def __init__(self, *args, payload: bytes, hits: list, **kwargs):
        self.payload, self.hits = payload, hits
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def _headers(self) -> bool:
        if self.path.split("?")[0] != f"/{REPO_ID}/resolve/main/{FILENAME}":
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(self.payload).hexdigest()}"')
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
def local_hub(parity_dir):
    hits: list = []
    payload = (parity_dir / "checkpoint.pth").read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Hub, payload=payload, hits=hits))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", payload, hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_from_hub_endpoint_then_offline(tmp_path, monkeypatch, local_hub, parity_expected):
    url, payload, hits = local_hub
    monkeypatch.setenv("HF_ENDPOINT", url)
    path = fetch_official(tmp_path)
    assert path == tmp_path / "models" / FILENAME and path.read_bytes() == payload
    assert any(method == "GET" for method, _ in hits)
    record = json.loads((tmp_path / "models" / f"{FILENAME}.sha256.json").read_text())
    assert record["sha256"] == hashlib.sha256(payload).hexdigest()
    # cached: no network needed any more
    hits.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch_official(tmp_path) == path and not hits
    from bids_semantoks.model import load_encoder

    enc = load_encoder("official", network_map=parity_expected["network_map"], data_dir=tmp_path)
    assert enc.config.dim == 192
