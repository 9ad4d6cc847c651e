"""Real data: ABIDE-I CC200 (NYU, UM_1, KKI), FC + logistic regression, leave-site-out.

Literature for FC + linear models on ABIDE with leave-site-out CV is around
0.60-0.67 balanced accuracy; far outside 0.55-0.72 means a bug.
"""

from __future__ import annotations

import pandas as pd

from bids_semantoks.probe import GroupOptions, run_group


def test_abide_fc_leave_site_out(shared, tmp_path):
    abide = shared / "data" / "abide_cc200"
    options = GroupOptions(targets=["dx"], features=["fc"], cv_groups="site", n_jobs=2)
    assert run_group(options, abide, tmp_path / "out", input_type="timeseries") == 0
    group = tmp_path / "out" / "group"
    metrics = pd.read_csv(group / "group_desc-probes_metrics.tsv", sep="\t").set_index("metric")
    bacc = metrics.loc["balanced_accuracy"]
    assert bacc["n_subjects"] == 349 and bacc["cv"] == "leave-one-site-out (3 groups)"
    assert 0.55 <= bacc["mean"] <= 0.72, bacc["mean"]
    side = pd.read_json(group / "group_desc-probes_metrics.json", typ="series")
    assert side["FC"]["masked_regions"] == ["CC200_043"]  # all zero in sub-51062 and sub-51118
    assert (group / "report.html").stat().st_size > 50_000
