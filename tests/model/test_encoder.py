"""Encoder behaviour: shapes for other atlases, masking, determinism, speed, input checks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from bids_semantoks.atlas import AtlasTable
from bids_semantoks.model import Encoder, EncoderConfig, encoder_features, model_preset

CC200_SIZES = [28, 21, 14, 22, 8, 23, 47, 19, 18]


@pytest.fixture(scope="module")
def cc200(shared) -> AtlasTable:
    return AtlasTable.from_tsv(shared / "data" / "abide_cc200" / "atlas-CC200" / "atlas-CC200_dseg.tsv")


def _crops(b, c, seed=0):
    return torch.randn(b, c, 100, generator=torch.Generator().manual_seed(seed))


def test_user_atlas_with_other_network_sizes(cc200):
    assert cc200.n_regions == 200 and sorted(cc200.network_sizes) == sorted(CC200_SIZES)
    torch.manual_seed(0)
    enc = Encoder(model_preset("small", list(cc200.networks), cc200.network_index.tolist())).eval()
    assert enc.config.network_sizes == list(cc200.network_sizes)
    for net, r in zip(enc.tokenizer.nets, cc200.network_sizes):
        assert net.dense.weight.shape == (96, r, 3)
        assert net.proj.weight.shape == (96, -(-96 // r) * r)
    x = _crops(3, 200)
    with torch.inference_mode():
        tokens = enc(x)
        assert tokens.shape == (3, 1 + 9 * 5, 192)
        # channels of a network are gathered by index even when networks interleave
        assert torch.allclose(enc.tokenizer(x), enc.tokenizer.forward_reference(x), atol=1e-5, rtol=0)


def test_interleaved_channels_follow_their_network():
    torch.manual_seed(0)
    grouped = Encoder(model_preset("tiny", ["a", "b"], [0, 0, 0, 1, 1])).eval()
    mixed = Encoder(model_preset("tiny", ["a", "b"], [1, 0, 1, 0, 0])).eval()
    mixed.load_state_dict(grouped.state_dict())
    x = _crops(2, 5)
    with torch.inference_mode():
        assert torch.allclose(grouped(x), mixed(x[:, [3, 0, 4, 1, 2]]), atol=1e-6)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_fast_tokenizer_equals_reference(default_networks, size):
    torch.manual_seed(1)
    enc = Encoder(model_preset(size, [f"n{i}" for i in range(9)], default_networks.tolist())).eval()
    x = _crops(4, 457)
    with torch.inference_mode():
        fast, ref = enc.tokenizer(x), enc.tokenizer.forward_reference(x)
    assert float((fast - ref).abs().max()) <= 1e-5


def test_masked_networks_use_the_mask_embedding(default_networks):
    """With no blocks, a masked token is exactly LayerNorm(mask embedding + positions)."""
    torch.manual_seed(2)
    cfg = model_preset("tiny", [f"n{i}" for i in range(9)], default_networks.tolist()).model_copy(update={"depth": 0})
    enc = Encoder(cfg).eval()
    mask = torch.zeros(2, 9, 5, dtype=torch.bool)
    mask[0, [1, 4]] = True
    x = _crops(2, 457)
    with torch.inference_mode():
        out = enc(x, mask)[:, 1:].reshape(2, 9, 5, -1)
        want = enc.norm(enc.mask_token + enc.network_embed[1][None] + enc.time_embed)
        assert torch.allclose(out[0, 1], want, atol=1e-6)
        # masked networks ignore their input channels entirely
        x2 = x.clone()
        x2[0, default_networks == 4] = 100.0
        assert torch.equal(enc(x2, mask)[0], enc(x, mask)[0])
        assert not torch.equal(enc(x2)[0], enc(x)[0])


def test_cpu_forward_is_deterministic(default_networks):
    torch.manual_seed(3)
    enc = Encoder(model_preset("small", [f"n{i}" for i in range(9)], default_networks.tolist())).eval()
    x = _crops(4, 457)
    with torch.inference_mode():
        assert torch.equal(enc(x), enc(x))


def test_tiny_forward_is_fast(default_networks):
    """Target well under 0.1 s (about 0.01-0.02 s unloaded); the bound leaves room for a busy CI machine."""
    torch.manual_seed(4)
    enc = Encoder(model_preset("tiny", [f"n{i}" for i in range(9)], default_networks.tolist())).eval()
    x = _crops(8, 457)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(10):
            t0 = time.perf_counter()
            enc(x)
            best = min(best, time.perf_counter() - t0)
    print(f"tiny forward, 8 crops: {best:.4f} s")
    assert best < 0.25, f"tiny forward of 8 crops took {best:.3f} s"


def test_features_and_embed_crops(default_networks):
    torch.manual_seed(5)
    enc = Encoder(model_preset("tiny", [f"n{i}" for i in range(9)], default_networks.tolist())).eval()
    x = _crops(5, 457)
    mask = np.zeros((5, 9, 5), dtype=bool)
    mask[2, 0] = True
    with torch.inference_mode():
        tokens = enc(x, torch.from_numpy(mask))
    feats = encoder_features(tokens)
    assert feats["cls"].shape == feats["avg"].shape == (5, 64) and feats["cls_avg"].shape == (5, 128)
    emb = enc.embed_crops(x.numpy(), mask, batch_size=2)
    assert emb.dtype == np.float32 and np.allclose(emb, feats["cls_avg"].numpy(), atol=1e-6)


def test_training_gradients_reach_every_parameter(default_networks):
    torch.manual_seed(6)
    enc = Encoder(model_preset("tiny", [f"n{i}" for i in range(9)], default_networks.tolist())).train()
    mask = torch.zeros(2, 9, 5, dtype=torch.bool)
    mask[0, 0] = True
    enc(_crops(2, 457), mask).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_bad_inputs_are_rejected(default_networks):
    enc = Encoder(model_preset("tiny", [f"n{i}" for i in range(9)], default_networks.tolist())).eval()
    with pytest.raises(ValueError, match=r"\(B, 457, 100\)"):
        enc(torch.zeros(1, 456, 100))
    with pytest.raises(ValueError, match="mask"):
        enc(torch.zeros(1, 457, 100), torch.zeros(1, 9, 4, dtype=torch.bool))


def test_config_validation():
    with pytest.raises(ValidationError, match="no channel"):
        EncoderConfig(network_names=["a", "b"], channel_networks=[0, 0], dim=64, depth=1, heads=2)
    with pytest.raises(ValidationError, match="outside"):
        EncoderConfig(network_names=["a"], channel_networks=[0, 1], dim=64, depth=1, heads=2)
    with pytest.raises(ValidationError, match="divisible"):
        EncoderConfig(network_names=["a"], channel_networks=[0], dim=64, depth=1, heads=3)
    with pytest.raises(ValueError, match="unknown model size"):
        model_preset("huge", ["a"], [0])
    base = model_preset("base", ["a"], [0])
    assert (base.dim, base.depth, base.heads, base.mlp_hidden) == (768, 8, 12, 3072)


def test_fast_tokenizer_gradients_equal_reference(default_networks):
    """Pre-training back-propagates through the default (Toeplitz / GEMM) path: its
    parameter gradients must equal those of the literal per-network transcription."""
    torch.manual_seed(2)
    enc = Encoder(model_preset("tiny", [f"n{i}" for i in range(9)], default_networks.tolist()))
    x = _crops(3, 457)
    target = torch.randn(3, 9, 5, enc.config.dim)
    grads = []
    for fn in (enc.tokenizer.forward, enc.tokenizer.forward_reference):
        enc.zero_grad()
        (fn(x) * target).sum().backward()
        grads.append({k: p.grad.clone() for k, p in enc.tokenizer.named_parameters()})
    fast, ref = grads
    assert fast.keys() == ref.keys() and any(k.endswith("pieces.0") for k in fast)
    for k in ref:
        assert torch.allclose(fast[k], ref[k], atol=1e-4, rtol=1e-4), k


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_linear_fast_path_matches_plain_linear(activation):
    from bids_semantoks.model import layers

    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 200)
    x = torch.randn(3, 46, 96)
    with torch.no_grad():
        plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
        if activation == "gelu":
            plain = torch.nn.functional.gelu(plain)
    with torch.inference_mode():
        fast = layers.linear(x, layer.weight, layer.bias, activation)
    assert fast.shape == plain.shape
    assert float((fast - plain).abs().max()) <= 1e-5
    # with autograd the plain path runs (bit-identical) and gradients flow
    xg = x.clone().requires_grad_(True)
    out = layers.linear(xg, layer.weight, layer.bias, activation)
    assert torch.equal(out.detach(), plain)
    out.sum().backward()
    assert xg.grad is not None and layer.weight.grad is not None
    if layers._ONEDNN_LINEAR is not None:  # the fused op really is what inference calls
        with torch.inference_mode():
            direct = layers._ONEDNN_LINEAR(x, layer.weight, layer.bias, activation, [],
                                           "none" if activation == "gelu" else "")
            assert torch.equal(layers.linear(x, layer.weight, layer.bias, activation), direct)


def test_linear_falls_back_when_onednn_refuses(monkeypatch):
    from bids_semantoks.model import layers

    def refuse(*args):
        raise RuntimeError("primitive not implemented")

    monkeypatch.setattr(layers, "_ONEDNN_LINEAR", refuse)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16)
    with torch.inference_mode():
        out = layers.linear(x, layer.weight, layer.bias, "gelu")
        want = torch.nn.functional.gelu(torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert torch.equal(out, want)
    assert layers._ONEDNN_LINEAR is None  # disabled for the rest of the process (monkeypatch restores it)


def test_inference_and_training_tokenizer_paths_agree(default_networks):
    """CPU inference takes the GEMM dense branch (unfolded windows, fused GELU); training
    keeps the convolution. Same tokens either way."""
    from bids_semantoks.model import layers

    torch.manual_seed(4)
    enc = Encoder(model_preset("small", [f"n{i}" for i in range(9)], default_networks.tolist()))
    x = _crops(3, 457)
    with torch.inference_mode():
        assert layers.onednn_applies(x, enc.tokenizer.nets[0].dense.weight) == (layers._ONEDNN_LINEAR is not None)
        infer = enc.tokenizer(x)
    assert not layers.onednn_applies(x, enc.tokenizer.nets[0].dense.weight)  # grad enabled, trainable weights
    train = enc.tokenizer(x).detach()
    assert float((infer - train).abs().max()) <= 1e-5
