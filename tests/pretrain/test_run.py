"""run_pretrain end to end, model folder loadable, resume = uninterrupted, atomic checkpoints."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from bids_semantoks.errors import UsageError
from bids_semantoks.model import encoder_features, load_encoder
from bids_semantoks.pretrain import run_pretrain
from bids_semantoks.pretrain import checkpoint as ckpt

from pretrain_helpers import CHANNEL_NETWORKS, atlas_kwargs, synthetic_runs, tiny_options


def test_run_pretrain_then_load_encoder(tmp_path, runs):
    opts = tiny_options(name="synth")
    folder = run_pretrain(opts, runs, tmp_path, **atlas_kwargs())
    assert folder == tmp_path / "models" / "synth"
    for f in ("model.safetensors", "config.json", "training/state.pt", "training/training_log.tsv",
              "training/epoch_log.tsv", "training/loss_curve.png", "training/options.yaml"):
        assert (folder / f).is_file(), f
    enc = load_encoder(folder)
    x = torch.randn(3, len(CHANNEL_NETWORKS), 100)
    feats = encoder_features(enc(x))["cls_avg"]
    assert feats.shape == (3, 64) and torch.isfinite(feats).all()
    log = pd.read_csv(folder / "training/training_log.tsv", sep="\t", na_values="n/a")
    assert list(log["step"]) == list(range(4))  # 16 subjects // 8 = 2 steps x 2 epochs
    for col in ("loss", "loss_cls", "lr", "weight_decay", "momentum", "ttr_weight", "grad_norm"):
        assert log[col].notna().all(), col
    assert log["loss_ttr"].notna().iloc[0]  # TTR curriculum on the first step
    # teacher weights in the folder = teacher in the state
    state = torch.load(folder / "training/state.pt", weights_only=False)
    sd = load_file(folder / "model.safetensors")
    key = next(k for k in sd if k.endswith("cls_token"))
    torch.testing.assert_close(sd[key], state["teacher"]["encoder." + key.removeprefix("encoder.")])


def test_resume_gives_identical_weights(tmp_path):
    runs = synthetic_runs(12)
    kw = atlas_kwargs()
    opts = tiny_options(epochs=3, batch_size=4, name="m")
    full = run_pretrain(opts, runs, tmp_path / "a", **kw)
    part = run_pretrain(opts, runs, tmp_path / "b", **kw, _stop_after_epochs=1)
    first = load_file(part / "model.safetensors")
    resumed = run_pretrain(opts.model_copy(update={"resume": True}), runs, tmp_path / "b", **kw)
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], first[k]) for k in a)  # it did train after the resume
    la = (full / "training/training_log.tsv").read_text()
    lb = (resumed / "training/training_log.tsv").read_text()
    assert la == lb  # same steps, same values, no duplicated rows
    # resuming with other settings is refused
    with pytest.raises(UsageError):
        run_pretrain(opts.model_copy(update={"resume": True, "seed": 5}), runs, tmp_path / "b", **kw)


def test_atomic_save_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "training" / "state.pt"
    ckpt.atomic_torch_save({"epoch": 1}, path)

    def crash(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_torch_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_state(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]


def test_input_checks(tmp_path, runs):
    kw = atlas_kwargs()
    with pytest.raises(UsageError):  # more than the 16 subjects per batch
        run_pretrain(tiny_options(batch_size=32), runs, tmp_path, **kw)
    from bids_semantoks.errors import DataError

    with pytest.raises(DataError):
        run_pretrain(tiny_options(), runs, tmp_path, **{**kw, "channel_names": kw["channel_names"][:-1]})


def test_train_fraction_uses_a_subset(tmp_path):
    runs = synthetic_runs(32)
    folder = run_pretrain(tiny_options(train_fraction=0.5, epochs=1), runs, tmp_path, **atlas_kwargs())
    log = pd.read_csv(folder / "training/training_log.tsv", sep="\t")
    assert len(log) == 2  # 16 of 32 subjects, batch 8
    import json

    meta = json.loads((folder / "config.json").read_text())["metadata"]
    assert meta["n_subjects"] == 16 and meta["atlas_label"] == "Synth12" and meta["epoch"] == 1
    assert np.isfinite(log["loss"]).all()
