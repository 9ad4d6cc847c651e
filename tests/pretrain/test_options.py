"""Settings: presets, files (YAML/TOML), overrides, validation."""

import pytest

from bids_semantoks.errors import MissingInputError, UsageError
from bids_semantoks.pretrain.options import PRESETS, PretrainOptions, load_options


def test_defaults_are_the_paper():
    o = PretrainOptions()
    assert (o.model_size, o.epochs, o.batch_size, o.warmup_epochs) == ("base", 100, 512, 3.0)
    assert (o.weight_decay_start, o.weight_decay_end, o.clip_grad) == (0.05, 0.3, 1.0)
    assert (o.momentum_start, o.momentum_end, o.coding_rate_eps, o.head_out) == (0.99, 1.0, 0.05, 128)
    assert (o.tok_loss_weight, o.ttr_weight_start, o.ttr_end_fraction) == (0.5, 0.5, 0.05)
    assert o.mask_patches == (3, 4) and o.mask_networks == (5, 6) and o.scale_range == (0.8, 1.2)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_valid(name):
    assert isinstance(load_options(name), PretrainOptions)


def test_merge_order(tmp_path):
    yml = tmp_path / "p.yaml"
    yml.write_text("epochs: 7\nbatch_size: 16\n")
    o = load_options("cpu-smoke", yml, {"epochs": 9, "lr": None})
    assert (o.epochs, o.batch_size, o.model_size) == (9, 16, "tiny")
    toml = tmp_path / "p.toml"
    toml.write_text("[pretrain]\nepochs = 4\nmodel_size = 'small'\n")
    assert load_options(config_file=toml).model_size == "small"


def test_bad_settings(tmp_path):
    with pytest.raises(UsageError):
        load_options(overrides={"epoch": 3})  # typo
    with pytest.raises(UsageError):
        load_options("nope")
    with pytest.raises(UsageError):
        load_options(overrides={"mask_networks": (6, 5)})
    with pytest.raises(UsageError):
        load_options(overrides={"name": "a/b"})
    with pytest.raises(MissingInputError):
        load_options(config_file=tmp_path / "missing.yaml")


def test_roundtrip_file(tmp_path):
    o = load_options("small", overrides={"seed": 3})
    o.to_file(tmp_path / "o.yaml")
    assert load_options(config_file=tmp_path / "o.yaml") == o
