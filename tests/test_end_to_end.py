"""The three levels chained through the CLI: pretrain -> participant --model -> group."""

from __future__ import annotations

import json

import pandas as pd

from tests.conftest import run_cli


def test_pretrain_then_participant_then_group(make_fmriprep, tmp_path):
    bids = make_fmriprep(subjects=("01", "02", "03", "04", "05", "06"), voxel_mm=8.0, n_vols=130, tr=2.0)
    out = tmp_path / "out"
    assert run_cli(bids, out, "pretrain", "--model-size", "tiny", "--epochs", "2", "--batch-size", "4",
                   "--model-name", "mine", "--random-seed", "1") == 0
    model = out / "models" / "mine"
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    log = pd.read_csv(model / "training" / "training_log.tsv", sep="\t")
    assert len(log) >= 2 and log["loss"].notna().all() and {"lr", "weight_decay", "momentum", "ttr_weight", "loss_tok", "loss_ttr"} <= set(log.columns)
    assert run_cli(bids, out, "participant", "--model", model) == 0
    means = sorted(out.glob("sub-*/func/sub-??_atlas-*_desc-mine_embedding.tsv"))
    assert len(means) == 6
    meta = json.loads(means[0].with_suffix(".json").read_text())
    assert meta["Model"] == "mine" and meta["ModelIsRandomDemo"] is False
    assert run_cli(bids, out, "group", "--target", "age", "--target", "group", "--model-label", "mine",
                   "--cv-folds", "2", "--cv-repeats", "1") == 0
    metrics = pd.read_csv(out / "group" / "group_desc-probes_metrics.tsv", sep="\t")
    assert set(metrics["features"]) == {"semantoks", "fc"}
    assert set(metrics["target"]) == {"age", "group"}
    assert (out / "group" / "report.html").stat().st_size > 10_000
