"""kill -9 at random (seeded) moments: no half-written file is ever visible under its final name,
and a rerun completes with outputs equal to those of an uninterrupted run.

Set BIDS_SEMANTOKS_KILL_TRIALS to change the number of trials per level (default 10)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from reliability_helpers import (
    PARITY_CKPT,
    REPO_ROOT,
    TINY,
    cli_subprocess,
    data_outputs,
    invalid_outputs,
    output_files,
    tree_state,
)

from tests.conftest import DSEG

N_TRIALS = int(os.environ.get("BIDS_SEMANTOKS_KILL_TRIALS", "10"))
pytestmark = pytest.mark.slow


def _start(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bids_semantoks", *map(str, args)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL the process group after ``delay`` s; True when it was still running (a real interruption)."""
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        pass
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return alive


def _in_parallel(fn, n: int) -> list:
    """Run the trials two at a time (CI has 2 cores; every trial is a chain of subprocesses)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        return list(pool.map(fn, range(n)))


def _visible_damage(out: Path) -> list[str]:
    """Files under their final name that are not complete (temporary names and orphans are allowed here)."""
    return [b for b in invalid_outputs(out) if not b.endswith(("temporary file", "TSV without its JSON sidecar"))]


def _json_equal(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith(".json"):
            assert json.loads(a[name]) == json.loads(b[name]), name
        else:
            assert a[name] == b[name], name


@pytest.fixture(scope="module")
def kill_bids(tmp_path_factory, default_networks) -> Path:
    from bids_semantoks.demo import make_dataset

    return make_dataset(tmp_path_factory.mktemp("kill") / "fmriprep", DSEG["MNI152NLin2009cAsym"], default_networks,
                        subjects=("01", "02"), **TINY)


def test_kill_participant(kill_bids, tmp_path):
    args = ("participant", "--participant-label", "01", "--model", PARITY_CKPT, "--device", "cpu")
    before = tree_state(kill_bids)
    ref = tmp_path / "ref"
    t0 = time.monotonic()
    done = cli_subprocess(kill_bids, ref, *args)
    duration = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    expected = data_outputs(ref)
    assert len(expected) == 6
    delays = np.random.default_rng(20240601).uniform(0.5, 0.95 * duration, N_TRIALS)

    def trial(i: int) -> bool:
        out = tmp_path / f"trial{i}"
        interrupted = _kill_after(_start(kill_bids, out, *args), float(delays[i]))
        assert _visible_damage(out) == [], f"trial {i} (killed after {delays[i]:.1f} s)"
        rerun = cli_subprocess(kill_bids, out, *args)
        assert rerun.returncode == 0, f"trial {i} (killed after {delays[i]:.1f} s): {rerun.stderr[-2000:]}"
        _json_equal(data_outputs(out), expected)
        assert invalid_outputs(out) == [], f"trial {i}: left behind after the rerun"
        shutil.rmtree(out)
        return interrupted

    interrupted = sum(_in_parallel(trial, N_TRIALS))
    assert tree_state(kill_bids) == before
    assert interrupted >= N_TRIALS // 2, f"only {interrupted} of {N_TRIALS} kills hit a running job"


# -- pre-training ---------------------------------------------------------------------------
def _model_files(out: Path, name: str = "pretrained") -> dict:
    """Weights (bytes) and config (parsed; the recorded ``resume`` flag says how the run was launched)."""
    folder = out / "models" / name
    config = json.loads((folder / "config.json").read_text())
    config["metadata"]["pretrain_options"].pop("resume")
    return {"model.safetensors": (folder / "model.safetensors").read_bytes(), "config.json": config}


def _pretrain_damage(out: Path) -> list[str]:
    """Every pre-training file under its final name must be complete."""
    from safetensors import safe_open

    bad = []
    folder = out / "models" / "pretrained"
    for p in output_files(folder) if folder.is_dir() else []:
        try:
            if p.name.endswith(".tmp"):
                continue
            if p.name == "model.safetensors":
                with safe_open(str(p), "pt") as fh:
                    [fh.get_tensor(k) for k in fh.keys()]
            elif p.name == "state.pt":
                from bids_semantoks.pretrain.checkpoint import load_state

                assert {"epoch", "student", "teacher", "optimizer"} <= set(load_state(p))
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".yaml":
                assert isinstance(yaml.safe_load(p.read_text()), dict)
            elif p.suffix == ".tsv":
                frame = pd.read_csv(p, sep="\t")
                assert p.read_text().endswith("\n") and not frame.columns.empty
            elif p.suffix == ".png":
                assert p.read_bytes().endswith(b"IEND\xaeB`\x82")
        except Exception as exc:  # noqa: BLE001 - any failure is a finding
            bad.append(f"{p.relative_to(out)}: {type(exc).__name__}: {exc}")
    return bad


def test_kill_pretrain(kill_bids, tmp_path):
    # participant outputs once (pre-training reads them), copied into every trial
    base = tmp_path / "base"
    done = cli_subprocess(kill_bids, base, "participant", "--model", "none")
    assert done.returncode == 0, done.stderr
    shutil.rmtree(base / "work")
    cfg = tmp_path / "pretrain.yaml"
    cfg.write_text(yaml.safe_dump({"pretrain": {"checkpoint_every": 1, "progress": False}}))
    args = ("pretrain", "--model-size", "tiny", "--epochs", "4", "--batch-size", "2", "--config-file", cfg)
    before = tree_state(kill_bids)

    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    t0 = time.monotonic()
    done = cli_subprocess(kill_bids, ref, *args)
    duration = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    expected = _model_files(ref)
    delays = np.random.default_rng(20240602).uniform(0.5, 0.95 * duration, N_TRIALS)

    def trial(i: int) -> bool:
        out = tmp_path / f"trial{i}"
        shutil.copytree(base, out)
        interrupted = _kill_after(_start(kill_bids, out, *args), float(delays[i]))
        assert _pretrain_damage(out) == [], f"trial {i} (killed after {delays[i]:.1f} s)"
        resume = ("--resume",) if i % 2 == 0 else ()  # both ways of rerunning end in the same model
        rerun = cli_subprocess(kill_bids, out, *args, *resume)
        assert rerun.returncode == 0, f"trial {i} (killed after {delays[i]:.1f} s): {rerun.stderr[-2000:]}"
        assert _model_files(out) == expected, f"trial {i} (killed after {delays[i]:.1f} s{', resumed' if resume else ''})"
        assert _pretrain_damage(out) == []
        left = [p for p in output_files(out) if p.name.endswith(".tmp")]
        assert left == [], f"trial {i}: temporary files left behind: {left}"
        shutil.rmtree(out)
        return interrupted

    interrupted = sum(_in_parallel(trial, N_TRIALS))
    assert tree_state(kill_bids) == before
    assert interrupted >= N_TRIALS // 2, f"only {interrupted} of {N_TRIALS} kills hit a running job"
