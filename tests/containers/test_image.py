"""Build the real image with podman, offline, and run it the way users do.

Where podman can run containers (as root, with runc, debootstrap and unshare: ``scripts/test.sh``
installs them with apt), :mod:`podman_image` builds the Dockerfile from a local Debian bookworm
base with ``WITH_MODEL=0``, in a network namespace where only 127.0.0.1 exists: torch and
every other wheel come from a simple index served there, the atlases from ../shared/atlases
served there. Then the image runs (``--network none``):

- ``--version``; its size (<= 1.2 GB, printed) and that nothing of the build's mirrors, CA
  bundle or pip.conf is left in its config, history or files; no pip in it;
- participant with ``--model none`` as ``-u 1000:1000`` with ``--read-only --tmpfs /tmp``:
  time series of every subject, files owned by 1000, GeneratedBy records the container;
- participant with a model folder mounted read-only (a tiny random model, as the demo makes
  ``demotinyrandom``), as root: embeddings; then the group level on those outputs;
- an output folder the user cannot write: exit 73, nothing written;
- the default ``--model official`` in this image without weights: exit 66 with the message.

Where the image cannot be built the module skips with the reason in capitals ("IMAGE NOT
BUILT"), or fails when ``BIDS_SEMANTOKS_IMAGE_TEST=require`` (set by scripts/test.sh once it has
installed what the build needs). Deselect with ``-m "not image"``. Timings go to stdout (-s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import podman_image as pi
from containers_helpers import REPO_ROOT, SHARED_ATLASES

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(3600)]

TAG = "localhost/semantoks:imagetest"
MAX_IMAGE_BYTES = 1_200_000_000
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
USER = "1000:1000"
TIMINGS: dict[str, float] = {}


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "not Linux"
    if os.geteuid() != 0:
        return "not root (podman here runs rootful; rootless needs subuid ranges these machines lack)"
    for tool in ("podman", "runc", "debootstrap", "unshare", "ip", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install podman runc debootstrap iproute2)"
    if not (SHARED_ATLASES / "README.md").is_file():
        return f"{SHARED_ATLASES} not found (the atlas mirror)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.strip()}"
    return None


def _unavailable(reason: str):
    msg = f"IMAGE NOT BUILT: {reason}"
    print("\n" + "!" * 80 + f"\n{msg}\n" + "!" * 80, file=sys.stderr)
    if os.environ.get("BIDS_SEMANTOKS_IMAGE_TEST") == "require":
        pytest.fail(msg)
    pytest.skip(msg)


def _say(msg: str) -> None:
    print(f"[image] {msg}", flush=True)


@pytest.fixture(scope="module")
def image():
    reason = _why_not()
    if reason:
        _unavailable(reason)
    t0 = time.monotonic()
    try:
        base, made = pi.ensure_base_image(_say)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        _unavailable(f"the Debian base image could not be made: {exc}")
    TIMINGS["base image" + (" (made)" if made else " (cached)")] = time.monotonic() - t0
    t0 = time.monotonic()
    try:
        index, made = pi.ensure_index(_say)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        _unavailable(f"the wheels could not be downloaded: {exc}")
    TIMINGS["wheel index" + (" (made)" if made else " (cached)")] = time.monotonic() - t0
    old = pi.podman("image", "inspect", "--format", "{{.Id}}", TAG).stdout.strip()
    log = pi.CACHE / "build.log"
    t0 = time.monotonic()
    proc = subprocess.run(["unshare", "--net", sys.executable, str(Path(pi.__file__)), "build-offline",
                           "--tag", TAG, "--base", base, "--index", str(index), "--atlases", str(SHARED_ATLASES),
                           "--log", str(log), "--ca-bundle", "/etc/ssl/certs/ca-certificates.crt"],
                          capture_output=True, text=True, timeout=3000)
    TIMINGS["podman build"] = time.monotonic() - t0
    text = log.read_text() if log.is_file() else ""
    assert proc.returncode == 0, f"podman build failed ({proc.returncode}); log {log}:\n{text[-6000:]}\n{proc.stderr[-2000:]}"
    new = pi.podman("image", "inspect", "--format", "{{.Id}}", TAG).stdout.strip()
    if old and old != new:
        pi.podman("rmi", old)  # the previous build of this tag (kept when a container still uses it)
    _say("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))
    return {"tag": TAG, "log": text, "base": base}


def _run(*args: str, user: str | None = None, read_only: bool = False, mounts=(), timeout=900):
    cmd = ["podman", "run", "--rm", *pi.PODMAN_FLAGS, *pi.ULIMITS, "--network", "none"]
    if user:
        cmd += ["-u", user]
    if read_only:
        cmd += ["--read-only", "--tmpfs", "/tmp"]
    for host, container, mode in mounts:
        cmd += ["-v", f"{host}:{container}:{mode}"]
    t0 = time.monotonic()
    proc = subprocess.run([*cmd, TAG, *args], capture_output=True, text=True, timeout=timeout)
    _say(f"{time.monotonic() - t0:5.1f} s  exit {proc.returncode}  {' '.join(args)[:100]}")
    return proc


def _host_python(*args: str, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "BIDS_SEMANTOKS_ATLAS_DIR": str(SHARED_ATLASES)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=True)


@pytest.fixture(scope="module")
def demo(image, tmp_path_factory):
    """The demo dataset (8 subjects, with phenotypes) and the tiny random demo model, made on the host."""
    root = tmp_path_factory.mktemp("image_demo")
    root.chmod(0o755)
    _host_python("-m", "bids_semantoks.demo", str(root / "bids"), "--subjects", "8")
    _host_python("-c", (
        "import sys; from pathlib import Path; from bids_semantoks.atlas import registry; "
        "from bids_semantoks.demo_run import make_demo_model; "
        "a = registry.get_default_atlas('MNI152NLin2009cAsym'); "
        "make_demo_model(Path(sys.argv[1]), a.table.networks, a.table.network_index.tolist())"),
        str(root / "models" / "demotinyrandom"))
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    return root


def _folder(root: Path, name: str, owner: int | None = None, mode: int = 0o755) -> Path:
    d = root / name
    d.mkdir()
    if owner is not None:
        os.chown(d, owner, owner)
    d.chmod(mode)
    return d


def _generated_by(out: Path) -> dict:
    return json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]


# ---------------------------------------------------------------------------------------------


def test_built_offline_from_the_local_mirrors_only(image):
    log = image["log"]
    served = log.split("# requests served on 127.0.0.1", 1)[1]
    steps = re.split(r"^(?=(?:\[\d+/\d+\] )?STEP )", log, flags=re.M)
    torch_step = next(s for s in steps if 'pip install --no-cache-dir --no-compile "torch==' in s.split("\n")[0])
    prefetch_step = next(s for s in steps if "bids_semantoks.prefetch" in s.split("\n")[0])
    if "--> Using cache" not in torch_step:  # rerun: podman's layer cache, nothing downloaded
        assert re.search(rf"^{pi.INDEX_PORT} .*GET /torch/torch-.*\.whl", served, re.M), "torch not from the index"
        assert "Looking in indexes: http://127.0.0.1" in torch_step
    if "--> Using cache" not in prefetch_step:
        assert re.search(rf"^{pi.ATLAS_PORT} .*GET /", served, re.M), "atlases not from the mirror"
    assert not re.search(rf"^{pi.HF_PORT} ", served, re.M)
    # every URL pip or the app reached is on 127.0.0.1 (the namespace has no other interface);
    # the Dockerfile's own text (STEP lines, the command line) may name other hosts
    build = log.split("# requests served on 127.0.0.1", 1)[0]
    for line in build.splitlines():
        if re.match(r"^(\[\d+/\d+\] )?STEP |^\$ podman build", line):
            continue
        for host in re.findall(r"https?://([^/:\s'\"]+)", line):
            assert host == "127.0.0.1", f"the build reached {host}: {line}"


def test_size_at_most_1_2_gb(image):
    size = int(pi.podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout.strip())
    du = _run_sh("du -sm /opt/venv /opt/bids_semantoks/data /usr /var 2>/dev/null")
    base = int(pi.podman("image", "inspect", "--format", "{{.Size}}", image["base"]).stdout.strip())
    _say(f"image {size / 1e9:.2f} GB (base {base / 1e6:.0f} MB); du -sm inside: {' '.join(du.split())}")
    assert size <= MAX_IMAGE_BYTES, f"image is {size / 1e9:.2f} GB (> 1.2 GB)"


def _run_sh(script: str) -> str:
    proc = subprocess.run(["podman", "run", "--rm", *pi.PODMAN_FLAGS, *pi.ULIMITS, "--network", "none",
                           "--entrypoint", "/bin/sh", TAG, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_no_trace_of_the_build_mirrors_and_secrets(image):
    config = pi.podman("image", "inspect", TAG).stdout
    history = pi.podman("history", "--no-trunc", "--format", "{{.CreatedBy}} {{.Comment}}", TAG).stdout
    assert "/opt/venv/bin/bids_semantoks" in config and "COPY" in history  # really the image's
    forbidden = ["127.0.0.1", str(pi.INDEX_PORT), str(pi.ATLAS_PORT), str(pi.HF_PORT), "ca-certificates.crt",
                 "/run/secrets", "ca_bundle", "pip_conf", pi.PIP_CONF_MARKER, "ATLAS_MIRROR", "HF_ENDPOINT",
                 "INDEX_URL", "PIP_CERT"]
    for text, where in ((config, "podman image inspect"), (history, "podman history --no-trunc")):
        for word in forbidden:
            assert word not in text, f"{word!r} is in {where}"
    files = _run_sh(
        "ls -A /run/secrets /tmp 2>/dev/null; find / -xdev \\( -name ca.pem -o -name pip_conf -o -name ca_bundle "
        "-o -name 'pip.conf' \\) -print; grep -rlsI " + pi.PIP_CONF_MARKER + " /etc /opt /root /tmp || true; "
        "ls /opt/venv/bin")
    assert "ca.pem" not in files and "pip_conf" not in files and pi.PIP_CONF_MARKER not in files, files
    bins = set(files.split())
    assert "bids_semantoks" in bins and not {"pip", "pip3"} & bins, "pip is a build tool: not in the image"


def test_version(image):
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert VERSION in proc.stdout


def test_participant_model_none_as_a_user_read_only(image, demo, tmp_path):
    tmp_path.chmod(0o755)
    out, work = _folder(tmp_path, "out", 1000), _folder(tmp_path, "work", 1000)
    proc = _run("/bids", "/out", "participant", "--model", "none", "-w", "/work", "--nprocs", "1",
                user=USER, read_only=True,
                mounts=[(demo / "bids", "/bids", "ro"), (out, "/out", "rw"), (work, "/work", "rw")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    series = sorted(out.rglob("*_timeseries.tsv"))
    assert {p.name.split("_")[0] for p in series} == {f"sub-{i:02d}" for i in range(1, 9)}
    assert not list(out.rglob("*_embedding.tsv"))
    created = [p for p in out.rglob("*")]
    assert created and all(p.stat().st_uid == 1000 and p.stat().st_gid == 1000 for p in created), \
        [str(p) for p in created if p.stat().st_uid != 1000][:5]
    assert _generated_by(out)["Container"] == {"Type": "docker", "Tag": f"semantoks:{VERSION}"}
    assert not list((demo / "bids").rglob("*.lock")), "the input dataset was written to"


def test_participant_with_a_mounted_model_folder_then_group(image, demo, tmp_path):
    tmp_path.chmod(0o755)
    out = _folder(tmp_path, "out")
    proc = _run("/bids", "/out", "participant", "--model", "/models/demotinyrandom", "-w", "/out/work",
                "--nprocs", "2",
                mounts=[(demo / "bids", "/bids", "ro"), (demo / "models", "/models", "ro"), (out, "/out", "rw")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    means = sorted(out.glob("sub-*/func/sub-??_atlas-*_desc-demotinyrandom_embedding.tsv"))
    assert len(means) == 8, sorted(p.name for p in out.rglob("*_embedding.tsv"))
    assert all(p.stat().st_uid == 0 for p in out.rglob("*")), "as root in the container, files belong to root"
    sidecar = json.loads(means[0].with_suffix(".json").read_text())
    assert "demotinyrandom" in json.dumps(sidecar)
    proc = _run("/bids", "/out", "group", "--target", "age", "--model-label", "demotinyrandom", "--cv-folds", "2",
                "--cv-repeats", "1", "-w", "/out/work", "--nprocs", "1",
                mounts=[(demo / "bids", "/bids", "ro"), (out, "/out", "rw")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = (out / "group" / "group_desc-probes_metrics.tsv").read_text()
    assert "age" in metrics and "semantoks" in metrics
    assert (out / "group" / "report.html").stat().st_size > 10_000
    assert _generated_by(out)["Container"]["Tag"] == f"semantoks:{VERSION}"


def test_unwritable_output_exit_73(image, demo, tmp_path):
    tmp_path.chmod(0o755)
    out = _folder(tmp_path, "out")  # root's, 0755: not writable by uid 1000
    proc = _run("/bids", "/out", "participant", "--model", "none", "-w", "/tmp/work", user=USER, read_only=True,
                mounts=[(demo / "bids", "/bids", "ro"), (out, "/out", "rw")])
    assert proc.returncode == 73, proc.stderr[-3000:]
    assert "/out" in proc.stderr
    assert not list(out.iterdir())


def test_default_model_in_an_image_without_weights_says_so(image, demo, tmp_path):
    tmp_path.chmod(0o755)
    out = _folder(tmp_path, "out", 1000)
    proc = _run("/bids", "/out", "participant", "-w", "/tmp/work", user=USER, read_only=True,
                mounts=[(demo / "bids", "/bids", "ro"), (out, "/out", "rw")])
    assert proc.returncode == 66, proc.stderr[-3000:]
    assert "carries no model weights" in proc.stderr and "WITH_MODEL=0" in proc.stderr
    assert "Permission denied" not in proc.stderr and "could not be downloaded" not in proc.stderr
    assert not list(out.rglob("*_embedding.tsv")) and not list(out.rglob("*_timeseries.tsv"))


def test_timings_report(image):
    """Prints how long the build took (first test in file order is the build; this one sums up)."""
    _say("summary: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))
