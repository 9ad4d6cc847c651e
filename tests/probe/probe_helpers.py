"""Helpers of the group-level tests: small synthetic OUTPUT_DIRs written per CONTRACTS.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

DIM = 8  # embedding half-width: features avg_0000..avg_0007, cls_0000..cls_0007
N_REGIONS = 10
ATLAS = "Toy"


def feature_names(dim: int = DIM) -> list[str]:
    return [f"avg_{i:04d}" for i in range(dim)] + [f"cls_{i:04d}" for i in range(dim)]


def region_names(n: int = N_REGIONS) -> list[str]:
    return [f"R{i:02d}" for i in range(n)]


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")


def make_cohort(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """participants.tsv content: dx (A/B balanced), age, sex, site."""
    rng = np.random.default_rng(seed)
    labels = [f"{i:02d}" for i in range(1, n + 1)]
    dx = np.array(["A", "B"] * (n // 2) + ["A"] * (n % 2))
    rng.shuffle(dx)
    return pd.DataFrame({
        "participant_id": ["sub-" + lab for lab in labels],
        "dx": dx,
        "age": np.round(rng.uniform(8, 40, n), 1),
        "sex": rng.choice(["M", "F"], n),
        "site": np.array(["S1", "S2", "S3"])[np.arange(n) % 3],
    })


def write_output_dir(
    root: Path,
    cohort: pd.DataFrame,
    *,
    signal: float = 2.0,
    n_crops: int = 4,
    n_volumes: int = 120,
    skip_embedding: tuple[str, ...] = (),
    skip_timeseries: tuple[str, ...] = (),
    zero_region: dict[str, int] | None = None,
    model: str = "official",
    seed: int = 1,
) -> Path:
    """Write participant-level outputs per CONTRACTS.md.

    Class B subjects have embeddings shifted by ``signal`` on the first
    features, and time series in which regions 0 and 1 share a common signal
    (higher connectivity), so both feature sets carry the dx label.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "toy", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bids_semantoks"}]}))
    cols = feature_names()
    for _, row in cohort.iterrows():
        sub = row["participant_id"]
        func = root / sub / "func"
        positive = row["dx"] == "B"
        if sub[4:] not in skip_embedding:
            base = rng.standard_normal(len(cols))
            if positive:
                base[:4] += signal
            crops = base + 0.3 * rng.standard_normal((n_crops, len(cols)))
            frame = pd.DataFrame(crops, columns=cols)
            frame.insert(0, "onset", np.arange(n_crops) * 10.0)
            frame.insert(0, "crop", np.arange(n_crops))
            _write_tsv(frame, func / f"{sub}_task-rest_atlas-{ATLAS}_desc-{model}_embedding.tsv")
            mean = pd.DataFrame([crops.mean(axis=0)], columns=cols)
            mean.insert(0, "n_crops", n_crops)
            _write_tsv(mean, func / f"{sub}_atlas-{ATLAS}_desc-{model}_embedding.tsv")
            (func / f"{sub}_atlas-{ATLAS}_desc-{model}_embedding.json").write_text(
                json.dumps({"Model": model, "ModelVersion": "test"}))
        if sub[4:] not in skip_timeseries:
            ts = rng.standard_normal((n_volumes, N_REGIONS))
            shared = rng.standard_normal(n_volumes)
            ts[:, 0] += (1.5 if positive else 0.2) * shared
            ts[:, 1] += (1.5 if positive else 0.2) * shared
            ts = (ts - ts.mean(0)) / ts.std(0)
            frame = pd.DataFrame(ts, columns=region_names())
            if zero_region and sub[4:] in zero_region:
                frame.iloc[:, zero_region[sub[4:]]] = 0.0
            _write_tsv(frame, func / f"{sub}_task-rest_atlas-{ATLAS}_desc-simple_timeseries.tsv")
            (func / f"{sub}_task-rest_atlas-{ATLAS}_desc-simple_timeseries.json").write_text(
                json.dumps({"SamplingFrequency": 0.5, "RepetitionTime": 2.0}))
    return root


