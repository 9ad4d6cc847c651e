"""Schedules at their end points (and the TTR curriculum shape)."""

import numpy as np
import pytest

from bids_semantoks.pretrain.options import PretrainOptions
from bids_semantoks.pretrain.schedules import Schedules, cosine, warmup_cosine


def test_paper_schedules_end_points():
    opts = PretrainOptions()  # paper: batch 512, 100 epochs, warm-up 3
    spe = 76  # 39139 // 512
    s = Schedules.from_options(opts, spe)
    n = 100 * spe
    assert s.n_steps == n
    assert np.isclose(opts.peak_lr, 1.4e-3)
    assert s.lr[0] == 0.0
    assert np.isclose(s.lr[3 * spe], 1.4e-3)  # first step after the warm-up
    assert np.isclose(s.lr[-1], 0.0)
    assert np.all(np.diff(s.lr[: 3 * spe + 1]) > 0) and np.all(np.diff(s.lr[3 * spe:]) <= 1e-15)
    assert np.isclose(s.weight_decay[0], 0.05) and np.isclose(s.weight_decay[-1], 0.3)
    assert np.isclose(s.momentum[0], 0.99) and np.isclose(s.momentum[-1], 1.0)
    assert np.all(np.diff(s.momentum) >= 0)
    # TTR: 0.5 at step 0, cosine to 0 at the end of epoch 5, then 0
    end = 5 * spe
    assert np.isclose(s.ttr_weight[0], 0.5)
    assert np.isclose(s.ttr_weight[end // 2], 0.25, atol=1e-3)
    assert s.ttr_weight[end] == pytest.approx(0.0, abs=1e-12)
    assert np.all(s.ttr_weight[end:] == 0) and np.all(s.ttr_weight[:end] > 0)


def test_cosine_helpers():
    assert cosine(1.0, 3.0, 1).tolist() == [1.0]
    c = cosine(1.0, 3.0, 5)
    assert c[0] == 1.0 and c[-1] == 3.0 and np.isclose(c[2], 2.0)
    w = warmup_cosine(2.0, 0.0, 10, 0)
    assert w[0] == 2.0 and w[-1] == 0.0


def test_lr_scales_with_batch_and_override():
    assert np.isclose(PretrainOptions(batch_size=256).peak_lr, 7e-4)
    assert PretrainOptions(lr=1e-3).peak_lr == 1e-3
