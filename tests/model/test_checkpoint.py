"""Checkpoint files: the authors' layout at full size, our folder layout, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_semantoks.errors import DataError, MissingInputError
from bids_semantoks.model import (
    Encoder,
    ModelNotAvailable,
    encoder_features,
    load_encoder,
    model_preset,
    save_encoder,
)


def test_full_size_authors_checkpoint_loads_and_runs(full_size_checkpoint, default_networks):
    enc = load_encoder(full_size_checkpoint, network_map=default_networks)
    cfg = enc.config
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.mlp_hidden) == (768, 8, 12, 3072)
    assert cfg.network_sizes == [61, 77, 46, 47, 26, 52, 91, 50, 7]
    used = sum(p.numel() for p in enc.parameters())
    assert used == 58_720_931  # "teacher encoder parameters used in forward" of the fixture README
    x = torch.randn(2, 457, 100, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        tokens = enc(x)
    assert tokens.shape == (2, 46, 768)
    assert encoder_features(tokens)["cls_avg"].shape == (2, 1536)
    assert torch.isfinite(tokens).all()


def _tiny(networks=(0, 0, 1, 1, 1, 2), seed=0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(model_preset("tiny", ["a", "b", "c"], list(networks))).eval()


def test_safetensors_round_trip_identical(tmp_path, parity_encoder, parity_inputs):
    folder = save_encoder(parity_encoder, tmp_path / "model", metadata={"source": "parity fixture"})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    doc = json.loads((folder / "config.json").read_text())
    assert doc["metadata"] == {"source": "parity fixture"} and doc["config"]["dim"] == 192
    loaded = load_encoder(folder)
    x = torch.from_numpy(parity_inputs["x"])
    mask = torch.from_numpy(parity_inputs["mask"])
    with torch.inference_mode():
        assert torch.equal(loaded(x), parity_encoder(x))
        assert torch.equal(loaded(x, mask), parity_encoder(x, mask))
    for a, b in zip(loaded.state_dict().values(), parity_encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_save_replaces_existing_files(tmp_path):
    save_encoder(_tiny(seed=0), tmp_path)
    second = _tiny(seed=1)
    save_encoder(second, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert torch.equal(load_encoder(tmp_path).cls_token, second.cls_token)


class _RunsCode:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"teacher_encoder.x": _RunsCode(marker)}}, path)
    assert not marker.exists()
    with pytest.raises(DataError, match="could run code") as err:
        load_encoder(path, network_map=np.zeros(3, dtype=int))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_truncated_pth_is_a_data_error(tmp_path, parity_dir):
    data = (parity_dir / "checkpoint.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as err:
        load_encoder(path, network_map=np.zeros(457, dtype=int))
    assert str(path) in str(err.value)


def test_truncated_safetensors_is_a_data_error(tmp_path):
    save_encoder(_tiny(), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as err:
        load_encoder(tmp_path)
    assert str(weights) in str(err.value)


def test_wrong_shapes_are_a_data_error(tmp_path, parity_dir, parity_expected):
    ck = torch.load(parity_dir / "checkpoint.pth", weights_only=True)
    key = "teacher_encoder.inter_network_transformer.transformer_blocks.1.attn.proj.weight"
    ck["model_state_dict"][key] = torch.zeros(192, 191)
    path = tmp_path / "bad_shape.pth"
    torch.save(ck, path)
    with pytest.raises(DataError, match="shape") as err:
        load_encoder(path, network_map=parity_expected["network_map"])
    assert str(path) in str(err.value) and "blocks.1.attn.proj.weight" in str(err.value)


def test_config_that_does_not_fit_the_weights(tmp_path):
    save_encoder(_tiny(), tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["config"]["dim"] = 32
    doc["config"]["heads"] = 2
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="shape") as err:
        load_encoder(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(err.value)


def test_wrong_layout_is_a_data_error(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, path)
    with pytest.raises(DataError, match="not a Brain-Semantoks checkpoint") as err:
        load_encoder(path, network_map=np.zeros(457, dtype=int))
    assert str(path) in str(err.value)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"format": "something else"}')
    (tmp_path / "folder" / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="config.json"):
        load_encoder(tmp_path / "folder")


def test_network_map_that_does_not_fit(parity_dir):
    wrong = np.repeat(np.arange(9), [60, 78, 46, 47, 26, 52, 91, 50, 7])
    with pytest.raises(DataError, match="network map"):
        load_encoder(parity_dir / "checkpoint.pth", network_map=wrong)


def test_missing_files_are_model_not_available(tmp_path):
    with pytest.raises(ModelNotAvailable) as err:
        load_encoder(tmp_path / "nope.pth", network_map=np.zeros(3, dtype=int))
    assert isinstance(err.value, MissingInputError) and str(tmp_path / "nope.pth") in str(err.value)
    save_encoder(_tiny(), tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ModelNotAvailable, match="config.json"):
        load_encoder(tmp_path / "m")
