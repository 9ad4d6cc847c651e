"""Build the Dockerfile's image with podman, offline, from local mirrors (used by test_image.py).

What our machines allow (../shared/docs/CONTAINERS.md): podman as root with ``--runtime runc``
and fixed ulimits, no container registry, no Docker daemon. So:

1. **Base image**: a stand-in for ``python:3.11-slim-bookworm`` made from Debian packages
   (``debootstrap --variant=minbase bookworm`` with python3, python3-venv, python-is-python3,
   ca-certificates; apt lists, docs, man pages and locales removed), imported into podman as
   ``localhost/semantoks-pybase:3.11-bookworm-<hash>``. The hash covers the recipe, so the
   image is made once per machine and reused while the recipe is unchanged.
2. **Wheels**: ``pip download`` (the host's pip and its configuration: PyPI and the local torch
   wheel) of torch and of every dependency and build requirement in pyproject.toml, laid out as
   a PEP 503 "simple" index. Cached per requirement list.
3. **The build** runs in a network namespace of its own (``unshare --net``) that has only a
   loopback interface: the index and ../shared/atlases (the atlas mirror) are served there on
   127.0.0.1, and ``podman build --network host`` shares that namespace. Any access to another
   host fails the build, so a passing build proves it needs nothing but the two mirrors.
   The mirrors are passed as build arguments (TORCH_INDEX_URL, PIP_INDEX_URL,
   BIDS_SEMANTOKS_ATLAS_MIRROR, HF_ENDPOINT) and the host's CA bundle and a pip.conf as build
   secrets, with fixed ports so that reruns hit podman's layer cache.

Command line (what the test runs in the namespace; usable by hand)::

    unshare --net python tests/containers/podman_image.py build-offline --tag T --base B \\
        --index DIR --atlases DIR --log FILE
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# podman on these virtual machines: crun fails (cgroups hybrid mode), rlimits cannot be raised
PODMAN_FLAGS = ["--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=20000:20000"]
DEBIAN_MIRROR = os.environ.get("BIDS_SEMANTOKS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_CLEANUP = ("apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* "
                "/usr/share/locale/* /usr/share/info/* /var/cache/debconf/*-old /var/log/*.log")
BASE_CHANGES = ("ENV LANG=C.UTF-8", 'CMD ["python3"]')
INDEX_PORT, ATLAS_PORT, HF_PORT = 18701, 18702, 18703  # inside the private network namespace
CACHE = Path(os.environ.get("BIDS_SEMANTOKS_IMAGE_TEST_CACHE", "/var/tmp/bids_semantoks_image_test"))
# marker written into the pip.conf secret: must not reach the image
PIP_CONF_MARKER = "semantoks-build-secret-marker"


def podman(*args: str, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(["podman", *args], **kw)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# 1. base image


def base_image_tag() -> str:
    key = _digest("bookworm", "minbase", ",".join(BASE_PACKAGES), BASE_CLEANUP, *BASE_CHANGES)
    return f"localhost/semantoks-pybase:3.11-bookworm-{key}"


def ensure_base_image(log) -> tuple[str, bool]:
    """The base image's tag, made now unless it exists; ``(tag, made_now)``."""
    tag = base_image_tag()
    if podman("image", "exists", tag).returncode == 0:
        return tag, False
    CACHE.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="pybase-", dir=CACHE))
    try:
        t0 = time.monotonic()
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES), "bookworm",
               str(root / "rootfs"), DEBIAN_MIRROR]
        with open(root / "debootstrap.log", "w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({proc.returncode}): "
                               f"{(root / 'debootstrap.log').read_text()[-2000:]}")
        subprocess.run(["chroot", str(root / "rootfs"), "/bin/sh", "-c", BASE_CLEANUP], check=True,
                       capture_output=True)
        tar = subprocess.Popen(["tar", "-C", str(root / "rootfs"), "-c", "."], stdout=subprocess.PIPE)
        changes = [a for c in BASE_CHANGES for a in ("--change", c)]
        proc = subprocess.run(["podman", "import", *changes, "-", tag], stdin=tar.stdout, capture_output=True,
                              text=True)
        tar.stdout.close()
        tar.wait()
        if proc.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"podman import failed: {proc.stderr[-2000:]}")
        log(f"base image {tag} made in {time.monotonic() - t0:.0f} s (debootstrap from {DEBIAN_MIRROR})")
        return tag, True
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# 2. wheels as a simple index


def requirements() -> list[str]:
    py = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return list(py["project"]["dependencies"]) + list(py["build-system"]["requires"])


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write_simple_index(wheels: Path, index: Path) -> None:
    """A PEP 503 index of ``wheels`` under ``index`` (files are linked, not copied)."""
    projects: dict[str, list[Path]] = {}
    for whl in sorted(wheels.glob("*.whl")):
        projects.setdefault(_normalise(whl.name.split("-")[0]), []).append(whl)
    index.mkdir(parents=True, exist_ok=True)
    links = []
    for project, files in sorted(projects.items()):
        folder = index / project
        folder.mkdir(exist_ok=True)
        rows = []
        for whl in files:
            target = folder / whl.name
            if not target.exists():
                os.link(whl, target) if whl.stat().st_dev == folder.stat().st_dev else shutil.copy2(whl, target)
            digest = hashlib.sha256(whl.read_bytes()).hexdigest()
            name = html.escape(whl.name)
            rows.append(f'<a href="{name}#sha256={digest}">{name}</a><br>')
        (folder / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(rows) + "\n</body></html>\n")
        links.append(f'<a href="{project}/">{project}</a><br>')
    (index / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")


def ensure_index(log) -> tuple[Path, bool]:
    """A simple index with torch, the package's dependencies and its build requirements."""
    reqs = requirements()
    folder = CACHE / f"index-{_digest(*reqs, sys.version)}"
    if (folder / "simple" / "index.html").is_file():
        return folder / "simple", False
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="index-", dir=CACHE))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-cache-dir",
                           "--progress-bar", "off", "-d", str(tmp / "wheels"), *reqs],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"pip download failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    write_simple_index(tmp / "wheels", tmp / "simple")
    os.rename(tmp, folder)
    n = len(list((folder / "wheels").glob("*.whl")))
    log(f"simple index of {n} wheels made in {time.monotonic() - t0:.0f} s: {folder / 'simple'}")
    return folder / "simple", True


# ---------------------------------------------------------------------------------------------
# 3. the build (inside `unshare --net`)


class _LoggingHandler(SimpleHTTPRequestHandler):
    requests_log: list[str] = []

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        self.requests_log.append(f"{self.server.server_address[1]} {format % args}")


@contextlib.contextmanager
def _serve(directory: Path, port: int):
    handler = functools.partial(_LoggingHandler, directory=str(directory))
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def build_args(index_url: str, atlas_url: str, hf_url: str, base: str) -> list[str]:
    return [
        "--build-arg", f"BASE_IMAGE={base}",
        "--build-arg", f"TORCH_INDEX_URL={index_url}",
        "--build-arg", f"PIP_INDEX_URL={index_url}",
        "--build-arg", f"BIDS_SEMANTOKS_ATLAS_MIRROR={atlas_url}",
        "--build-arg", f"HF_ENDPOINT={hf_url}",
        "--build-arg", "WITH_MODEL=0",
    ]


def build_offline(tag: str, base: str, index: Path, atlases: Path, log_path: Path, ca_bundle: Path | None) -> int:
    """Serve the mirrors on 127.0.0.1 and run ``podman build``; the caller isolates the network."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with contextlib.ExitStack() as stack:
        index_url = stack.enter_context(_serve(index, INDEX_PORT)) + "/"
        atlas_url = stack.enter_context(_serve(atlases, ATLAS_PORT))
        hf_url = f"http://127.0.0.1:{HF_PORT}"  # nothing listens: WITH_MODEL=0 must not need it
        secrets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="secrets-")))
        (secrets / "pip.conf").write_text(f"# {PIP_CONF_MARKER}\n[global]\ntimeout = 60\nretries = 1\n")
        cmd = ["podman", "build", *PODMAN_FLAGS, *ULIMITS, "--network", "host", "-f", str(REPO_ROOT / "Dockerfile"),
               "-t", tag, *build_args(index_url, atlas_url, hf_url, base),
               "--secret", f"id=pip_conf,src={secrets / 'pip.conf'}"]
        if ca_bundle is not None:
            cmd += ["--secret", f"id=ca_bundle,src={ca_bundle}"]
        cmd.append(str(REPO_ROOT))
        with open(log_path, "w") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
            fh.write("\n# requests served on 127.0.0.1 (port, request line, status):\n")
            for line in _LoggingHandler.requests_log:
                fh.write(line + "\n")
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-offline", help="serve the mirrors and build (run it under `unshare --net`)")
    b.add_argument("--tag", required=True)
    b.add_argument("--base", required=True)
    b.add_argument("--index", type=Path, required=True)
    b.add_argument("--atlases", type=Path, required=True)
    b.add_argument("--log", type=Path, required=True)
    b.add_argument("--ca-bundle", type=Path, default=None)
    args = parser.parse_args(argv)
    return build_offline(args.tag, args.base, args.index, args.atlases, args.log, args.ca_bundle)


if __name__ == "__main__":
    sys.exit(main())
