"""Fixtures of the group-level tests."""

from __future__ import annotations

import json

import pytest
from probe_helpers import make_cohort, write_output_dir


def build_toy_study(root):
    """(raw_dir, output_dir, cohort): 40 subjects; sub-07 lacks every output; R05 all zero in sub-03."""
    cohort = make_cohort(40)
    raw = root / "raw"
    raw.mkdir(parents=True)
    cohort.to_csv(raw / "participants.tsv", sep="\t", index=False)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.10.0"}))
    out = write_output_dir(root / "out", cohort, skip_embedding=("07",), skip_timeseries=("07",),
                           zero_region={"03": 5})
    return raw, out, cohort


@pytest.fixture
def toy_study(tmp_path):
    return build_toy_study(tmp_path)


@pytest.fixture(scope="module")
def toy_study_shared(tmp_path_factory):
    """Like toy_study, built once per module (read-only use)."""
    return build_toy_study(tmp_path_factory.mktemp("toy"))
