"""Views, augmentations and masks: shapes, ratios, determinism, global-batch slicing."""

import numpy as np
import torch

from bids_semantoks.pretrain.augment import augment_views, mask_counts, sample_masks, sample_views
from bids_semantoks.pretrain.data import PretrainData, RunSeries
from bids_semantoks.pretrain.options import PretrainOptions


def _data(lengths=(180, 120, 90, 300), channels=12):
    rng = np.random.default_rng(0)
    runs = []
    for i, length in enumerate(lengths):
        x = rng.normal(size=(length, channels)).astype(np.float32)
        x[:, 0] = 1 + np.arange(length) + 1000 * i  # channel 0 encodes (run, time), never 0
        runs.append(RunSeries(subject=f"s{i % 3}", run_id=f"r{i}", data=x))
    return PretrainData(runs, dtype=torch.float32)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_packing_no_padding_and_tables():
    d = _data()
    assert d.series.shape == (180 + 120 + 90 + 300, 12)
    assert d.subjects == ["s0", "s1", "s2"]
    assert d.subject_n_runs.tolist() == [2, 1, 1]  # s0 has runs r0 and r3


def test_views_are_contiguous_crops_of_one_run():
    d = _data()
    subjects = torch.tensor([0, 1, 2, 0, 2])
    x = sample_views(d, subjects, 2, 100, _gen())
    assert x.shape == (2, 5, 12, 100)
    tcode = x[:, :, 0, :].numpy()  # 1 + time + 1000 * run; 0 after the end of a short run
    for b in range(5):
        runs = set()
        for v in range(2):
            row = tcode[v, b][tcode[v, b] != 0]
            runs |= set((row // 1000).astype(int).tolist())
            assert len(row) == 100 or row[0] % 1000 == 1  # a short run starts at 0
            assert np.all(np.diff(row) == 1)  # contiguous
        assert len(runs) == 1  # both views come from the same run
    # the 90-TR run (subject s2) is zero-padded at the end
    s2 = x[:, 2, 0, :]
    assert torch.all(s2[:, 90:] == 0) and torch.all(s2[:, :90] != 0)


def test_global_batch_slicing_equals_full_batch():
    d = _data()
    opts = PretrainOptions()
    subjects = torch.tensor([0, 1, 2, 0])
    full = augment_views(sample_views(d, subjects, 2, 100, _gen(5)), opts, _gen(6), 4)
    half = augment_views(sample_views(d, subjects, 2, 100, _gen(5), slice(2, 4)), opts, _gen(6), 4, slice(2, 4))
    torch.testing.assert_close(full[:, 2:4], half)
    m_full = sample_masks(2, 4, 9, 5, opts, _gen(7))
    m_half = sample_masks(2, 4, 9, 5, opts, _gen(7), slice(2, 4))
    assert torch.equal(m_full[:, 2:4], m_half)


def test_augmentation_ranges():
    opts = PretrainOptions(noise_sd=0.0, scale_range=(1.0, 1.0))
    x = torch.ones(2, 400, 200, 100)
    y = augment_views(x, opts, _gen(1), 400)
    zero_regions = (y == 0).all(-1).float().sum(-1)  # [V, B]
    assert zero_regions.min() >= 1 and zero_regions.max() <= 20  # <= 10 % of 200
    zero_time = (y == 0).all(-2).float().sum(-1)
    assert zero_time.min() >= 1 and zero_time.max() <= 30
    assert abs(zero_time.mean().item() - 15) < 2  # E[floor(U(0,30))] ~ 14.5
    opts = PretrainOptions()
    y = augment_views(torch.zeros(2, 64, 20, 100), opts, _gen(2), 64)
    assert abs(y.std().item() - 0.1) < 0.005


def test_mask_shapes_and_ratios():
    opts = PretrainOptions()
    m = sample_masks(2, 4000, 9, 5, opts, _gen(3))
    assert m.shape == (2, 4000, 9, 5) and m.dtype == torch.bool
    per_net = m.all(-1)  # whole networks masked
    per_patch = m.all(-2)  # whole patches (all networks) masked
    temporal = per_patch.any(-1) & ~per_net.any(-1)
    network = per_net.any(-1) & ~per_patch.any(-1)
    assert torch.all(temporal ^ network)  # exactly one kind per mask
    assert abs(temporal.float().mean().item() - 0.5) < 0.03
    k_t = per_patch.sum(-1)[temporal]
    assert set(k_t.unique().tolist()) == {3, 4}
    assert abs((k_t == 3).float().mean().item() - 0.5) < 0.04
    # temporal masks are contiguous
    pp = per_patch[temporal].int()
    assert torch.all((pp.diff(dim=-1) != 0).sum(-1) <= 2)
    k_n = per_net.sum(-1)[network]
    assert set(k_n.unique().tolist()) == {5, 6}
    # every network equally likely
    freq = per_net[network].float().mean(0)
    assert torch.all((freq - 5.5 / 9).abs() < 0.04)
    # mask ratio: E = 0.5 * 3.5/5 + 0.5 * 5.5/9 = 0.6556
    assert abs(m.float().mean().item() - (0.5 * 3.5 / 5 + 0.5 * 5.5 / 9)) < 0.02


def test_mask_counts_scale_to_other_atlases():
    opts = PretrainOptions()
    assert mask_counts(opts, 9, 5) == ((3, 4), (5, 6))
    assert mask_counts(opts, 18, 5)[1] == (10, 12)
    assert mask_counts(opts, 3, 5)[1] == (2, 2)
    assert mask_counts(opts, 2, 5)[1] == (1, 1)
    m = sample_masks(2, 50, 1, 5, opts, _gen(0))
    assert torch.all(m.all(-2).any(-1))  # one network: temporal masks only
