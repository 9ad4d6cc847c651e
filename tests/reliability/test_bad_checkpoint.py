"""Bad model files given to ``--model``: refused before any subject is processed, with one line
naming the file; a pickle that would run code is never executed (``weights_only`` loading)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from reliability_helpers import PARITY_CKPT, output_files

ARGS = ("--device", "cpu", "--participant-label", "01")


def _refused(cli, bids, out, model, code=65, *, extra=()):
    r = cli(bids, out, "participant", "--model", model, *ARGS, *extra)
    assert r.code == code, r.err
    assert str(model) in r.message or Path(model).name in r.message, r.message
    assert not [p for p in output_files(out) if "sub-" in str(p.relative_to(out))]
    return r


def test_wrong_layout(cli, tiny_bids, tmp_path):
    path = tmp_path / "other_model.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3, 3)}}, path)
    r = _refused(cli, tiny_bids, tmp_path / "out", path)
    assert "not a Brain-Semantoks checkpoint" in r.message


def test_wrong_shapes(cli, tiny_bids, tmp_path):
    obj = torch.load(PARITY_CKPT, weights_only=True, map_location="cpu")
    state = obj["model_state_dict"]
    key = next(k for k in state if k.startswith("teacher_encoder.") and k.endswith("attn.proj.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 8)
    path = tmp_path / "reshaped.pth"
    torch.save(obj, path)
    r = _refused(cli, tiny_bids, tmp_path / "out", path)
    assert "shape" in r.message


def test_other_atlas_model(cli, tiny_bids, tmp_path):
    """A model trained for another grouping of regions: a usage error (pick the matching atlas)."""
    obj = torch.load(PARITY_CKPT, weights_only=True, map_location="cpu")
    state = obj["model_state_dict"]
    key = next(k for k in state if k.startswith("teacher_encoder.network_tokenizers.schaefer400.0.branches.0.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 1, *state[key].shape[2:])
    path = tmp_path / "other_atlas.pth"
    torch.save(obj, path)
    r = _refused(cli, tiny_bids, tmp_path / "out", path)
    assert "atlas" in r.message


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated(cli, tiny_bids, tmp_path, keep):
    data = PARITY_CKPT.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: int(len(data) * keep)])
    r = _refused(cli, tiny_bids, tmp_path / "out", path)
    assert "truncated" in r.message


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_would_run_code(cli, tiny_bids, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"teacher_encoder.cls_token": _RunsCode(marker)}}, path)
    r = _refused(cli, tiny_bids, tmp_path / "out", path)
    assert "refused" in r.message and "run code" in r.message
    assert not marker.exists()


def test_official_sha256_mismatch(cli, tiny_bids, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    target = models / "brainsemantoks_ckpt_epoch_100.pth"
    payload = PARITY_CKPT.read_bytes()
    target.write_bytes(payload)
    (models / (target.name + ".sha256.json")).write_text(json.dumps(
        {"file": target.name, "sha256": hashlib.sha256(payload + b"x").hexdigest(), "size": len(payload)}))
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--model", "official", "--data-dir", tmp_path / "data", *ARGS)
    assert r.code == 65, r.err
    assert str(target) in r.message and "sha256" in r.message and "delete it" in r.message
    assert not [p for p in output_files(out) if "sub-" in str(p)]
    # the cache was not modified (the user decides)
    assert target.read_bytes() == payload


def test_official_not_cached_offline(cli, tiny_bids, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    r = cli(tiny_bids, out, "participant", "--model", "official", "--data-dir", tmp_path / "data", *ARGS)
    assert r.code == 66, r.err
    assert "brainsemantoks_ckpt_epoch_100.pth" in r.message and "not cached" in r.message


@pytest.mark.parametrize("damage", ["config_json", "weights", "missing_weights"])
def test_bad_model_folder(cli, tiny_bids, tmp_path, damage, default_networks):
    from bids_semantoks.atlas import AtlasTable
    from bids_semantoks.model import Encoder, model_preset, save_encoder
    from tests.conftest import DSEG_TSV

    table = AtlasTable.from_tsv(DSEG_TSV)
    torch.manual_seed(0)
    folder = save_encoder(Encoder(model_preset("tiny", list(table.networks), table.network_index.tolist())),
                          tmp_path / "mymodel")
    if damage == "config_json":
        (folder / "config.json").write_text('{"config": {')
    elif damage == "weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    else:
        (folder / "model.safetensors").unlink()
    r = cli(tiny_bids, tmp_path / "out", "participant", "--model", folder, *ARGS)
    assert r.code in (65, 66), r.err
    assert str(folder) in r.message
    assert not [p for p in output_files(tmp_path / "out") if "sub-" in str(p)]


def test_pretrain_resume_state_that_would_run_code(cli, tiny_bids, tmp_path):
    """``--resume`` reads OUTPUT_DIR/models/<name>/training/state.pt: a planted pickle must not run."""
    out = tmp_path / "out"
    marker = tmp_path / "pwned"
    state = out / "models" / "pretrained" / "training" / "state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "student": _RunsCode(marker)}, state)
    r = cli(tiny_bids, out, "pretrain", "--model-size", "tiny", "--epochs", "1", "--batch-size", "2", "--resume")
    assert not marker.exists()
    assert r.code in (65, 73), r.err
    assert str(state) in r.message and "run code" in r.message
