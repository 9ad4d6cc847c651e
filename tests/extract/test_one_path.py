"""One preparation path (issue 13, item 1): participant, pretrain and the FC baseline see one series."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ABIDE, run_cli

pytestmark = pytest.mark.skipif(not ABIDE.is_dir(), reason="shared ABIDE data not available")
SUBJECTS = ("50272", "50772")  # TR 2 s and TR 2.5 s (KKI): the second is resampled


@pytest.fixture(scope="module")
def participant_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onepath")
    root = tmp / "ts"
    root.mkdir()
    shutil.copy(ABIDE / "dataset_description.json", root)
    for sub in SUBJECTS:
        shutil.copytree(ABIDE / f"sub-{sub}", root / f"sub-{sub}")
    atlas = tmp / "atlas-CC200"
    shutil.copytree(ABIDE / "atlas-CC200", atlas)
    for p in list(root.rglob("*")) + list(atlas.rglob("*")):
        p.chmod(0o755 if p.is_dir() else 0o644)
    out = tmp / "out"
    code = run_cli(root, out, "participant", "--input-type", "timeseries", "--atlas",
                   atlas / "atlas-CC200_dseg.tsv", "--model", "none")
    assert code == 0
    written = {sub: next((out / f"sub-{sub}" / "func").glob("*_timeseries.tsv")) for sub in SUBJECTS}
    return root, out, written


def _written(path):
    return pd.read_csv(path, sep="\t", na_values=["n/a"]).to_numpy(dtype=np.float64)


def test_pretrain_trains_on_what_the_participant_level_wrote(participant_run):
    from bids_semantoks.pretrain.data import load_runs_from_derivatives

    root, out, written = participant_run
    runs = {r.subject: r for r in load_runs_from_derivatives(out, ["CC200"])}
    assert sorted(runs) == sorted(SUBJECTS)
    for sub, path in written.items():
        np.testing.assert_array_equal(runs[sub].data, _written(path).astype(np.float32))
    # the raw XCP-D-style inputs, prepared by pretrain's default: the same series (up to TSV rounding)
    raw = {r.subject: r for r in load_runs_from_derivatives(root, ["CC200"])}
    for sub, path in written.items():
        ref = _written(path)
        assert raw[sub].data.shape == ref.shape, sub
        np.testing.assert_allclose(raw[sub].data, ref, atol=1e-4, equal_nan=True)


def test_fc_baseline_reads_the_same_series(participant_run):
    from bids_semantoks.extract.signal import zscore
    from bids_semantoks.probe.features import discover, load_timeseries

    root, out, written = participant_run
    inputs = discover(out, root, input_type="timeseries")
    assert inputs.timeseries == {sub: [path] for sub, path in written.items()}
    for sub, path in written.items():
        series, missing, _ = load_timeseries(inputs.timeseries[sub])
        ref = zscore(_written(path))
        ref[:, missing] = np.nan
        np.testing.assert_allclose(series, ref, atol=1e-12, equal_nan=True)


def test_sidecar_says_what_was_applied(participant_run):
    _, _, written = participant_run
    meta = json.loads(written["50772"].with_suffix(".json").read_text())
    assert meta["OriginalRepetitionTime"] == 2.5 and meta["HighPass"] == 0.01 and meta["LowPass"] == 0.1
    assert meta["ModelReady"] is True and meta["ContiguousSegments"] == [[0, meta["NumberOfSamples"]]]
    assert meta["VolumesRemovedUpstream"] is None  # no XCP-D outliers file beside the series
