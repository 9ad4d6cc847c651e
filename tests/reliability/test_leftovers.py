"""What a killed job leaves behind, planted deterministically (test_kill.py finds them at random):
the rerun must clean or redo it and end with the outputs of an uninterrupted run."""

from __future__ import annotations

from reliability_helpers import data_outputs, invalid_outputs

M = ("--model", "none", "--participant-label", "01")


def test_partial_pybids_database_is_rebuilt(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    assert cli(tiny_bids, out, "participant", *M).code == 0
    expected = data_outputs(out)
    (db,) = (out / "work" / "bids_db").iterdir()
    (db / ".complete").unlink()  # as if killed while indexing
    (db / "layout_index.sqlite").write_bytes(b"")
    for p in (out / "sub-01" / "func").iterdir():
        p.unlink()
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 0, r.err
    assert data_outputs(out) == expected
    assert (db / ".complete").is_file()


def test_temporary_files_of_a_killed_job_are_removed(cli, tiny_bids, tmp_path):
    out = tmp_path / "out"
    assert cli(tiny_bids, out, "participant", *M).code == 0
    planted = [out / ".dataset_description.json.abc123.tmp", out / "logs" / ".CITATION.md.x1.tmp",
               out / "sub-01" / "func" / ".sub-01_task-rest_timeseries.tsv.k9.tmp",
               out / "sub-01" / "log" / ".bids_semantoks_participant.json.q.tmp"]
    for p in planted:
        p.write_text("half")
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 0, r.err
    assert [p for p in planted if p.exists()] == []
    assert invalid_outputs(out) == []


def test_orphan_timeseries_without_sidecar_is_redone(cli, tiny_bids, tmp_path):
    """Killed between the TSV and its JSON: the pair is not current, the rerun writes both."""
    out = tmp_path / "out"
    assert cli(tiny_bids, out, "participant", *M).code == 0
    expected = data_outputs(out)
    side = next((out / "sub-01" / "func").glob("*_timeseries.json"))
    side.unlink()
    r = cli(tiny_bids, out, "participant", *M)
    assert r.code == 0, r.err
    assert data_outputs(out) == expected
