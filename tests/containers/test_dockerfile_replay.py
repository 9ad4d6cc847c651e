"""Replay the Dockerfile's install steps in a fresh virtualenv, then run the app like the image.

Docker cannot run on the CI machines. This test does what ``docker build`` would do with
the RUN lines marked ``# replay`` (stages ``builder`` and ``data``), in order, with the
ARG/ENV values of their stage, in a copy of the build context filtered by .dockerignore:

- ``VIRTUAL_ENV`` (/opt/venv) and ``BIDS_SEMANTOKS_DATA`` (/opt/bids_semantoks/data) are
  mapped into a temporary folder, ``WORKDIR /src`` to the context copy;
- ``TORCH_INDEX_URL`` (download.pytorch.org, not reachable here) is replaced by pip's
  default index, or by ``$BIDS_SEMANTOKS_REPLAY_TORCH_INDEX`` when set; pip's own
  configuration of the machine (find-links with the local torch wheel) applies as usual;
- the build secrets (``RUN --mount=type=secret,id=X``, at /run/secrets/X) are files of a
  temporary folder: ``ca_bundle`` the CA bundle pip uses here, ``pip_conf`` a harmless pip.conf;
- ``WITH_MODEL=0`` (the weights are on the HuggingFace hub, not reachable here), and the
  atlases come from a real HTTP server on 127.0.0.1 serving ../shared/atlases
  (``BIDS_SEMANTOKS_ATLAS_MIRROR``), still checked against their pinned sha256.

Then, with the runtime stage's environment (same mapping) and as another user (uid 4242,
like ``docker run --user``) when the test runs as root, the participant level runs on a
tiny synthetic dataset with the baked cache read-only, writing only to the output and work
folders: the data cache must be untouched.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from containers_helpers import (
    REPO_ROOT,
    SHARED_ATLASES,
    copy_build_context,
    parse_dockerfile,
    replay_steps,
    serve,
    stage_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

OTHER_UID = 4242
PASS_ENV = ("PIP_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
            "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:]


def _run(cmd, *, env, cwd, timeout=600, user=None) -> subprocess.CompletedProcess:
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"] + list(cmd)
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _scratch_dir() -> str | None:
    """/dev/shm when it is a large enough, executable tmpfs (a venv there installs and deletes
    several times faster than on a disk with discard), else the default temp folder."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    if st.f_flag & os.ST_NOEXEC or st.f_bavail * st.f_frsize < 6 * 2**30 or not os.access("/dev/shm", os.W_OK):
        return None
    return "/dev/shm"


def _snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def replayed():
    """The replayed build: ``{"root", "venv", "data", "timings"}`` (a 0755 temp folder)."""
    if not (SHARED_ATLASES / "README.md").is_file():
        pytest.skip(f"{SHARED_ATLASES} not found")
    root = Path(tempfile.mkdtemp(prefix="semantoks-replay-", dir=_scratch_dir()))
    root.chmod(0o755)  # another uid must reach the venv and the cache, as in an image
    old_umask = os.umask(0o022)  # docker build's umask
    try:
        ctx, venv, data, home, wd, tmp = (root / n for n in ("src", "venv", "data", "home", "wd", "tmp"))
        for d in (ctx, home, wd, tmp):
            d.mkdir()
        copy_build_context(REPO_ROOT, ctx)
        shim = root / "bin"  # the base image's `python` is CPython 3.11
        shim.mkdir()
        (shim / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
        base_env = {k: v for k, v in os.environ.items() if k.startswith(PASS_ENV)}
        base_env.update(PATH=f"{shim}:/usr/local/bin:/usr/bin:/bin", HOME=str(home), LANG="C.UTF-8",
                        TMPDIR=str(tmp))
        overrides = {
            "VIRTUAL_ENV": str(venv),
            "BIDS_SEMANTOKS_DATA": str(data),
            "TORCH_INDEX_URL": os.environ.get("BIDS_SEMANTOKS_REPLAY_TORCH_INDEX", "https://pypi.org/simple"),
            "WITH_MODEL": "0",
        }
        df = parse_dockerfile()
        steps = replay_steps(df, ["builder", "data"], base_env, overrides)
        assert len(steps) >= 3, "the Dockerfile lost its '# replay' RUN lines"
        # build secrets (RUN --mount=type=secret,id=X at /run/secrets/X): the CA bundle pip
        # uses here, and a pip.conf that changes nothing; their temporary copy is mapped too
        secrets = root / "secrets"
        secrets.mkdir()
        ca = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
        if ca.is_file():
            shutil.copy(ca, secrets / "ca_bundle")
        (secrets / "pip_conf").write_text("[global]\ntimeout = 120\n")
        assert {s for st in steps for s in st.secrets()} == {"ca_bundle", "pip_conf"}
        paths = {"/run/secrets/": f"{secrets}/", "/tmp/ca.pem": str(tmp / "ca.pem")}
        timings = {}
        with serve(SHARED_ATLASES) as mirror:
            for step in steps:
                cwd = ctx if step.workdir == "/src" else wd
                env = {**step.env, "BIDS_SEMANTOKS_ATLAS_MIRROR": mirror}
                command = step.command
                for image_path, here in paths.items():
                    command = command.replace(image_path, here)
                t0 = time.monotonic()
                proc = _run(["/bin/sh", "-c", command], env=env, cwd=cwd, timeout=600)
                timings[f"{step.stage}:{step.line}"] = round(time.monotonic() - t0, 1)
                assert proc.returncode == 0, (
                    f"Dockerfile line {step.line} ({step.stage}) failed with {proc.returncode}:\n"
                    f"$ {step.command}\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}"
                )
        print(f"replayed steps (s): {timings}")
        yield {"root": root, "venv": venv, "data": data, "home": home, "df": df, "base_env": base_env,
               "timings": timings}
    finally:
        os.umask(old_umask)
        shutil.rmtree(root, ignore_errors=True)


def test_installed_app_reports_the_project_version(replayed):
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    proc = _run([str(replayed["venv"] / "bin" / "bids_semantoks"), "--version"], env={"PATH": "/usr/bin:/bin"},
                cwd=replayed["root"])
    assert proc.returncode == 0, proc.stderr
    assert version in proc.stdout
    # --no-cache-dir everywhere: pip left no cache in HOME
    assert not (replayed["home"] / ".cache" / "pip").exists()


def test_cache_holds_both_spaces_world_readable(replayed):
    data = replayed["data"]
    derived = data / "atlases" / "derived"
    for space in ("MNI152NLin2009cAsym", "MNI152NLin6Asym"):
        for ext in ("nii.gz", "tsv", "json"):
            assert (derived / f"Schaefer400-7N_TianS3_Buckner7_{space}_2mm_dseg.{ext}").is_file()
    assert not (data / "models").exists(), "WITH_MODEL=0 must not fetch the weights"
    for p in [data, *data.rglob("*")]:
        mode = p.stat().st_mode
        assert mode & 0o444 == 0o444, f"{p} is not world-readable ({stat.filemode(mode)})"
        if p.is_dir():
            assert mode & 0o111 == 0o111, f"{p} is not world-traversable ({stat.filemode(mode)})"


def test_runs_offline_as_another_user_with_the_cache_read_only(replayed, tmp_path):
    root, venv, data = replayed["root"], replayed["venv"], replayed["data"]
    runtime = {
        "VIRTUAL_ENV": str(venv),
        "BIDS_SEMANTOKS_DATA": str(data),
        "BIDS_SEMANTOKS_ATLAS_DIR": str(data / "atlases"),
        "HOME": str(root / "rt-tmp"),  # /tmp in the image: a tmpfs with --read-only
        "MPLCONFIGDIR": str(root / "rt-tmp" / "matplotlib"),
    }
    env = stage_env(replayed["df"], "runtime", {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}, runtime)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        assert var not in env, f"the image must leave {var} to --omp-nthreads"
    env["TMPDIR"] = runtime["HOME"]
    env["BIDS_SEMANTOKS_ATLAS_MIRROR"] = "http://127.0.0.1:9"  # any download attempt fails: offline
    # inputs, made as root (read-only for the app user)
    bids = root / "bids"
    proc = _run([str(venv / "bin" / "python"), "-m", "bids_semantoks.demo", str(bids), "--subjects", "1",
                 "--n-vols", "120"], env=env, cwd=root)
    assert proc.returncode == 0, _tail(proc.stderr)
    # the mounted folders: output and work, writable by the user; a tmpfs for /tmp
    out, work, rt_tmp = root / "out", root / "work", root / "rt-tmp"
    for d in (out, work, rt_tmp):
        d.mkdir()
        d.chmod(0o1777)
    before = _snapshot(data)
    user = OTHER_UID if os.geteuid() == 0 and shutil.which("setpriv") else None
    t0 = time.monotonic()
    proc = _run([str(venv / "bin" / "bids_semantoks"), str(bids), str(out), "participant", "--model", "none",
                 "-w", str(work), "--nprocs", "1", "--omp-nthreads", "1"], env=env, cwd=rt_tmp, user=user)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, f"exit {proc.returncode} (uid {user}):\n{_tail(proc.stderr)}"
    series = sorted(out.rglob("*_timeseries.tsv"))
    assert series, f"no time series written under {out}"
    assert _snapshot(data) == before, "the run wrote into the data cache"
    print(f"participant level as uid {user}: {elapsed:.1f} s")
