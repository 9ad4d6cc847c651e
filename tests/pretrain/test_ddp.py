"""DistributedDataParallel on 2 CPU processes (gloo, real torchrun) = 1 process, same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from pretrain_helpers import atlas_kwargs, ddp_options, synthetic_runs
from safetensors.torch import load_file

from bids_semantoks.pretrain import run_pretrain

HERE = Path(__file__).parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_gloo_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path / "ddp"), "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_pretrain(ddp_options(2), synthetic_runs(16), tmp_path / "one",
                              **atlas_kwargs())
    finally:
        torch.set_num_threads(threads)
    a = load_file(single / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "models" / "ddp" / "model.safetensors")
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst < 1e-5, f"largest teacher weight difference {worst:.3g}"
    # the student moved by ~lr per step; the two runs agree far below that
    sa = torch.load(single / "training/state.pt", weights_only=False)["student"]
    sb = torch.load(tmp_path / "ddp/models/ddp/training/state.pt", weights_only=False)["student"]
    moved = max((sa[k].double() - a_init).abs().max().item() for k, a_init in _init_student().items())
    worst_student = max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].is_floating_point())
    print(f"student: moved {moved:.3g}, largest 1-vs-2-process difference {worst_student:.3g}")
    assert worst_student < 0.02 * moved
    la = pd.read_csv(single / "training/training_log.tsv", sep="\t", na_values="n/a")
    lb = pd.read_csv(tmp_path / "ddp/models/ddp/training/training_log.tsv", sep="\t", na_values="n/a")
    # global loss terms (rank 0 logs the mean over processes); the gradient norm is the most
    # sensitive number (float32 sums in another order), hence rtol 1e-3
    pd.testing.assert_frame_equal(la, lb, rtol=1e-3, atol=1e-5)


def _init_student():
    """Student weights at initialisation (same seed as run_pretrain)."""
    from bids_semantoks.model import Encoder, ProjectionHead
    from bids_semantoks.pretrain.meta_arch import SelfDistillation
    from bids_semantoks.pretrain.run import build_encoder_config

    opts = ddp_options(2)
    kw = atlas_kwargs()
    cfg = build_encoder_config(opts, kw["network_names"], kw["channel_networks"])
    torch.manual_seed(opts.seed)
    model = SelfDistillation(Encoder(cfg), ProjectionHead(cfg.dim, opts.head_hidden, opts.head_out))
    return {k: v.double() for k, v in model.student.state_dict().items() if v.is_floating_point()}
