"""Parallel participant jobs into one OUTPUT_DIR (separate processes, as a SLURM array runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
from reliability_helpers import (
    ATLAS,
    PARITY_CKPT,
    REPO_ROOT,
    TINY,
    bold_of,
    invalid_outputs,
    output_files,
    subject_outputs,
    tree_state,
)

from tests.conftest import DSEG

N_JOBS = 8


def test_eight_jobs_one_output_dir(tmp_path, default_networks):
    from bids_semantoks.demo import make_dataset

    subjects = tuple(f"{i:02d}" for i in range(1, N_JOBS + 1))
    bids = make_dataset(tmp_path / "fmriprep", DSEG["MNI152NLin2009cAsym"], default_networks,
                        subjects=subjects, **TINY)
    bad = bold_of(bids, "08")  # one job of the array fails: its error must not leak into the others
    bad.write_bytes(bad.read_bytes()[:5000])
    before = tree_state(bids)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        sub: subprocess.Popen(
            [sys.executable, "-m", "bids_semantoks", str(bids), str(out), "participant", "--participant-label", sub,
             "--model", str(PARITY_CKPT), "--device", "cpu", "--nprocs", "1"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for sub in subjects
    }
    results = {sub: (p.wait(timeout=600), p.stderr.read()) for sub, p in procs.items()}
    for p in procs.values():
        p.stdout.close()
        p.stderr.close()
    for sub, (code, err) in results.items():
        if sub == "08":
            assert code == 65, err
            assert [ln for ln in err.splitlines() if ln.startswith("bids_semantoks: error:")] == [
                ln for ln in err.splitlines() if bad.name in ln and ln.startswith("bids_semantoks: error:")]
        else:
            assert code == 0, f"sub-{sub}: {err}"
    assert tree_state(bids) == before

    # every output present and valid
    assert invalid_outputs(out) == []
    for sub in subjects[:-1]:
        names = subject_outputs(out, sub)
        assert len(names) == 6, names  # time series, run embedding, subject mean (+ sidecars)
        mean = out / f"sub-{sub}" / "func" / f"sub-{sub}_atlas-{ATLAS}_desc-checkpoint_embedding.tsv"
        run_emb = next((out / f"sub-{sub}" / "func").glob("*_task-rest_*_desc-checkpoint_embedding.tsv"))
        assert pd.read_csv(mean, sep="\t")["n_crops"].tolist() == [len(pd.read_csv(run_emb, sep="\t"))]
        settings = json.loads((out / f"sub-{sub}" / "log" / "bids_semantoks_participant.json").read_text())
        assert settings["participant"]["participant_label"] == [sub]
    assert subject_outputs(out, "08") == []

    # shared files: valid, one entry, nothing lost or duplicated
    desc = json.loads((out / "dataset_description.json").read_text())
    assert [g["Name"] for g in desc["GeneratedBy"]] == ["bids_semantoks", "fMRIPrep"]
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert len(ignore) == len(set(ignore)) and "*_embedding.tsv" in ignore
    citation = (out / "logs" / "CITATION.md").read_text()
    assert citation.count("# How these data were processed") == 1
    assert not [p for p in output_files(out, include_work=True) if p.name.endswith(".tmp")]


def test_other_jobs_error_records_are_left_alone(cli, tiny_bids, tmp_path):
    """A job sharing the work dir neither reports nor deletes another job's failure record."""
    out = tmp_path / "out"
    errors = out / "work" / "errors"
    errors.mkdir(parents=True)
    foreign = errors / "sub-99_task-rest_extract.json"
    foreign.write_text(json.dumps({"code": 65, "message": "sub-99: another job's failure"}))
    r = cli(tiny_bids, out, "participant", "--participant-label", "01", "--model", "none")
    assert r.code == 0, r.err
    assert foreign.is_file()
