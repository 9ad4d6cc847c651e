"""The participant QC page (OUTPUT_DIR/sub-<label>.html): content, robustness, idempotence, rendering."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_semantoks.reports import write_participant_report, write_participant_reports
from bids_semantoks.reports.figures import _segments
from tests.conftest import DSEG_TSV, run_cli

ATLAS = "SchaeferTianBuckner457"
TABLE = pd.read_csv(DSEG_TSV, sep="\t")
NAMES = TABLE["name"].tolist()
LIMBIC = [n for n, net in zip(NAMES, TABLE["network_label"]) if net == "Limbic"]
STEM = f"sub-01_task-rest_space-MNI152NLin2009cAsym_atlas-{ATLAS}"


def _tsv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def _json(data, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def make_outputs(root: Path, *, n_vols=160, fd_spikes=(30, 31, 90), censored_key=None, embedding=True,
                 confounds=True, all_na=False, strategy="scrubbing", session=None):
    """A participant's outputs as the participant level writes them (TSV + JSON), and its input dataset.

    Returns (bids_dir, output_dir). Regions of the Limbic network are n/a (low coverage), so the
    embedding masks that network.
    """
    rng = np.random.default_rng(0)
    bids, out = root / "fmriprep", root / "out"
    ses = f"ses-{session}/" if session else ""
    ent = f"sub-01_{'ses-' + session + '_' if session else ''}task-rest"
    stem = f"{ent}_space-MNI152NLin2009cAsym_atlas-{ATLAS}"
    conf_rel = f"sub-01/{ses}func/{ent}_desc-confounds_timeseries.tsv"
    bold_rel = f"sub-01/{ses}func/{ent}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    _json({"Name": "in", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}, bids / "dataset_description.json")
    fd = np.r_[np.nan, rng.uniform(0.05, 0.2, n_vols - 1)]
    fd[list(fd_spikes)] = 1.2
    if confounds:
        _tsv(pd.DataFrame({"framewise_displacement": fd, "trans_x": rng.standard_normal(n_vols)}), bids / conf_rel)
    _json({"Name": "bids_semantoks derivatives", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
           "DatasetLinks": {"input": bids.resolve().as_uri()}}, out / "dataset_description.json")
    n_samples = 120
    data = rng.standard_normal((n_samples, len(NAMES)))
    coverage = {n: 1.0 for n in NAMES}
    for n in LIMBIC:
        coverage[n] = 0.2
    frame = pd.DataFrame(data, columns=NAMES)
    frame[LIMBIC] = np.nan
    if all_na:
        frame[:] = np.nan
    func = out / "sub-01" / ses / "func"
    ts = func / f"{stem}_desc-{strategy}_timeseries.tsv"
    _tsv(frame, ts)
    side = {
        "SamplingFrequency": 0.5, "RepetitionTime": 2.0, "OriginalRepetitionTime": 1.5,
        "Sources": ["bids:input:" + bold_rel] + (["bids:input:" + conf_rel] if confounds else []),
        "Atlas": ATLAS, "DenoiseStrategy": strategy, "ConfoundsUsed": ["trans_x"], "HighPass": 0.01,
        "LowPass": 0.1, "FDThreshold": 0.5 if strategy == "scrubbing" else None, "NumberOfVolumes": n_vols,
        "VolumesCensored": 7, "NumberOfSamples": n_samples, "MeanFD": float(np.nanmean(fd)),
        "CoverageThreshold": 0.5, "Coverage": coverage, "MissingRegions": [] if not all_na else NAMES,
        "LowCoverageRegions": LIMBIC, "SettingsHash": "abc",
    }
    if censored_key is not None:
        side["CensoredVolumes"] = censored_key
    _json(side, ts.with_suffix(".json"))
    if embedding:
        cols = [f"avg_{i:04d}" for i in range(8)] + [f"cls_{i:04d}" for i in range(8)]
        onsets = [0.0, 70.0, 140.0]
        emb = pd.DataFrame(rng.standard_normal((3, 16)), columns=cols)
        emb.insert(0, "onset", onsets)
        emb.insert(0, "crop", range(3))
        ep = func / f"{stem}_desc-official_embedding.tsv"
        _tsv(emb, ep)
        _json({"Model": "official", "ModelSha256": "f" * 64, "ModelIsRandomDemo": False, "EmbeddingDimension": 16,
               "CropLength": 100, "CropOnsets": onsets, "ZeroPadded": False, "Warnings": [],
               "MaskedNetworks": ["Limbic"], "ZeroFilledRegions": [], "Device": "cpu", "Precision": "float32",
               "Sources": [f"bids::sub-01/{ses}func/{ts.name}"]}, ep.with_suffix(".json"))
        mp = func / f"sub-01_{'ses-' + session + '_' if session else ''}atlas-{ATLAS}_desc-official_embedding.tsv"
        _tsv(emb.drop(columns=["crop", "onset"]).mean().to_frame().T, mp)
        _json({"Model": "official", "NumberOfRuns": 1, "NumberOfCrops": 3, "MaskedNetworks": ["Limbic"]},
              mp.with_suffix(".json"))
    return bids, out


def _figures(html: str) -> list[str]:
    return re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', html)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- content ---------------------------------------------------------------------------------
def test_page_shows_motion_carpet_coverage_crops_and_embedding(tmp_path):
    bids, out = make_outputs(tmp_path)
    before = _snapshot(bids)
    path = write_participant_report(out, "sub-01")  # the label with its prefix works too
    assert path == out / "sub-01.html"
    html = path.read_text()
    figs = _figures(html)
    assert len(figs) == 4  # FD, carpet, coverage, crop similarity
    for fig in figs:
        svg = base64.b64decode(fig).decode()
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    # FD from the confounds file in Sources (resolved through DatasetLinks.input), censoring estimated
    assert f"bids:input:sub-01/func/sub-01_task-rest_desc-confounds_timeseries.tsv" in html
    assert "3 volume(s) with FD above the threshold shaded" in html
    assert "reports 7 censored in all" in html
    # coverage: the Limbic regions are n/a, and the network is flagged as masked in the embedding
    assert f"{len(LIMBIC)} region(s) n/a" in html and LIMBIC[0] in html
    row = re.search(r'<tr class="flag"><td>Limbic</td>.*?</tr>', html, re.S)
    assert row and "yes" in row.group(0), "the masked Limbic network is not flagged"
    assert re.search(r"<td>Vis</td><td class=\"num\">61</td>", html)  # grouped by the atlas table's networks
    # crops, in seconds of the model-ready series and in samples, and the subject mean
    assert re.search(r'<td class="num">70</td>\s*<td class="num">35 - 134</td>', html)
    assert "Subject mean embedding" in html and "ffffffffffffffff..." in html
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert _snapshot(bids) == before  # nothing written into the input dataset


def test_exact_censoring_mask_from_sidecar(tmp_path):
    bids, out = make_outputs(tmp_path, censored_key=[0, 1, 2, 30, 31, 90, 91])
    html = write_participant_report(out, "01").read_text()
    assert "7 censored volume(s) shaded, as listed in the sidecar (CensoredVolumes)" in html
    assert "above the threshold" not in html
    # an index outside the run is ignored (falls back to the threshold) rather than crashing
    _, out2 = make_outputs(tmp_path / "b", censored_key=[5, 9999])
    assert "3 volume(s) with FD above the threshold shaded" in write_participant_report(out2, "01").read_text()


def test_segments_of_censored_volumes():
    mask = np.zeros(10, bool)
    mask[[0, 1, 4, 9]] = True
    assert _segments(mask) == [(0, 2), (4, 5), (9, 10)]
    assert _segments(np.zeros(3, bool)) == []


def test_sessions_are_separate_sections(tmp_path):
    _, out = make_outputs(tmp_path, session="a")
    html = write_participant_report(out, "01").read_text()
    assert "<h2>Session a</h2>" in html and "sub-01/ses-a/func/" in html
    assert "bids:input:sub-01/ses-a/func/sub-01_ses-a_task-rest_desc-confounds_timeseries.tsv" in html


# -- robustness: each case still gives a page -------------------------------------------------
def test_run_without_embedding_or_confounds(tmp_path):
    _, out = make_outputs(tmp_path, embedding=False, confounds=False, strategy="none")
    html = write_participant_report(out, "01").read_text()
    assert "No embedding for this run" in html
    assert "No confounds file in the sidecar" in html
    assert len(_figures(html)) == 2  # carpet and coverage


def test_confounds_missing_on_disk_and_unknown_input(tmp_path):
    bids, out = make_outputs(tmp_path)
    shutil.rmtree(bids)
    html = write_participant_report(out, "01").read_text()
    assert "The input dataset was not found" in html
    assert "Confounds file bids:input:" in html and "not found" in html


def test_zero_runs_and_unprocessed_subject(tmp_path):
    _, out = make_outputs(tmp_path)
    (out / "sub-02" / "log").mkdir(parents=True)
    html = write_participant_report(out, "02").read_text()
    assert "No processed run for this participant" in html and "No time series under sub-02/" in html
    html = write_participant_report(out, "03").read_text()
    assert "has not been processed" in html


def test_all_regions_na(tmp_path):
    _, out = make_outputs(tmp_path, all_na=True)
    html = write_participant_report(out, "01").read_text()
    assert f"{len(NAMES)} of {len(NAMES)}" in html and f"{len(NAMES)} region(s) n/a" in html


def test_damaged_files_become_notes(tmp_path):
    _, out = make_outputs(tmp_path)
    func = out / "sub-01" / "func"
    (func / f"{STEM}_desc-scrubbing_timeseries.json").write_text("{not json")
    (func / f"{STEM}_desc-official_embedding.tsv").write_bytes(b"\xff\xfe\x00garbage")
    html = write_participant_report(out, "01").read_text()
    assert "Time-series sidecar" in html and "unreadable (JSONDecodeError)" in html
    assert "Embedding " in html and "unreadable" in html
    assert len(_figures(html)) >= 1  # the carpet is still drawn


def test_sidecars_with_wrong_types_and_text_in_tables(tmp_path):
    _, out = make_outputs(tmp_path)
    func = out / "sub-01" / "func"
    ts_side = func / f"{STEM}_desc-scrubbing_timeseries.json"
    _json({**json.loads(ts_side.read_text()), "Coverage": [1, 2], "MissingRegions": "R1", "Sources": "x",
           "NumberOfVolumes": "many", "CensoredVolumes": [True, 2.5], "FDThreshold": "high"}, ts_side)
    emb = func / f"{STEM}_desc-official_embedding.tsv"
    _json({"MaskedNetworks": "Limbic", "CropOnsets": "0,70", "CropLength": None, "Warnings": {"a": 1}},
          emb.with_suffix(".json"))
    emb.write_text(emb.read_text().replace("\n1\t", "\n1\tabc\t", 1))  # a ragged row: unreadable
    ts = func / f"{STEM}_desc-scrubbing_timeseries.tsv"
    lines = ts.read_text().splitlines()
    lines[2] = "nope" + lines[2][lines[2].index("\t"):]  # text where a number should be
    ts.write_text("\n".join(lines) + "\n")
    html = write_participant_report(out, "01").read_text()
    assert "No confounds file in the sidecar" in html  # Sources was not a list
    assert "Embedding " in html and "unreadable (ParserError" in html
    assert len(_figures(html)) == 1  # the carpet; no coverage (not a mapping), no similarity
    # and when the time series itself is unreadable, the sidecar's lists still say what became n/a
    lines[3] += "\t1\t2"  # a row longer than the header
    ts.write_text("\n".join(lines) + "\n")
    _json({**json.loads(ts_side.read_text()), "Coverage": {n: 1.0 for n in NAMES}, "MissingRegions": LIMBIC},
          ts_side)
    html = write_participant_report(out, "01").read_text()
    assert "Time series " in html and "unreadable" in html and f"{len(LIMBIC)} of {len(NAMES)}" in html


def test_regions_outside_any_known_atlas(tmp_path):
    """The group-level toy outputs: minimal sidecars, regions R000.. that no atlas table knows."""
    out = tmp_path / "out"
    func = out / "sub-01" / "func"
    _tsv(pd.DataFrame(np.random.default_rng(1).standard_normal((50, 6)), columns=[f"R{i}" for i in range(6)]),
         func / "sub-01_task-rest_atlas-toy_desc-simple_timeseries.tsv")
    _json({"RepetitionTime": 2.0}, func / "sub-01_task-rest_atlas-toy_desc-simple_timeseries.json")
    html = write_participant_report(out, "01").read_text()
    assert "regions are not grouped by network" in html and "<td>all regions</td>" in html
    assert "The input dataset was not found" not in html  # no confounds to look for: no alarm about it


def test_a_failing_page_is_one_warning(tmp_path, caplog):
    _, out = make_outputs(tmp_path)
    (out / "sub-01.html").mkdir()  # cannot be replaced by a file
    with caplog.at_level(logging.WARNING, logger="bids_semantoks"):
        assert write_participant_reports(out, ["01"]) == []
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [f"sub-01: QC page not written (Is a directory: {out / 'sub-01.html'})"]


# -- idempotence ---------------------------------------------------------------------------------
def test_rerun_is_byte_identical_and_untouched(tmp_path):
    _, out = make_outputs(tmp_path, censored_key=[3, 4])
    path = write_participant_report(out, "01")
    first, mtime = path.read_bytes(), path.stat().st_mtime_ns
    os.utime(path, ns=(mtime - 10**9, mtime - 10**9))
    write_participant_report(out, "01")
    assert path.read_bytes() == first
    assert path.stat().st_mtime_ns == mtime - 10**9  # not rewritten
    assert not list(out.glob(".sub-01.html.*"))  # no temporary left behind
    # the same outputs elsewhere give the same bytes (no timestamps, no random ids)
    other = tmp_path / "copy"
    shutil.copytree(tmp_path / "out", other)
    shutil.copytree(tmp_path / "fmriprep", tmp_path / "copy_in")
    _json({**json.loads((other / "dataset_description.json").read_text()),
           "DatasetLinks": {"input": (tmp_path / "copy_in").as_uri()}}, other / "dataset_description.json")
    assert write_participant_report(other, "01").read_bytes() == first
    # changed outputs change the page
    side = other / "sub-01" / "func" / f"{STEM}_desc-scrubbing_timeseries.json"
    _json({**json.loads(side.read_text()), "CensoredVolumes": [3, 4, 5]}, side)
    assert write_participant_report(other, "01").read_bytes() != first


# -- the participant level writes it -------------------------------------------------------------
def test_participant_cli_writes_the_page(tmp_path, default_networks):
    """A run with head-motion spikes (one stretch between them is long enough for several crops) and the
    Limbic regions outside the brain mask, through the CLI."""
    import nibabel as nib

    from bids_semantoks.atlas import AtlasTable
    from bids_semantoks.demo import resample_atlas, write_run
    from bids_semantoks.demo_run import make_demo_model
    from tests.conftest import DSEG

    bids = tmp_path / "fmriprep"
    _json({"Name": "in", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}, bids / "dataset_description.json")
    atlas = resample_atlas(nib.load(str(DSEG["MNI152NLin2009cAsym"])), 6.0)
    paths = write_run(bids / "sub-01" / "func", "sub-01_task-rest", atlas, default_networks, n_vols=180, tr=1.5,
                      space="MNI152NLin2009cAsym", res=None, rng=np.random.default_rng(0), spikes=[20, 30, 170])
    mask = nib.load(paths["mask"])
    inside = np.asarray(mask.dataobj).copy()
    limbic = [i + 1 for i, net in enumerate(TABLE["network_label"]) if net == "Limbic"]
    inside[np.isin(np.asarray(atlas.dataobj).astype(int), limbic)] = 0
    nib.save(nib.Nifti1Image(inside, mask.affine), paths["mask"])
    table = AtlasTable.from_tsv(DSEG_TSV)
    model = make_demo_model(tmp_path / "model" / "demotiny", table.networks, table.network_index.tolist())
    out = tmp_path / "out"
    args = (bids, out, "participant", "--model", model, "--denoise-strategy", "scrubbing", "-w", tmp_path / "work")
    assert run_cli(*args) == 0
    page = out / "sub-01.html"
    html = page.read_text()
    assert len(_figures(html)) == 4  # FD, carpet, coverage, similarity of the crops
    assert "desc-scrubbing_timeseries.tsv" in html and "desc-demotiny_embedding.tsv" in html
    assert "DEMO model with random weights" in html
    side = json.loads(next(out.glob("sub-01/func/*_timeseries.json")).read_text())
    assert side["VolumesCensored"] == 3  # the three spikes
    # the exact mask of the extraction (CensoredVolumes), drawn over the FD of the real confounds file
    assert side["CensoredVolumes"] and len(side["CensoredVolumes"]) == 3
    assert "3 censored volume(s) shaded, as listed in the sidecar (CensoredVolumes)" in html
    row = re.search(r'<tr class="flag"><td>Limbic</td><td class="num">26</td>\s*<td class="num">26</td>.*?</tr>',
                    html, re.S)
    assert row and "yes" in row.group(0)  # all n/a, and masked by the embedding
    mtime = page.stat().st_mtime_ns
    assert run_cli(*args) == 0  # an identical rerun leaves the page untouched
    assert page.stat().st_mtime_ns == mtime and page.read_text() == html
    assert run_cli(*args, "--overwrite") == 0  # recomputed outputs, the same page
    assert page.read_text() == html


def test_participant_level_survives_an_unwritable_page(make_fmriprep, tmp_path, caplog):
    """The page cannot be written (a folder holds its name): one warning line, the level still exits 0."""
    bids = make_fmriprep(subjects=("01",), n_vols=110)
    out = tmp_path / "out"
    (out / "sub-01.html").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="bids_semantoks"):
        assert run_cli(bids, out, "participant", "--model", "none", "-w", tmp_path / "work") == 0
    lines = [r.getMessage() for r in caplog.records if "QC page" in r.getMessage()]
    assert lines == [f"sub-01: QC page not written (Is a directory: {out / 'sub-01.html'})"]
    assert not any(r.exc_info for r in caplog.records if "QC page" in r.getMessage())  # no traceback
    assert len(list(out.glob("sub-01/func/*_timeseries.tsv"))) == 1  # the outputs are complete


# -- the group report links the pages --------------------------------------------------------------
def test_group_report_links_participant_pages(tmp_path):
    from bids_semantoks.probe import GroupOptions, run_group
    from tests.probe.probe_helpers import make_cohort, write_output_dir

    cohort = make_cohort(18)
    raw = tmp_path / "raw"
    raw.mkdir()
    cohort.to_csv(raw / "participants.tsv", sep="\t", index=False)
    _json({"Name": "raw", "BIDSVersion": "1.10.0"}, raw / "dataset_description.json")
    out = write_output_dir(tmp_path / "out", cohort)
    labels = [p[4:] for p in cohort["participant_id"]]
    pages = write_participant_reports(out, labels[:5])  # toy outputs: minimal sidecars still give pages
    assert [p.name for p in pages] == [f"sub-{lab}.html" for lab in labels[:5]]
    opts = GroupOptions(targets=["dx"], raw_dir=raw, cv_folds=3, cv_repeats=1, inner_folds=3, n_jobs=1)
    assert run_group(opts, raw, out) == 0
    report = (out / "group" / "report.html").read_text()
    links = re.findall(r'<a href="\.\./(sub-[A-Za-z0-9]+\.html)">', report)
    assert links == [f"sub-{lab}.html" for lab in labels[:5]]
    for link in links:
        assert (out / "group" / ".." / link).is_file()
    assert f"sub-{labels[5]}.html" not in report
    # and each page links back to the group report once it exists
    assert 'href="group/report.html"' in write_participant_report(out, labels[0]).read_text()


# -- headless Chromium ------------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_page_renders_in_headless_chromium(tmp_path):
    if os.environ.get("BIDS_SEMANTOKS_SKIP_BROWSER") == "1":
        pytest.skip("BIDS_SEMANTOKS_SKIP_BROWSER=1: THE QC PAGE WAS NOT RENDERED IN A BROWSER")
    browser = _chromium()
    if browser is None:
        pytest.skip("CHROMIUM NOT FOUND: THE QC PAGE WAS NOT RENDERED. Install it (apt-get install -y chromium; "
                    "scripts/test.sh does) to run this check.")
    _, out = make_outputs(tmp_path, censored_key=[0, 1, 30, 31, 32, 90])
    page = write_participant_report(out, "01")
    shot = tmp_path / "page.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2600",
           page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot; chromium said: {proc.stderr[-2000:]}"
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2600, 1200)
    flat = pixels.reshape(-1, 3)
    assert len(np.unique((flat[::37] * 255).astype(int), axis=0)) > 50  # text and figures drawn
    # the figures were decoded and drawn: the network colours of the carpet strip and the green crop bars
    rgb = (pixels * 255).astype(int)
    green = (np.abs(rgb[..., 0] - 44) < 25) & (np.abs(rgb[..., 1] - 160) < 25) & (np.abs(rgb[..., 2] - 44) < 25)
    assert green.sum() > 2000, "the crop bars (green) are not on the page"
    na = (np.abs(rgb[..., 0] - 230) < 12) & (np.abs(rgb[..., 1] - 162) < 12) & (np.abs(rgb[..., 2] - 60) < 12)
    assert na.sum() > 5000, "the n/a band of the Limbic regions (orange) is not in the carpet"
    dark = (rgb.sum(axis=2) < 150).mean()
    assert 0.002 < dark < 0.5  # the carpet's dark pixels, and not a black page


def test_user_atlas_networks_from_the_settings_log(tmp_path):
    """A user atlas (--atlas table.tsv): the networks come from the table named in sub-<l>/log."""
    table = tmp_path / "atlas-toy_dseg.tsv"
    pd.DataFrame({"index": range(1, 7), "name": [f"R{i}" for i in range(6)],
                  "network_label": ["Alpha"] * 2 + ["Beta"] * 4}).to_csv(table, sep="\t", index=False)
    out = tmp_path / "out"
    func = out / "sub-01" / "func"
    data = np.random.default_rng(2).standard_normal((40, 6))
    data[:, 0] = np.nan
    _tsv(pd.DataFrame(data, columns=[f"R{i}" for i in range(6)]),
         func / "sub-01_task-rest_atlas-toy_desc-simple_timeseries.tsv")
    _json({"RepetitionTime": 2.0, "Atlas": "toy"}, func / "sub-01_task-rest_atlas-toy_desc-simple_timeseries.json")
    _json({"participant": {"atlas": str(table)}, "run": {}}, out / "sub-01" / "log" / "bids_semantoks_participant.json")
    html = write_participant_report(out, "01").read_text()
    assert re.search(r'<td>Alpha</td><td class="num">2</td>\s*<td class="num">1</td>', html)
    assert re.search(r'<td>Beta</td><td class="num">4</td>\s*<td class="num">0</td>', html)
    assert "not grouped by network" not in html
    assert "participant.atlas" in html  # the settings that shape the results are shown
    # execution and selection settings are not: --overwrite, -w or a subset rerun leave the page as it was
    side = out / "sub-01" / "log" / "bids_semantoks_participant.json"
    _json({"participant": {"atlas": str(table), "participant_label": ["02"]},
           "run": {"overwrite": True, "work_dir": "/elsewhere"}}, side)
    assert write_participant_report(out, "01").read_text() == html
