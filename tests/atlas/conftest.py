"""Fixtures for the atlas manager tests: real files, a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_ATLASES = REPO_ROOT.parent / "shared" / "atlases"
ENV_VARS = (
    "BIDS_SEMANTOKS_ATLAS_DIR",
    "BIDS_SEMANTOKS_ATLAS_MIRROR",
    "BIDS_SEMANTOKS_DATA",
    "XDG_CACHE_HOME",
)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


class FileServer:
    """``http.server`` serving a folder from a thread on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@contextlib.contextmanager
def serve(directory: Path):
    server = FileServer(directory)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No atlas env var of the calling shell leaks into a test."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def shared_atlases() -> Path:
    if not (SHARED_ATLASES / "README.md").is_file():
        pytest.skip(f"{SHARED_ATLASES} not found")
    return SHARED_ATLASES


@pytest.fixture(scope="session")
def file_server_cls():
    """The :class:`FileServer` class, for fixtures that manage a server's life themselves."""
    return FileServer


@pytest.fixture(scope="session")
def atlas_server(shared_atlases):
    """A server on 127.0.0.1 serving ../shared/atlases (the mirror layout)."""
    with serve(shared_atlases) as server:
        yield server


@pytest.fixture
def corrupt_tree(tmp_path, shared_atlases):
    """A copy of the served tree in which one byte of the Tian S3 label file is changed."""
    tree = tmp_path / "served"
    shutil.copytree(shared_atlases, tree, ignore=shutil.ignore_patterns("__pycache__", "derived"))
    for p in tree.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    target = tree / "tian_subcortex" / "Tian_Subcortex_S3_3T_label.txt"
    data = bytearray(target.read_bytes())
    data[0] ^= 0x01
    target.write_bytes(bytes(data))
    return tree


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def tree_snapshot():
    """Function: every path under a folder with its size and mtime (ns)."""
    return _snapshot


@pytest.fixture
def serve_dir():
    """Factory: ``serve_dir(folder) -> FileServer``; every server is stopped at teardown."""
    servers = []

    def start(directory: Path) -> FileServer:
        servers.append(FileServer(directory))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
