"""Embeddings at participant level: crops, masking of missing networks, outputs, reruns."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from bids_semantoks.embed import crop_starts, embed_series, make_crops
from tests.conftest import PARITY, run_cli


def test_crop_starts_spec_example():
    assert crop_starts(180).tolist() == [0, 11, 22, 34, 45, 57, 68, 80]
    assert crop_starts(100).tolist() == [0]
    assert crop_starts(60).tolist() == [0]
    assert len(crop_starts(103)) == 4  # duplicates removed


def test_short_run_zero_padded():
    data = np.random.default_rng(0).standard_normal((60, 3))
    crops, starts, padded = make_crops(data)
    assert padded and crops.shape == (1, 3, 100)
    np.testing.assert_allclose(crops[0, :, :60], data.T, rtol=1e-6)
    assert (crops[0, :, 60:] == 0).all()


@pytest.fixture(scope="module")
def tiny_encoder(default_networks):
    from bids_semantoks.atlas import AtlasTable
    from bids_semantoks.model import Encoder, model_preset
    from tests.conftest import DSEG_TSV

    table = AtlasTable.from_tsv(DSEG_TSV)
    torch.manual_seed(0)
    enc = Encoder(model_preset("tiny", list(table.networks), table.network_index.tolist())).eval()
    with torch.no_grad():
        enc(torch.zeros(1, 457, 100))
    return enc, table


def test_missing_network_masked_and_deterministic(tiny_encoder):
    enc, table = tiny_encoder
    rng = np.random.default_rng(1)
    data = rng.standard_normal((180, 457))
    data[:, table.network_index == 7] = np.nan  # no subcortex in the data
    data[:, 3] = np.nan  # one missing cortical region
    emb = embed_series(enc, data, table.names, table.networks, table.network_index)
    assert emb.masked_networks == ["Subcortex"]
    assert emb.zero_filled_regions == [table.names[3]]
    assert emb.features.shape == (8, 2 * enc.config.dim)
    again = embed_series(enc, data, table.names, table.networks, table.network_index)
    np.testing.assert_array_equal(emb.features, again.features)
    # the masked forward equals the encoder called with an explicit network mask
    x = torch.from_numpy(make_crops(np.nan_to_num(data))[0])
    mask = torch.zeros(8, 9, 5, dtype=torch.bool)
    mask[:, 7] = True
    from bids_semantoks.model import encoder_features

    with torch.no_grad():
        ref = encoder_features(enc(x, mask=mask))["cls_avg"].numpy()
    np.testing.assert_allclose(emb.features, ref, atol=1e-6)


def test_authors_checkpoint_through_cli(make_fmriprep, tmp_path):
    """The authors' layout (the parity fixture, D=192) embeds a run end to end; reruns are no-ops."""
    bids = make_fmriprep(n_vols=130, tr=2.0, voxel_mm=4.0)
    out = tmp_path / "out"
    ckpt = PARITY / "checkpoint.pth"
    assert run_cli(bids, out, "participant", "--model", ckpt, "--device", "cpu") == 0
    run_tsv = next(out.rglob("*_task-rest_*_desc-checkpoint_embedding.tsv"))
    frame = pd.read_csv(run_tsv, sep="\t")
    assert list(frame.columns[:4]) == ["crop", "onset", "avg_0000", "avg_0001"]
    assert frame.shape == (8, 2 + 384)
    assert frame["onset"].tolist() == [2.0 * s for s in crop_starts(130)]
    meta = json.loads(run_tsv.with_suffix(".json").read_text())
    import hashlib

    assert meta["ModelSha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["EmbeddingDimension"] == 384 and meta["Device"] == "cpu" and meta["Precision"] == "float32"
    assert meta["Sources"][0].startswith("bids::sub-01/func/") and meta["Sources"][0].endswith("_timeseries.tsv")
    mean = pd.read_csv(next(out.glob("sub-01/func/sub-01_atlas-*_desc-checkpoint_embedding.tsv")), sep="\t")
    assert mean["n_crops"].tolist() == [8]
    np.testing.assert_allclose(mean.drop(columns="n_crops").to_numpy()[0],
                               frame.drop(columns=["crop", "onset"]).mean().to_numpy(), rtol=1e-5, atol=1e-6)
    ts = next(out.rglob("*_timeseries.tsv"))
    ts_mtime, emb_mtime = ts.stat().st_mtime_ns, run_tsv.stat().st_mtime_ns
    assert run_cli(bids, out, "participant", "--model", ckpt) == 0
    assert (ts.stat().st_mtime_ns, run_tsv.stat().st_mtime_ns) == (ts_mtime, emb_mtime)


def test_model_change_recomputes_only_embeddings(make_fmriprep, tmp_path, tiny_encoder):
    from bids_semantoks.model import save_encoder

    enc, _ = tiny_encoder
    model_a = save_encoder(enc, tmp_path / "models" / "alpha")
    bids = make_fmriprep(voxel_mm=8.0, n_vols=110)
    out, work = tmp_path / "out", tmp_path / "work"
    assert run_cli(bids, out, "participant", "--model", model_a, "-w", work) == 0
    ts = next(out.rglob("*_timeseries.tsv"))
    mtime = ts.stat().st_mtime_ns
    model_b = save_encoder(enc, tmp_path / "models" / "beta")
    assert run_cli(bids, out, "participant", "--model", model_b, "-w", work) == 0
    assert ts.stat().st_mtime_ns == mtime  # extraction reused
    assert len(list(out.rglob("*_desc-beta_embedding.tsv"))) == 2  # run + subject mean


def test_model_atlas_mismatch_and_missing_model(make_fmriprep, tmp_path, capsys):
    bids = make_fmriprep(voxel_mm=8.0, n_vols=110)
    assert run_cli(bids, tmp_path / "o", "participant", "--model", tmp_path / "nope") == 66
    assert "model not found" in capsys.readouterr().err
    from bids_semantoks.model import Encoder, model_preset, save_encoder

    wrong = save_encoder(Encoder(model_preset("tiny", ["a", "b"], [0] * 100 + [1] * 100)), tmp_path / "wrong")
    assert run_cli(bids, tmp_path / "o2", "participant", "--model", wrong) == 64
    assert "expects 200 regions" in capsys.readouterr().err
    assert not list((tmp_path / "o2").rglob("*_embedding.tsv"))


def test_official_model_missing_is_a_clear_error(make_fmriprep, tmp_path, monkeypatch, capsys):
    """No cached weights and no hub: exit 66, one line naming the cache file, nothing written."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bids = make_fmriprep(voxel_mm=8.0, n_vols=110)
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--data-dir", tmp_path / "empty_cache") == 66
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "brainsemantoks_ckpt_epoch_100.pth" in err[0]
    assert not list(out.rglob("*.tsv")) and not (out / "work").exists()


def test_short_run_through_cli(make_fmriprep, tmp_path):
    """A run shorter than one window: one zero-padded crop, and the sidecar warns."""
    bids = make_fmriprep(voxel_mm=8.0, n_vols=60, tr=2.0)
    out = tmp_path / "out"
    assert run_cli(bids, out, "participant", "--model", PARITY / "checkpoint.pth", "--min-time", "0") == 0
    run_tsv = next(out.rglob("*_task-rest_*_embedding.tsv"))
    assert len(pd.read_csv(run_tsv, sep="\t")) == 1
    meta = json.loads(run_tsv.with_suffix(".json").read_text())
    assert meta["ZeroPadded"] is True and "zero-padded" in meta["Warnings"][0]


def test_crops_never_span_two_contiguous_segments():
    """A series censored into stretches (sidecar ContiguousSegments): every crop lies inside one."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((260, 4))
    segments = [[0, 90], [90, 230], [230, 260]]  # only the middle stretch holds a 100-sample window
    x, starts, padded = make_crops(data, 8, segments=segments)
    assert not padded and len(starts) == 8
    assert all(90 <= s and s + 100 <= 230 for s in starts)
    assert np.array_equal(x[0], data[starts[0]: starts[0] + 100].T.astype(np.float32))
    # one segment: exactly the crops of an uncensored run
    _, plain, _ = make_crops(data, 8)
    _, one, _ = make_crops(data, 8, segments=[[0, 260]])
    assert np.array_equal(plain, one)
    # no stretch a window long: the longest alone, zero-padded, never spliced
    x, starts, padded = make_crops(data, 8, segments=[[0, 60], [60, 150], [150, 230], [230, 260]])
    assert padded and list(starts) == [60]
    assert np.array_equal(x[0, :, :90], data[60:150].T.astype(np.float32)) and not x[0, :, 90:].any()


def test_scrubbed_run_crops_stay_within_stretches(make_fmriprep, tmp_path, tiny_encoder):
    """Through the CLI with scrubbing: the embedding's crop onsets follow the sidecar's stretches."""
    from bids_semantoks.model import save_encoder

    bids = make_fmriprep(voxel_mm=8.0, n_vols=260)
    conf = next(bids.rglob("*_desc-confounds_timeseries.tsv"))
    frame = pd.read_csv(conf, sep="\t")
    frame.loc[[90, 91, 200], "framewise_displacement"] = 3.0  # motion spikes: censored with scrubbing
    frame.to_csv(conf, sep="\t", index=False, na_rep="n/a")
    model = save_encoder(tiny_encoder[0], tmp_path / "models" / "tiny")
    out = tmp_path / "out"
    code = run_cli(bids, out, "participant", "--denoise-strategy", "scrubbing", "--min-time", "0",
                   "--model", model)
    assert code == 0
    ts_meta = json.loads(next(out.rglob("*_timeseries.json")).read_text())
    emb_meta = json.loads(next(out.rglob("*_desc-*_embedding.json")).read_text())
    segs = ts_meta["ContiguousSegments"]
    assert len(segs) > 1
    for onset in emb_meta["CropOnsets"]:
        row = int(round(onset / 2.0))
        assert any(a <= row and row + 100 <= b for a, b in segs), (row, segs)
