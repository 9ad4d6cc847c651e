"""Fixtures of the group-level tests."""

from __future__ import annotations

import json

import pytest
from probe_helpers import make_cohort, write_output_dir


@pytest.fixture
def toy_study(tmp_path):
    """(raw_dir, output_dir, cohort): 40 subjects; sub-07 lacks every output."""
    cohort = make_cohort(40)
    raw = tmp_path / "raw"
    raw.mkdir()
    cohort.to_csv(raw / "participants.tsv", sep="\t", index=False)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.10.0"}))
    out = write_output_dir(tmp_path / "out", cohort, skip_embedding=("07",), skip_timeseries=("07",),
                           zero_region={"03": 5})
    return raw, out, cohort
