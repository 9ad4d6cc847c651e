"""Group level on real ABIDE time series (read-only ../shared) with bad phenotype tables."""

from __future__ import annotations

import pandas as pd
import pytest
from reliability_helpers import output_files

from tests.conftest import ABIDE

SUBJECTS = [p.name[4:] for p in sorted(ABIDE.glob("sub-*"))[:10]]
ATLAS_TSV = ABIDE / "atlas-CC200" / "atlas-CC200_dseg.tsv"
FAST = ("--input-type", "timeseries", "--atlas", ATLAS_TSV, "--features", "fc", "--cv-folds", "2",
        "--cv-repeats", "1", "--n-permutations", "0", "--participant-label", *SUBJECTS)


def _phenotypes(path, **columns):
    frame = pd.DataFrame({"participant_id": [f"sub-{s}" for s in SUBJECTS], **columns})
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def _no_results(out):
    assert not [p for p in output_files(out) if "group" in p.relative_to(out).parts and p.suffix in (".tsv", ".html")]


def test_group_runs(cli, tmp_path):
    pheno = _phenotypes(tmp_path / "pheno.tsv", label=["a", "b"] * 5)
    out = tmp_path / "out"
    r = cli(ABIDE, out, "group", "--target", "label", "--phenotypes", pheno, *FAST)
    assert r.code == 0, r.err


def test_phenotypes_without_participant_id(cli, tmp_path):
    pheno = tmp_path / "pheno.tsv"
    pd.DataFrame({"subject": [f"sub-{s}" for s in SUBJECTS], "label": ["a", "b"] * 5}).to_csv(pheno, sep="\t", index=False)
    out = tmp_path / "out"
    r = cli(ABIDE, out, "group", "--target", "label", "--phenotypes", pheno, *FAST)
    assert r.code == 65, r.err
    assert str(pheno) in r.message and "participant_id" in r.message
    _no_results(out)


def test_phenotypes_duplicated_subject(cli, tmp_path):
    pheno = _phenotypes(tmp_path / "pheno.tsv", label=["a", "b"] * 5)
    frame = pd.read_csv(pheno, sep="\t")
    frame = pd.concat([frame, frame.iloc[[3]]])
    frame.to_csv(pheno, sep="\t", index=False)
    out = tmp_path / "out"
    r = cli(ABIDE, out, "group", "--target", "label", "--phenotypes", pheno, *FAST)
    assert r.code == 65, r.err
    assert str(pheno) in r.message and f"sub-{SUBJECTS[3]}" in r.message
    _no_results(out)


@pytest.mark.parametrize("values, words", [
    (["a"] * 10, "single class"),
    ([None] * 10, "no value for any selected participant"),
])
def test_unusable_target(cli, tmp_path, values, words):
    pheno = _phenotypes(tmp_path / "pheno.tsv", label=values)
    out = tmp_path / "out"
    r = cli(ABIDE, out, "group", "--target", "label", "--target-type", "label=classification",
            "--phenotypes", pheno, *FAST)
    assert r.code == 65, r.err
    assert "'label'" in r.message and words in r.message
    _no_results(out)


def test_target_not_in_any_table(cli, tmp_path):
    pheno = _phenotypes(tmp_path / "pheno.tsv", label=["a", "b"] * 5)
    r = cli(ABIDE, tmp_path / "out", "group", "--target", "labell", "--phenotypes", pheno, *FAST)
    assert r.code == 64, r.err
    assert "labell" in r.message


def test_unknown_participant_label_is_nothing_selected(cli, tmp_path):
    """A label without outputs is a selection that matched nothing (18), naming what exists."""
    pheno = _phenotypes(tmp_path / "pheno.tsv", label=["a", "b"] * 5)
    out = tmp_path / "out"
    args = [a for a in FAST if a not in SUBJECTS and a != "--participant-label"]
    r = cli(ABIDE, out, "group", "--target", "label", "--phenotypes", pheno, *args, "--participant-label", "nosuch99")
    assert r.code == 18, r.err
    assert "sub-nosuch99" in r.message and SUBJECTS[0] in r.message and "--participant-label" in r.message
    _no_results(out)
