"""Cleaning, resampling and z-scoring of regional signals, against nilearn and by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_semantoks.extract.signal import clean_signals, read_timeseries_tsv, resample_to_tr, zscore


def test_zscore_nan_aware_population_sd():
    x = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]])
    z = zscore(x)
    np.testing.assert_allclose(z[:, 0], (x[:, 0] - 2) / (np.std(x[:, 0]) + 1e-8))
    assert np.isnan(z[:, 1]).all()


def test_no_cleaning_is_zscore_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 5)) * 3 + 7
    res = clean_signals(x, 2.0, detrend=False, lower_bpf=0, upper_bpf=0, target_tr=2.0)
    np.testing.assert_allclose(res.data, zscore(x), atol=1e-10)
    assert res.n_samples_out == 120 and res.dropped_reason is None


def test_matches_nilearn_clean_without_censoring():
    from nilearn.signal import clean

    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 4)).cumsum(axis=0)
    conf = pd.DataFrame(rng.standard_normal((200, 3)), columns=list("abc"))
    res = clean_signals(x, 2.0, confounds=conf, lower_bpf=0.01, upper_bpf=0.1, target_tr=2.0)
    ref = clean(x, t_r=2.0, confounds=conf.to_numpy(), low_pass=0.1, high_pass=0.01, standardize=None,
                detrend=True, filter="butterworth")
    np.testing.assert_allclose(res.data, zscore(ref), atol=1e-8)
    assert res.confounds_used == ["a", "b", "c"]


def test_resample_keeps_slow_sine_and_grid():
    tr, target = 0.72, 2.0
    t = np.arange(500) * tr
    x = np.sin(2 * np.pi * 0.05 * t)[:, None]
    out, keep = resample_to_tr(x, tr, target, low_pass=0.1)
    t_out = np.arange(out.shape[0]) * target
    assert out.shape[0] == int(np.floor(t[-1] / target)) + 1
    inner = slice(10, -10)
    np.testing.assert_allclose(out[inner, 0], np.sin(2 * np.pi * 0.05 * t_out)[inner], atol=2e-3)
    assert keep.all()


def test_censoring_survives_resampling_and_min_time_drops():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 3))
    retained = np.ones(100, dtype=bool)
    retained[40:45] = False
    res = clean_signals(x, 1.5, sample_mask=np.flatnonzero(retained), lower_bpf=0, upper_bpf=0.1,
                        target_tr=2.0, detrend=True)
    assert res.n_censored_in == 5
    assert res.n_censored_out >= 3  # target samples between censored source volumes
    assert res.data.shape[0] == res.n_samples_out - res.n_censored_out
    dropped = clean_signals(x, 1.5, sample_mask=np.flatnonzero(retained), target_tr=2.0, min_time=1000)
    assert dropped.dropped_reason and "min-time" in dropped.dropped_reason


def test_nan_regions_carried_through():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, 3))
    x[:, 1] = np.nan
    res = clean_signals(x, 2.0, target_tr=2.0)
    assert np.isnan(res.data[:, 1]).all() and np.isfinite(res.data[:, [0, 2]]).all()


def test_read_timeseries_checks_header(tmp_path):
    path = tmp_path / "sub-1_atlas-X_timeseries.tsv"
    pd.DataFrame({"b": [1.0, 2, 3], "a": [0.0, 0, 0]}).to_csv(path, sep="\t", index=False)
    data = read_timeseries_tsv(path, ("a", "b", "c"))
    assert np.isnan(data[:, 0]).all()  # all-zero column = region without data
    np.testing.assert_array_equal(data[:, 1], [1, 2, 3])
    assert np.isnan(data[:, 2]).all()  # absent column
    from bids_semantoks.errors import DataError

    with pytest.raises(DataError, match="not a region of the atlas"):
        read_timeseries_tsv(path, ("a", "c"))


# -- short runs never crash: kept or dropped with the right reason (issue 13, items 2 and 8) ----------
@pytest.mark.parametrize("n_vol", [3, 10, 16, 17, 18, 19, 20, 33, 34, 40])
@pytest.mark.parametrize("tr", [0.72, 2.0])
def test_short_runs_are_kept_or_dropped_never_crash(n_vol, tr):
    from bids_semantoks.extract.signal import filter_min_volumes

    x = np.random.default_rng(n_vol).standard_normal((n_vol, 4))
    res = clean_signals(x, tr, lower_bpf=0.01, upper_bpf=0.1, target_tr=2.0, min_time=0)
    need = filter_min_volumes(tr, 0.01, 0.1)
    assert need == 34  # order-5 band-pass: sosfiltfilt pads 33 samples
    if n_vol < need:
        assert res.dropped_reason
        assert n_vol < 10 or "too few for the band-pass" in res.dropped_reason
        assert res.data.shape[0] == 0
    else:
        assert res.dropped_reason is None and np.isfinite(res.data).all()


@pytest.mark.parametrize("n_vol", [16, 17, 18])
def test_anti_alias_of_short_unfiltered_run(n_vol):
    """16-18 volumes at TR 1 s, no band-pass: the anti-aliasing low-pass decides (needs 19)."""
    x = np.random.default_rng(0).standard_normal((n_vol, 3))
    res = clean_signals(x, 1.0, lower_bpf=0, upper_bpf=0, target_tr=2.0, min_time=0)
    assert res.dropped_reason and "anti-aliasing" in res.dropped_reason
    out, keep = resample_to_tr(x, 1.0, 2.0)  # the public resampler itself never raises
    assert np.isfinite(out).all() and keep.all()


def test_fewer_than_two_samples_is_not_a_min_time_message():
    x = np.random.default_rng(0).standard_normal((60, 3))
    keep = np.r_[0:3]  # three retained volumes at TR 0.5 s: one 2-s sample at most
    res = clean_signals(x, 0.5, sample_mask=keep, lower_bpf=0, upper_bpf=0, target_tr=2.0, min_time=0)
    assert res.dropped_reason and "at least 2 are needed" in res.dropped_reason
    assert "min-time" not in res.dropped_reason


def test_min_time_is_decided_before_filtering():
    """A 20-volume run under the default --min-time is dropped for its duration, not by the filter."""
    x = np.random.default_rng(0).standard_normal((20, 3))
    res = clean_signals(x, 2.0, min_time=100)
    assert res.dropped_reason == "40 s retained, below --min-time 100 s"


def test_high_pass_at_nyquist_is_a_usage_error_and_low_pass_above_is_reported_off():
    from bids_semantoks.errors import UsageError

    x = np.random.default_rng(0).standard_normal((100, 3))
    with pytest.raises(UsageError, match=r"run-1.*--lower-bpf 0.3 Hz is at or above the Nyquist frequency"):
        clean_signals(x, 2.0, lower_bpf=0.3, upper_bpf=0, source="run-1")
    res = clean_signals(x, 6.0, lower_bpf=0.01, upper_bpf=0.1, target_tr=6.0)  # Nyquist 0.083 Hz
    assert res.high_pass == 0.01 and res.low_pass is None


def test_segments_of_censored_output():
    from bids_semantoks.extract.signal import contiguous_segments

    assert contiguous_segments(np.array([1, 1, 0, 0, 1, 1, 1, 0], bool)) == [[0, 2], [2, 5]]
    x = np.random.default_rng(2).standard_normal((120, 3))
    keep = np.setdiff1d(np.arange(120), np.arange(50, 55))
    res = clean_signals(x, 2.0, sample_mask=keep, target_tr=2.0)
    assert res.segments == [[0, 50], [50, 115]]


def test_crop_starts_never_span_two_segments():
    from bids_semantoks.embed import crop_starts
    from bids_semantoks.extract.signal import crop_starts_in_segments

    for n in (100, 101, 180, 437):  # one segment: the crops of an uncensored run
        starts, fallback = crop_starts_in_segments([[0, n]])
        np.testing.assert_array_equal(starts, crop_starts(n))
        assert fallback is None
    segments = [[0, 130], [130, 160], [160, 300]]
    starts, fallback = crop_starts_in_segments(segments)
    assert fallback is None and len(starts) == 8
    for s in starts:
        assert any(a <= s and s + 100 <= b for a, b in segments), s
    starts, fallback = crop_starts_in_segments([[0, 60], [60, 150]])
    assert starts.size == 0 and fallback == [60, 150]
