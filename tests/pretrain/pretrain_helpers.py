"""Helpers of the pre-training tests: small synthetic data sets (CPU, seconds)."""

import numpy as np

from bids_semantoks.pretrain.data import RunSeries
from bids_semantoks.pretrain.options import load_options

NETWORKS = ["A", "B", "C"]
CHANNEL_NETWORKS = [0] * 5 + [1] * 4 + [2] * 3
CHANNEL_NAMES = [f"roi{i:02d}" for i in range(len(CHANNEL_NETWORKS))]


def synthetic_runs(n_subjects=16, seed=0, channels=len(CHANNEL_NETWORKS)):
    """Runs with network-shared latent signals (so there is something to learn), lengths 90..200."""
    rng = np.random.default_rng(seed)
    runs = []
    for s in range(n_subjects):
        for r in range(1 + s % 2):
            length = int(rng.integers(90, 200))
            latent = rng.normal(size=(length, 3)).cumsum(0) * 0.3
            x = latent[:, CHANNEL_NETWORKS] + rng.normal(size=(length, channels))
            x = (x - x.mean(0)) / x.std(0)
            runs.append(RunSeries(subject=f"{s:02d}", run_id=f"sub-{s:02d}_run-{r}", data=x.astype(np.float32)))
    return runs


def tiny_options(**overrides):
    """The cpu-smoke preset with an even smaller encoder (one block of width 32)."""
    base = {
        "model_overrides": {"dim": 32, "depth": 1, "heads": 2},
        "progress": False,
        "epochs": 2,
        "batch_size": 8,
    }
    base.update(overrides)
    return load_options("cpu-smoke", overrides=base)


def atlas_kwargs():
    return dict(network_names=NETWORKS, channel_networks=CHANNEL_NETWORKS, channel_names=CHANNEL_NAMES,
                atlas_label="Synth12")


def ddp_options(epochs=2):
    """Options of the DDP comparison: LR high enough (no warm-up) that the weights really move."""
    return tiny_options(epochs=epochs, name="ddp", lr=2e-3, warmup_epochs=0.0)
