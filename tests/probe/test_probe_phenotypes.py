"""Phenotype parsing: ids, formats, missing values, task inference, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_semantoks.errors import DataError, MissingInputError, UsageError
from bids_semantoks.probe.phenotypes import (
    clean_column,
    confound_matrix,
    infer_target_type,
    load_phenotypes,
    prepare_target,
    read_table,
)


def _write(path, text):
    path.write_text(text)
    return path


def test_sub_prefix_optional_and_csv(tmp_path):
    tsv = _write(tmp_path / "a.tsv", "participant_id\tdx\nsub-01\tA\nsub-02\tB\n")
    csv = _write(tmp_path / "b.csv", "participant_id,dx\n01,A\n02,B\n")
    other = _write(tmp_path / "c.txt", "participant_id;dx\n01;A\n002;B\n")
    assert list(read_table(tsv).index) == ["01", "02"]
    assert list(read_table(csv).index) == ["01", "02"]
    assert list(read_table(other).index) == ["01", "002"]  # leading zeros are kept: labels are strings


def test_missing_values_and_sentinels(tmp_path):
    path = _write(tmp_path / "p.tsv",
                  "participant_id\tfiq\n01\t100\n02\tn/a\n03\t\n04\t-9999\n05\t-999\n06\t999\n07\t110\n08\tNA\n")
    frame = read_table(path)
    cleaned, missing = clean_column(frame["fiq"], [-9999, -999])
    assert sorted(missing["n/a"]) == ["02", "03", "08"]
    assert sorted(missing["sentinel"]) == ["04", "05"]
    assert cleaned.loc["06"] == 999  # 999 is a value, not a sentinel
    assert cleaned.notna().sum() == 3


def test_duplicated_participant_is_data_error(tmp_path):
    path = _write(tmp_path / "p.tsv", "participant_id\tdx\nsub-01\tA\n01\tB\n")
    with pytest.raises(DataError, match="more than once.*sub-01"):
        read_table(path)


def test_missing_participant_id_column_is_data_error(tmp_path):
    path = _write(tmp_path / "p.tsv", "subject\tdx\n01\tA\n")
    with pytest.raises(DataError, match="participant_id"):
        read_table(path)


def test_missing_file(tmp_path):
    with pytest.raises(MissingInputError):
        read_table(tmp_path / "nope.tsv")


@pytest.mark.parametrize(
    "values, expected",
    [
        (["ASD", "TC", "ASD"], "classification"),
        ([1, 2, 1, 2], "classification"),
        ([1, 2, 3, 4, 5, 3], "classification"),
        ([6.5, 12.1, 30.2, 8.0], "regression"),
        (list(range(20)), "regression"),
    ],
)
def test_infer_target_type(values, expected):
    series = pd.Series(values)
    if not isinstance(values[0], str):
        series = series.astype(float)
    assert infer_target_type(series) == expected


def test_target_with_one_class_is_clear_error():
    frame = pd.DataFrame({"dx": ["A", "A", "A", "n/a"]}, index=["1", "2", "3", "4"])
    with pytest.raises(DataError, match="single class"):
        prepare_target(frame, "dx", None, [-9999])


def test_target_override_and_numeric_classes():
    frame = pd.DataFrame({"dx": ["1", "2", "1", "2", "-9999"], "score": ["1", "2", "3", "4", "5"]},
                         index=list("abcde"))
    target = prepare_target(frame, "dx", None, [-9999])
    assert target.task == "classification" and target.classes == ["1", "2"]
    assert target.missing["sentinel"] == ["e"]
    forced = prepare_target(frame, "score", "regression", [])
    assert forced.task == "regression" and not forced.inferred
    with pytest.raises(DataError, match="not numeric"):
        prepare_target(pd.DataFrame({"dx": list("ABAB")}, index=list("abcd")), "dx", "regression", [])


def test_load_phenotypes_merges_sources(tmp_path):
    raw = tmp_path / "raw"
    (raw / "phenotype").mkdir(parents=True)
    _write(raw / "participants.tsv", "participant_id\tage\tsex\nsub-01\t10\tM\nsub-02\t12\tF\n")
    _write(raw / "phenotype" / "iq.tsv", "participant_id\tfiq\nsub-01\t100\nsub-02\t90\n")
    _write(raw / "phenotype" / "other.tsv", "participant_id\tx\nsub-01\t1\nsub-01\t2\n")  # not needed: ignored
    extra = _write(tmp_path / "extra.csv", "participant_id,dx,age\n01,A,11\n03,B,13\n")
    phen = load_phenotypes(["dx", "fiq", "sex"], raw_dir=raw, phenotypes_file=extra)
    assert set(phen.frame.index) == {"01", "02", "03"}
    assert phen.frame.loc["01", "age"] == "11"  # the later source wins, with a note
    assert any("replace" in n for n in phen.notes)
    assert phen.frame.loc["02", "fiq"] == "90"
    with pytest.raises(UsageError, match="not found"):
        load_phenotypes(["nope"], raw_dir=raw)
    with pytest.raises(MissingInputError):
        load_phenotypes(["dx"])


def test_confound_matrix_one_hot_and_missing():
    frame = pd.DataFrame({"age": ["10", "n/a", "12", "13"], "site": ["a", "b", "c", "a"]},
                         index=list("wxyz"))
    design, missing = confound_matrix(frame, ["age", "site"], [-9999])
    assert list(design.index) == ["w", "y", "z"]
    assert list(design.columns) == ["age", "site_b", "site_c"]
    assert missing == {"confound 'age' missing": ["x"]}
    assert np.allclose(design.loc["y"].to_numpy(), [12, 0, 1])
