"""Helpers of the reliability suite: CLI runs that capture the user's message, output scans
(no half-written files), input hashing, and real read-only / full mounts (we run as root)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import DSEG, REPO_ROOT, run_cli

ATLAS = "SchaeferTianBuckner457"
#: tiny synthetic fMRIPrep runs: 8 mm voxels, 110 volumes at TR 2 s (one model window + margin)
TINY = {"voxel_mm": 8.0, "n_vols": 110, "tr": 2.0}
PARITY_CKPT = REPO_ROOT.parent / "shared" / "fixtures" / "reference_parity" / "checkpoint.pth"

def bold_of(bids: Path, subject: str = "01") -> Path:
    return next((bids / f"sub-{subject}" / "func").glob("*_desc-preproc_bold.nii.gz"))


def mask_of(bids: Path, subject: str = "01") -> Path:
    return next((bids / f"sub-{subject}" / "func").glob("*_desc-brain_mask.nii.gz"))


def confounds_of(bids: Path, subject: str = "01") -> Path:
    return next((bids / f"sub-{subject}" / "func").glob("*_desc-confounds_timeseries.tsv"))


def sidecar_of_bold(bids: Path, subject: str = "01") -> Path:
    return next((bids / f"sub-{subject}" / "func").glob("*_desc-preproc_bold.json"))


# -- running the CLI --------------------------------------------------------------------
class Result:
    def __init__(self, code: int, err: str):
        self.code = code
        self.err = err
        self.errors = [ln for ln in err.splitlines() if ln.startswith("bids_semantoks: ")
                       and ("error:" in ln.split(" ", 2)[1] or ln.startswith("bids_semantoks: unexpected"))]

    @property
    def message(self) -> str:
        """The one error line a user sees (asserts there is exactly one)."""
        assert len(self.errors) == 1, f"expected one error line, got {self.errors!r}\n{self.err}"
        return self.errors[0]

    def __repr__(self):
        return f"Result(code={self.code}, errors={self.errors})"


def cli_subprocess(*args, env=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """``python -m bids_semantoks ...`` as a real process."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "bids_semantoks", *map(str, args)], cwd=REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout, **kwargs)


# -- output checks ----------------------------------------------------------------------
def output_files(out: Path, include_work: bool = False) -> list[Path]:
    out = Path(out)
    if not out.exists():
        return []
    files = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).parts
        if not include_work and rel[0] == "work":
            continue
        if p.is_file() or p.is_symlink():
            files.append(p)
    return files


def invalid_outputs(out: Path) -> list[str]:
    """Every file under OUTPUT_DIR (work dir excluded) that a user must not see.

    Temporary files, unparsable or empty JSON/TSV, TSVs whose rows are ragged or empty, and
    data files (TSV/NPZ) without their JSON sidecar.
    """
    bad = []
    for p in output_files(out):
        name = p.name
        rel = str(p.relative_to(out))
        if name.endswith(".tmp") or name.startswith(".") and name not in (".bidsignore", ".bids_semantoks.lock"):
            bad.append(f"{rel}: temporary file")
            continue
        if name.endswith(".json"):
            try:
                doc = json.loads(p.read_text())
                if not isinstance(doc, dict):
                    bad.append(f"{rel}: JSON is not an object")
            except (ValueError, UnicodeDecodeError) as exc:
                bad.append(f"{rel}: invalid JSON ({exc})")
        elif name.endswith(".tsv"):
            try:
                frame = pd.read_csv(p, sep="\t", na_values="n/a")
                lines = p.read_text().splitlines()
                if frame.empty or len(lines) != len(frame) + 1 or not p.read_text().endswith("\n"):
                    bad.append(f"{rel}: truncated TSV")
                elif any(ln.count("\t") != lines[0].count("\t") for ln in lines):
                    bad.append(f"{rel}: ragged TSV")
            except Exception as exc:  # noqa: BLE001 - any parse failure is a finding
                bad.append(f"{rel}: unparsable TSV ({exc})")
            if "func" in p.parts and not p.with_suffix(".json").is_file() and name != "participants.tsv":
                bad.append(f"{rel}: TSV without its JSON sidecar")
    return bad


def data_outputs(out: Path) -> dict[str, bytes]:
    """Derivative data files (TSV, JSON under sub-*/func), relative path -> bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in output_files(out)
            if "func" in p.parts and p.suffix in (".tsv", ".json")}


def subject_outputs(out: Path, subject: str) -> list[str]:
    d = Path(out) / f"sub-{subject}" / "func"
    return sorted(p.name for p in d.glob("*")) if d.is_dir() else []


# -- inputs never touched -----------------------------------------------------------------
def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: type, mode, size, mtime and sha256 of files."""
    root = Path(root)
    state: dict[str, tuple] = {".": ("dir", root.stat().st_mode, root.stat().st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                state[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                state[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns,
                              hashlib.sha256(p.read_bytes()).hexdigest())
    return state


# -- real mounts (we run as root: chmod does not stop root) --------------------------------
def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path("/tmp") / f"bst-mount-probe-{uuid.uuid4().hex[:8]}"
    probe.mkdir()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        return ok
    finally:
        probe.rmdir()


CAN_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="needs root and mount(8) (tmpfs, bind) in this sandbox")


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m"):
    """A small tmpfs at ``path`` (disk full after ``size``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only(src: Path, dst: Path | None = None):
    """``src`` bind-mounted read-only at ``dst`` (default: over itself)."""
    src = Path(src)
    dst = Path(dst) if dst is not None else src
    dst.mkdir(parents=True, exist_ok=True)
    _sh("mount", "--bind", str(src), str(dst))
    try:
        _sh("mount", "-o", "remount,bind,ro", str(dst))
        yield dst
    finally:
        subprocess.run(["umount", "-l", str(dst)], capture_output=True)


# -- permission denied as root: drop the capabilities that bypass file permissions -----------
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search,-fowner",
          "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def _can_drop_dac() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    return subprocess.run([*NO_DAC, "true"], capture_output=True).returncode == 0


CAN_DROP_DAC = _can_drop_dac()
needs_no_dac = pytest.mark.skipif(not CAN_DROP_DAC, reason="needs root and setpriv(1) to drop CAP_DAC_OVERRIDE")


def cli_without_dac_override(*args, timeout=300) -> subprocess.CompletedProcess:
    """The CLI as root without CAP_DAC_OVERRIDE/FOWNER: chmod'ed folders give EACCES, as for a user."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*NO_DAC, sys.executable, "-m", "bids_semantoks", *map(str, args)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("bids_semantoks: ")
            and ("error:" in ln.split(" ", 2)[1] or ln.startswith("bids_semantoks: unexpected"))]
