"""OUTPUT_DIR / work dir that cannot be written: read-only mounts, a full disk (small tmpfs),
a file where a folder must be created. Exit 73, one line naming the path, no temporary files.

We run as root, so permissions (chmod) do not stop writes by themselves: read-only bind mounts
and tmpfs mounts are used (skipped where mount(8) is not allowed), and for "permission denied"
the CLI runs as root without CAP_DAC_OVERRIDE (setpriv), which makes chmod bite."""

from __future__ import annotations

import pytest
from reliability_helpers import (
    ATLAS,
    cli_without_dac_override,
    error_lines,
    invalid_outputs,
    needs_mount,
    needs_no_dac,
    output_files,
    read_only,
    subject_outputs,
    tmpfs,
)

M = ("--model", "none")


def _no_tmp(root):
    left = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert left == [], left


def test_output_dir_below_a_file(cli, tiny_bids, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    out = blocker / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 73, r.err
    assert str(out) in r.message and "OUTPUT_DIR" in r.message


def test_subject_folder_is_a_file(cli, tiny_bids, tmp_path):
    """sub-01 cannot be written (a file sits where its folder goes); sub-02 still is."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01").write_text("not a folder")
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 73, r.err
    assert "sub-01" in r.message
    assert len(subject_outputs(out, "02")) == 2
    _no_tmp(out)


def test_work_dir_below_a_file(cli, tiny_bids, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "-w", blocker / "work", *M)
    assert r.code == 73, r.err
    assert str(blocker / "work") in r.message
    assert not [p for p in output_files(out) if "sub-" in str(p)]


@needs_mount
def test_output_dir_read_only(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with read_only(out):
        r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 73, r.err
    assert str(out) in r.message and "writable" in r.message


@needs_mount
def test_output_parent_read_only(cli, tiny_bids, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        r = cli(tiny_bids, parent / "out", "participant", *M)
    assert r.code == 73, r.err
    assert str(parent / "out") in r.message and "Read-only file system" in r.message


@needs_mount
def test_work_dir_read_only(cli, tiny_bids, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out"
    with read_only(work):
        r = cli(tiny_bids, out, "participant", "-w", work, *M)
    assert r.code == 73, r.err
    assert str(work) in r.message
    assert not [p for p in output_files(out) if "sub-" in str(p)]


@needs_mount
def test_output_disk_full(cli, tiny_bids, tmp_path):
    """OUTPUT_DIR on a 300 KiB tmpfs: the first time series (~0.5 MB) does not fit."""
    out = tmp_path / "out"
    with tmpfs(out, "300k"):
        r = cli(tiny_bids, out, "participant", "-w", tmp_path / "work", *M)
        assert r.code == 73, r.err
        assert "No space left on device" in r.message and str(out) in r.message
        assert not list(out.rglob("*_timeseries.tsv"))  # nothing half-written under a final name
        _no_tmp(out)
        assert invalid_outputs(out) == []


@needs_mount
def test_output_disk_full_after_first_subject(cli, tiny_bids, tmp_path):
    """Room for one subject only: it is complete, the other fails cleanly, a rerun with space finishes."""
    out = tmp_path / "out"
    with tmpfs(out, "900k"):
        r = cli(tiny_bids, out, "participant", "-w", tmp_path / "work", *M)
        assert r.code == 73, r.err
        assert "No space left on device" in r.message
        assert invalid_outputs(out) == []
        _no_tmp(out)
        done = [s for s in ("01", "02") if subject_outputs(out, s)]
        assert len(done) == 1 and len(subject_outputs(out, done[0])) == 2
        snapshot = {p: p.read_bytes() for p in output_files(out)}
    # the same job with room: completes, and the subject already done is not rewritten
    out2 = tmp_path / "out2"
    out2.mkdir()
    for p, data in snapshot.items():
        (out2 / p.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
        (out2 / p.relative_to(out)).write_bytes(data)
    r = cli(tiny_bids, out2, "participant", "-w", tmp_path / "work2", *M)
    assert r.code == 0, r.err
    assert all(len(subject_outputs(out2, s)) == 2 for s in ("01", "02"))
    assert all((out2 / p.relative_to(out)).read_bytes() == data for p, data in snapshot.items()
               if "func" in p.parts)


@needs_mount
@pytest.mark.parametrize("database", ["in_work_dir", "elsewhere"])
def test_work_dir_disk_full(cli, tiny_bids, tmp_path, database):
    """The pybids database (sqlite) or nipype's own files do not fit in the work dir."""
    work = tmp_path / "work"
    out = tmp_path / "out"
    extra = ("--bids-database-dir", tmp_path / "db") if database == "elsewhere" else ()
    with tmpfs(work, "64k"):
        r = cli(tiny_bids, out, "participant", "-w", work, *extra, *M)
    assert r.code == 73, r.err
    assert str(work) in r.message and "--work-dir" in r.message
    assert ("disk is full" if database == "in_work_dir" else "No space left on device") in r.message
    assert not [p for p in output_files(out) if f"atlas-{ATLAS}" in p.name and not p.name.endswith(".json")
                or p.name.endswith(".tmp")]



# -- permission denied (chmod; root made to respect it by dropping CAP_DAC_OVERRIDE) -------------
@needs_no_dac
def test_output_dir_permission_denied(tiny_bids, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    r = cli_without_dac_override(tiny_bids, out, "participant", "--model", "none")
    assert r.returncode == 73, r.stderr
    (line,) = error_lines(r.stderr)
    assert str(out) in line and "not writable" in line
    assert list(out.iterdir()) == []
    _record("test_storage.py::test_output_dir_permission_denied", r.returncode, line)


@needs_no_dac
def test_subject_folder_permission_denied(tiny_bids, tmp_path):
    """sub-01/func is not writable: sub-01 fails with 73, sub-02 is processed."""
    out = tmp_path / "out"
    func = out / "sub-01" / "func"
    func.mkdir(parents=True)
    func.chmod(0o555)
    r = cli_without_dac_override(tiny_bids, out, "participant", "--model", "none")
    func.chmod(0o755)
    assert r.returncode == 73, r.stderr
    (line,) = error_lines(r.stderr)
    assert str(func) in line and "Permission denied" in line
    assert list(func.iterdir()) == []
    assert len(subject_outputs(out, "02")) == 2
    assert invalid_outputs(out) == []
    _record("test_storage.py::test_subject_folder_permission_denied", r.returncode, line)


def _record(test: str, code: int, line: str) -> None:
    import json
    import os

    record = os.environ.get("BIDS_SEMANTOKS_RELIABILITY_MESSAGES")
    if record:
        with open(record, "a") as fh:
            fh.write(json.dumps({"test": test, "code": code, "errors": [line]}) + "\n")
