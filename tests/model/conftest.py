"""Fixtures for the model tests: the reference parity fixture read in place from ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

@pytest.fixture(scope="session")
def parity_dir(shared) -> Path:
    """``../shared/fixtures/reference_parity`` (read-only)."""
    return shared / "fixtures" / "reference_parity"


@pytest.fixture(scope="session")
def parity_inputs(parity_dir):
    data = np.load(parity_dir / "inputs.npz")
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def parity_expected(parity_dir):
    data = np.load(parity_dir / "expected.npz")
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def parity_encoder(parity_dir, parity_expected):
    from bids_semantoks.model import load_encoder

    return load_encoder(parity_dir / "checkpoint.pth", network_map=parity_expected["network_map"])


@pytest.fixture
def full_size_checkpoint(tmp_path, parity_dir) -> Path:
    """A random ``.pth`` in the authors' layout at the released size, written with ``torch.save``."""
    path = tmp_path / "brainsemantoks_ckpt_epoch_100.pth"
    torch.save(full_size_state(parity_dir), path)
    return path


def full_size_state(parity_dir: Path, seed: int = 0) -> dict:
    """A random checkpoint in the authors' layout at the released size.

    Built from ``full_model_state_shapes.json`` (every key, shape and dtype). To keep the
    file small, every float parameter is a view into one shared random storage
    (``torch.save`` writes a shared storage once); buffers get their real values.
    """
    table = json.loads((parity_dir / "full_model_state_shapes.json").read_text())["keys"]
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(max(int(np.prod(e["shape"])) for e in table), generator=gen) * 0.05
    state = {}
    for entry in table:
        key, shape = entry["key"], entry["shape"]
        if key.endswith("kernel_norm_initialized"):
            state[key] = torch.tensor(True)
        elif key.endswith("slconv.multiplier"):
            state[key] = torch.full(shape, 2.0)
        elif key.endswith("slconv.kernel_norm"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("temporal_pos_embedding"):
            from bids_semantoks.model.layers import sincos_positions

            state[key] = sincos_positions(*shape)
        else:
            state[key] = pool[: int(np.prod(shape))].view(shape)
    return {"epoch": 99, "model_state_dict": state, "loss": None, "config": {"model": {"heads": 0}}}
