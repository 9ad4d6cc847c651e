"""Parallel runs with a model and cheap reruns (issue 12): the worker pool is forked before the
main process imports torch (spawned workers re-import everything and made ``--nprocs 2`` slower
than 1), a rerun with nothing to do needs only the model's identity (no torch, no encoder), and a
model that does not fit the atlas still fails with its one line before any output is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from reliability_helpers import PARITY_CKPT, REPO_ROOT, cli_subprocess, output_files, subject_outputs

CKPT = ("--model", PARITY_CKPT, "--device", "cpu")

# runs the CLI, then says on stderr how the pool started and whether this process imported torch
_PROBE = """
import atexit, sys
from bids_semantoks.workflows import runner
init = runner.WorkerPool.__init__
def probe(self, *a, **k):
    init(self, *a, **k)
    print("POOL", self.method, file=sys.stderr)
runner.WorkerPool.__init__ = probe
atexit.register(lambda: print("TORCH", "torch" in sys.modules, file=sys.stderr))
from bids_semantoks.cli import main
main()
"""


def _probe(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_parallel_run_with_a_model_forks_its_workers_and_matches_one_process(tiny_bids, tmp_path):
    r2 = _probe(tiny_bids, tmp_path / "o2", "participant", *CKPT, "--nprocs", "2")
    assert r2.returncode == 0, r2.stderr
    assert "POOL fork" in r2.stderr, r2.stderr  # was spawn: every worker re-imported torch and the app
    assert "TORCH False" in r2.stderr, r2.stderr  # the encoder lives in the workers only
    r1 = cli_subprocess(tiny_bids, tmp_path / "o1", "participant", *CKPT, "--nprocs", "1")
    assert r1.returncode == 0, r1.stderr
    for sub in ("01", "02"):
        names = subject_outputs(tmp_path / "o2", sub)
        assert names == subject_outputs(tmp_path / "o1", sub) and len(names) == 6
        for name in names:
            if name.endswith(".tsv"):
                a = pd.read_csv(tmp_path / "o1" / f"sub-{sub}" / "func" / name, sep="\t")
                b = pd.read_csv(tmp_path / "o2" / f"sub-{sub}" / "func" / name, sep="\t")
                pd.testing.assert_frame_equal(a, b)


def test_rerun_with_nothing_to_do_does_not_load_the_model(tiny_bids, tmp_path):
    out = tmp_path / "out"
    first = cli_subprocess(tiny_bids, out, "participant", *CKPT)
    assert first.returncode == 0, first.stderr
    for nprocs in ("1", "2"):
        r = _probe(tiny_bids, out, "participant", *CKPT, "--nprocs", nprocs)
        assert r.returncode == 0, r.stderr
        assert "2 up to date" in r.stderr, r.stderr
        assert "TORCH False" in r.stderr, r.stderr  # was True: the encoder was built to check the atlas
    assert Path(out, "work", "model_sha256.json").is_file()  # the checkpoint is hashed once


def test_model_for_another_atlas_fails_before_writing_with_nprocs_2(tiny_bids, tmp_path):
    obj = torch.load(PARITY_CKPT, weights_only=True, map_location="cpu")
    state = obj["model_state_dict"]
    key = next(k for k in state if k.startswith("teacher_encoder.network_tokenizers.schaefer400.0.branches.0.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1, *state[key].shape[2:])
    path = tmp_path / "other_atlas.pth"
    torch.save(obj, path)
    out = tmp_path / "out"
    r = cli_subprocess(tiny_bids, out, "participant", "--model", path, "--device", "cpu", "--nprocs", "2")
    assert r.returncode == 65, r.stderr  # as with --nprocs 1 (test_bad_checkpoint.py)
    errors = [ln for ln in r.stderr.splitlines() if "other_atlas.pth" in ln]
    assert len(errors) == 1 and "atlas" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not [p for p in output_files(out) if "sub-" in str(p.relative_to(out))]
