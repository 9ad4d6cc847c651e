"""The participant level's orchestration (issue 12): never stale, one bad run never stops the
others, Ctrl-C and concurrent jobs handled, nothing produced is not success; and the console
(issue 13 item 3): one line per run, a summary, no traceback unless asked for (-vv)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from reliability_helpers import (
    ATLAS,
    PARITY_CKPT,
    REPO_ROOT,
    TINY,
    bold_of,
    cli_subprocess,
    error_lines,
    invalid_outputs,
    output_files,
    subject_outputs,
    tree_state,
)

from tests.conftest import DSEG

M = ("--model", "none")
CKPT = ("--model", PARITY_CKPT, "--device", "cpu")


def _copy_subject(bids: Path, src: str, dst: str) -> None:
    for p in sorted((bids / f"sub-{src}").rglob("*")):
        target = bids / f"sub-{dst}" / p.relative_to(bids / f"sub-{src}")
        target = target.with_name(target.name.replace(f"sub-{src}", f"sub-{dst}"))
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)


def _write_run(bids: Path, prefix: str, default_networks, voxel_mm=8.0, res=None, seed=1) -> None:
    from bids_semantoks.demo import resample_atlas, write_run

    atlas = resample_atlas(nib.load(str(DSEG["MNI152NLin2009cAsym"])), voxel_mm)
    write_run(bids / prefix.split("_")[0] / "func", prefix, atlas, default_networks, n_vols=TINY["n_vols"],
              tr=TINY["tr"], space="MNI152NLin2009cAsym", res=res, rng=np.random.default_rng(seed))


# -- discovery sees the dataset as it is now ------------------------------------------------
def test_subject_added_then_deleted(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    assert cli(tiny_bids, out, "participant", *M).code == 0
    _copy_subject(tiny_bids, "02", "03")
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 0, r.err
    assert len(subject_outputs(out, "03")) == 2  # the new subject is processed
    shutil.rmtree(tiny_bids / "sub-01")
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 0, r.err  # a deleted subject does not fail the rerun
    assert "sub-01" not in r.err


# -- up to date means: same inputs, same settings, same selection ----------------------------
def test_changed_bold_is_recomputed(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    assert cli(tiny_bids, out, "participant", *M, "--participant-label", "01").code == 0
    ts = next((out / "sub-01" / "func").glob("*_timeseries.tsv"))
    before = ts.read_bytes()
    bold = bold_of(tiny_bids)
    st = bold.stat()
    img = nib.load(bold)
    data = np.asarray(img.dataobj).astype(np.float32)
    rng = np.random.default_rng(5)
    data += rng.standard_normal(data.shape).astype(np.float32) * data.std()
    nib.save(nib.Nifti1Image(data, img.affine, img.header), bold)
    os.utime(bold, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    r = cli(tiny_bids, out, "participant", *M, "--participant-label", "01")
    assert r.code == 0, r.err
    assert ts.read_bytes() != before


def test_selection_change_rebuilds_the_subject_mean(cli, tiny_bids, tmp_path, default_networks):
    _write_run(tiny_bids, "sub-01_task-nback", default_networks)
    out = tmp_path / "out"
    args = ("participant", "--participant-label", "01", *CKPT)
    assert cli(tiny_bids, out, *args).code == 0
    mean = out / "sub-01" / "func" / f"sub-01_atlas-{ATLAS}_desc-checkpoint_embedding.json"
    assert json.loads(mean.read_text())["NumberOfRuns"] == 2
    r = cli(tiny_bids, out, *args, "-t", "rest")
    assert r.code == 0, r.err
    meta = json.loads(mean.read_text())
    assert meta["NumberOfRuns"] == 1 and all("task-rest" in s for s in meta["Sources"])
    n_rest = len(pd.read_csv(next((out / "sub-01" / "func").glob("*task-rest*_desc-checkpoint_embedding.tsv")),
                             sep="\t"))
    assert pd.read_csv(mean.with_suffix(".tsv"), sep="\t")["n_crops"].tolist() == [n_rest]
    # the nback run's own outputs are kept (documented); only the mean follows the selection
    assert list((out / "sub-01" / "func").glob("*task-nback*_timeseries.tsv"))


def test_model_change_recomputes_only_embeddings(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    args = ("participant", "--participant-label", "01", "--device", "cpu")
    assert cli(tiny_bids, out, *args, "--model", PARITY_CKPT).code == 0
    ts = next((out / "sub-01" / "func").glob("*_timeseries.tsv"))
    stamp = ts.stat().st_mtime_ns
    other = tmp_path / "other.pth"
    shutil.copy(PARITY_CKPT, other)
    assert cli(tiny_bids, out, *args, "--model", other).code == 0
    assert ts.stat().st_mtime_ns == stamp
    assert len(list((out / "sub-01" / "func").glob("*_desc-other_embedding.tsv"))) == 2  # run + mean


def test_two_resolutions_of_one_run(cli, tmp_path, default_networks):
    """fMRIPrep --output-spaces X:res-1 X:res-2: both processed, under distinct names; a filter
    switching from one to the other never keeps the first one's output."""
    from bids_semantoks.demo import make_dataset

    bids = make_dataset(tmp_path / "fmriprep", DSEG["MNI152NLin2009cAsym"], default_networks, subjects=("01",),
                        res="8", **TINY)
    _write_run(bids, "sub-01_task-rest", default_networks, voxel_mm=6.0, res="6")
    out = tmp_path / "out"
    r = cli(bids, out, "participant", *M)
    assert r.code == 0, r.err
    names = sorted(p.name for p in (out / "sub-01" / "func").glob("*_timeseries.tsv"))
    assert [n.split("_")[3] for n in names] == ["res-6", "res-8"]
    filt = tmp_path / "f.json"
    out2 = tmp_path / "out2"
    for res in ("8", "6"):
        filt.write_text(json.dumps({"bold": {"res": res}}))
        assert cli(bids, out2, "participant", *M, "--bids-filter-file", filt).code == 0
    meta = json.loads(next((out2 / "sub-01" / "func").glob("*_res-6_*_timeseries.json")).read_text())
    assert "_res-6_" in meta["Sources"][0]


# -- one bad run fails alone -------------------------------------------------------------------
def test_broken_symlink_fails_that_run_only(cli, tiny_bids, tmp_path):
    bold = bold_of(tiny_bids)
    bold.unlink()
    bold.symlink_to("../../.git/annex/objects/XX/missing.nii.gz")  # an un-fetched DataLad file
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 66, r.err
    assert bold.name in r.message and "symbolic link" in r.message
    assert len(subject_outputs(out, "02")) == 2
    assert subject_outputs(out, "01") == []


# -- folders -----------------------------------------------------------------------------------
def test_work_and_database_dirs_inside_bids_dir_are_refused(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M, "-w", tiny_bids / "work")
    assert r.code == 64 and "inside BIDS_DIR" in r.message and "-w" in r.message
    r = cli(tiny_bids, out, "participant", *M, "--bids-database-dir", tiny_bids / "db")
    assert r.code == 64 and "--bids-database-dir" in r.message
    assert not (tiny_bids / "work").exists() and not (tiny_bids / "db").exists()


# -- nothing produced is not success -----------------------------------------------------------
def test_every_run_dropped_is_exit_18(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", *M, "--min-time", "1000")
    assert r.code == 18, r.err
    assert "--min-time" in r.message and "2 run(s)" in r.message
    assert not list(out.rglob("*_timeseries.tsv"))


# -- Ctrl-C and concurrent jobs (real processes) --------------------------------------------------
def test_sigint_stops_promptly_with_130(tmp_path, default_networks):
    from bids_semantoks.demo import make_dataset

    subjects = tuple(f"{i:02d}" for i in range(1, 6))
    # 4 mm, 200 volumes: the extraction of a run dominates, so the signal lands inside a step
    bids = make_dataset(tmp_path / "fmriprep", DSEG["MNI152NLin2009cAsym"], default_networks,
                        subjects=subjects, voxel_mm=4.0, n_vols=200, tr=2.0)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bids_semantoks", str(bids), str(out), "participant",
                             *M, "--nprocs", "1"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("sub-*/func/*_timeseries.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next run's extraction
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 10, "Ctrl-C must stop the level promptly"
    assert "Traceback" not in err
    assert not [p for p in output_files(out) if p.name.startswith("crash")]  # not recorded as a crash
    assert not [p for p in output_files(out, include_work=True) if p.name.endswith(".tmp")]
    assert invalid_outputs(out) == []
    done = len(list(out.glob("sub-*/func/*_timeseries.tsv")))
    assert 0 < done < len(subjects)
    rerun = cli_subprocess(bids, out, "participant", *M)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(out.glob("sub-*/func/*_timeseries.tsv"))) == len(subjects)


def test_two_identical_jobs_on_one_work_dir(tiny_bids, tmp_path):
    out = tmp_path / "out"
    before = tree_state(tiny_bids)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bids_semantoks", str(tiny_bids), str(out), "participant", *map(str, CKPT)]
    procs = [subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    for code, err in results:
        assert code == 0, err
    assert tree_state(tiny_bids) == before
    assert invalid_outputs(out) == []
    for sub in ("01", "02"):
        assert len(subject_outputs(out, sub)) == 6


# -- the console (issue 13 item 3) -------------------------------------------------------------
def test_console_one_line_per_run_and_no_traceback(tiny_bids, tmp_path):
    bold = bold_of(tiny_bids)
    bold.write_bytes(bold.read_bytes()[:5000])
    out = tmp_path / "out"
    r = cli_subprocess(tiny_bids, out, "participant", *M)
    assert r.returncode == 65, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    # sub-01 failed, sub-02 done, the summary, the error line
    assert len(lines) == 4, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert any("sub-02_task-rest" in ln and ln.endswith("done") for ln in lines)
    assert "exit 65 (bad input data)" in lines[2]
    assert len(error_lines(r.stderr)) == 1
    crash = list((out / "sub-01" / "log").glob("crash-*.txt"))
    assert len(crash) == 1 and "Traceback" in crash[0].read_text()
    # -v says more, -vv shows the traceback
    r1 = cli_subprocess(tiny_bids, out, "participant", *M, "-v")
    assert len([ln for ln in r1.stderr.splitlines() if ln.strip()]) > 4 and "found 2 run(s)" in r1.stderr
    assert "Traceback" not in r1.stderr
    r2 = cli_subprocess(tiny_bids, out, "participant", *M, "-vv")
    assert "Traceback" in r2.stderr
