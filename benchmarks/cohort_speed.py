#!/usr/bin/env python
"""Benchmark: the participant level at cohort scale (issue 12), every row against a baseline
measured in the same run.

(a) N real XCP-D-style time-series runs (``../shared/data/abide_cc200``, CC200 atlas), through
    the CLI with ``--model none`` and with a tiny random model saved for the CC200 networks;
    ``--nprocs 1`` and ``2``; the cached rerun (nothing to do); mean CPU use of the processes;
    against a plain single-process loop doing the same work (the same extraction step, and
    for the model the same encoder, called run after run, no orchestration, imports excluded).
(b) M synthetic fMRIPrep runs (``--voxel-mm`` 2 by default, 200 volumes), the same rows;
    crops/s through the level vs the encoder alone on the same crops (as
    ``benchmarks/encoder_speed.py`` measures it).
(c) pybids indexing of one subject in a 1000-subject layout of empty files vs a 1-subject one.
(d) a projection, from the measured per-run costs, of a UK Biobank-sized run (40,000 runs,
    2 mm, 490 volumes) on one 64-core node with one GPU (26,000 crops/s, benchmarks/gpu_encoder.py).

Targets: ``--nprocs 1`` <= 1.3x the loop; ``--nprocs 2`` >= 1.7x faster than 1 (2 idle cores);
cached rerun of 500 subjects < 5 s; indexing ratio <= 1.2.

Usage::

    python benchmarks/cohort_speed.py                      # 349 time-series runs, 8 fMRIPrep runs
    python benchmarks/cohort_speed.py --quick              # 20 time-series runs, 2 fMRIPrep runs (4 mm)
    python benchmarks/cohort_speed.py --n-timeseries 60 --n-fmriprep 4 --voxel-mm 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ABIDE = SHARED / "data" / "abide_cc200"
CC200 = ABIDE / "atlas-CC200" / "atlas-CC200_dseg.tsv"


def cli(bids: Path, out: Path, *args, nprocs: int = 1) -> tuple[float, float, int]:
    """Wall time, CPU seconds of the process tree, and the exit code of one CLI run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bids_semantoks", str(bids), str(out), "participant",
                           "--nprocs", str(nprocs), "--omp-nthreads", "1", *map(str, args)],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    return wall, cpu, proc.returncode


def tiny_model(folder: Path, atlas_tsv: Path | None, size: str) -> Path:
    """A random-weight model for the atlas's networks (speed only: its embeddings mean nothing)."""
    import torch

    from bids_semantoks.atlas import AtlasTable, registry
    from bids_semantoks.model import Encoder, model_preset
    from bids_semantoks.model.store import save_encoder

    table = AtlasTable.from_tsv(atlas_tsv) if atlas_tsv else registry.get_default_table()
    torch.manual_seed(0)
    enc = Encoder(model_preset(size, list(table.networks), table.network_index.tolist()))
    return save_encoder(enc, folder, {"demo": True})


def plain_loop(jobs: list[dict], model_path: Path | None, atlas, settings: dict) -> float:
    """The same work as the level, in one process, run after run (imports and model load excluded)."""
    import nibabel  # noqa: F401  (imports are not part of the per-run work)
    import nilearn.signal  # noqa: F401

    import bids_semantoks.extract.parcellate  # noqa: F401
    import bids_semantoks.extract.signal  # noqa: F401
    from bids_semantoks.workflows.jobs import ModelInfo
    from bids_semantoks.workflows.steps import embed_step, extract_step

    encoder = None
    if model_path is not None:
        from bids_semantoks.model import load_encoder

        encoder = load_encoder(model_path, network_map=np.asarray(atlas.channel_networks)).eval()
        info = ModelInfo("bench", str(model_path), "bench", "0", True, "cpu", None)
    t0 = time.perf_counter()
    for job in jobs:
        ts = extract_step(job)
        if encoder is not None and ts:
            emb = Path(ts).with_name(Path(ts).name.replace("_timeseries.tsv", "_embedding.tsv"))
            embed_step([(Path(ts), emb, "x")], info, atlas, settings, encoder, Path(job["output_dir"]))
    return time.perf_counter() - t0


def loop_jobs(bids: Path, out: Path, opts: dict):
    """The level's own plan (same runs, same settings) as plain job dicts, and the atlas."""
    import torch

    from bids_semantoks.bids import layout as bids_layout
    from bids_semantoks.config import build_settings
    from bids_semantoks.workflows import participant
    from bids_semantoks.workflows.common import resolve_atlas

    torch.set_num_threads(1)
    settings = build_settings(bids, out, "participant", {"participant": {"model": "none", **opts}})
    _, atlas = resolve_atlas(settings)
    layout = bids_layout.index(bids, participant_labels=settings.participant.participant_label)
    runs = bids_layout.collect_runs(layout, settings.participant)
    ctx = participant.make_context(settings, atlas, None)
    subjects, _ = participant.plan(runs, ctx)
    return [j.step_dict(ctx) for s in subjects for j in s.runs], atlas, ctx.settings


def encoder_crops_per_s(model_path: Path, atlas, n_crops: int, batch: int = 64) -> float:
    import torch

    from bids_semantoks.model import load_encoder

    torch.set_num_threads(1)
    enc = load_encoder(model_path, network_map=np.asarray(atlas.channel_networks)).eval()
    x = torch.randn(batch, len(atlas.names), 100)
    with torch.inference_mode():
        enc(x)
        t0 = time.perf_counter()
        done = 0
        while done < n_crops:
            enc(x)
            done += batch
    return done / (time.perf_counter() - t0)


def section(title: str, bids: Path, extra: list[str], opts: dict, model: Path | None, tmp: Path, n_runs: int,
            nprocs_list: list[int], n_crops_per_run: int = 8) -> dict:
    rows = {}
    jobs, atlas, settings = loop_jobs(bids, tmp / "loop_none", opts)
    jobs = jobs[:n_runs]
    rows["loop none"] = plain_loop(jobs, None, atlas, settings)
    for p in nprocs_list:
        out = tmp / f"{title}_none_{p}"
        wall, cpu, code = cli(bids, out, *extra, "--model", "none", nprocs=p)
        rows[f"none nprocs {p}"] = (wall, cpu / (wall * p), code)
    wall, cpu, code = cli(bids, tmp / f"{title}_none_{nprocs_list[0]}", *extra, "--model", "none")
    rows["rerun none"] = (wall, cpu / wall, code)
    if model is not None:
        for j in jobs:
            j["output_dir"] = str(tmp / "loop_model")
        rows["loop model"] = plain_loop(jobs, model, atlas, settings)
        for p in nprocs_list:
            wall, cpu, code = cli(bids, tmp / f"{title}_model_{p}", *extra, "--model", model, "--device", "cpu",
                                  nprocs=p)
            rows[f"model nprocs {p}"] = (wall, cpu / (wall * p), code)
        wall, cpu, code = cli(bids, tmp / f"{title}_model_{nprocs_list[0]}", *extra, "--model", model,
                              "--device", "cpu")
        rows["rerun model"] = (wall, cpu / wall, code)
        rows["encoder crops/s"] = encoder_crops_per_s(model, atlas, n_runs * n_crops_per_run)
    return rows


def print_rows(title: str, rows: dict, n_runs: int) -> None:
    print(f"\n### {title} ({n_runs} runs)\n")
    print("| configuration | wall (s) | CPU use per process | ratio |")
    print("|---|---:|---:|---:|")
    for kind in ("none", "model"):
        base = rows.get(f"loop {kind}")
        if base is None:
            continue
        print(f"| plain loop, --model {kind} | {base:.1f} | - | 1.00x (baseline) |")
        ones = None
        for key, val in rows.items():
            if key.startswith(f"{kind} nprocs"):
                wall, util, code = val
                p = int(key.split()[-1])
                ones = ones or wall
                extra = f"; {ones / wall:.2f}x faster than nprocs 1" if p > 1 else ""
                print(f"| level --model {kind} --nprocs {p} | {wall:.1f} | {util:.0%} | "
                      f"{wall / base:.2f}x the loop{extra}{'' if code == 0 else f' (exit {code})'} |")
        wall, util, code = rows[f"rerun {kind}"]
        print(f"| cached rerun, --model {kind} | {wall:.1f} | {util:.0%} | {wall / n_runs * 500:.1f} s per 500 runs |")
    if "encoder crops/s" in rows:
        delta = rows["model nprocs 1"][0] - rows["none nprocs 1"][0]
        level = n_runs * 8 / delta if delta > 0 else float("nan")  # noisy when the encoder is a small share
        enc = rows["encoder crops/s"]
        print(f"| crops/s through the level (nprocs 1, model minus none) | {level:.0f} | - | "
              f"{level / enc:.0%} of the encoder alone ({enc:.0f} crops/s, 1 thread) |")


def indexing_ratio(tmp: Path, n: int = 1000, repeats: int = 5) -> tuple[float, float]:
    from bids_semantoks.bids.layout import index

    def make(root: Path, k: int) -> None:
        root.mkdir(parents=True)
        (root / "dataset_description.json").write_text(json.dumps(
            {"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
        for i in range(k):
            anat, func = root / f"sub-{i:04d}" / "anat", root / f"sub-{i:04d}" / "func"
            anat.mkdir(parents=True)
            func.mkdir(parents=True)
            for suffix in ("desc-preproc_T1w.nii.gz", "desc-preproc_T1w.json", "desc-brain_mask.nii.gz"):
                (anat / f"sub-{i:04d}_space-MNI152NLin2009cAsym_{suffix}").write_text("")
            for suffix in ("desc-preproc_bold.nii.gz", "desc-brain_mask.nii.gz", "desc-preproc_bold.json",
                           "desc-confounds_timeseries.tsv", "desc-confounds_timeseries.json"):
                (func / f"sub-{i:04d}_task-rest_space-MNI152NLin2009cAsym_{suffix}").write_text("")

    big, one = tmp / "idx_big", tmp / "idx_one"
    make(big, n)
    make(one, 1)

    def once(root: Path, r: int) -> float:  # cold: a new database folder each time (the fixed path)
        db = tmp / f"db_{root.name}_{r}"
        t0 = time.perf_counter()
        index(root, participant_labels=["0000"], database_dir=db)
        return time.perf_counter() - t0

    once(one, -1)  # warm-up (imports)
    times: dict[Path, list[float]] = {big: [], one: []}
    for r in range(repeats):  # interleaved, so load on the machine hits both alike
        for root in (big, one):
            times[root].append(once(root, r))
    return min(times[big]), min(times[one])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-timeseries", type=int, default=349)
    parser.add_argument("--n-fmriprep", type=int, default=8)
    parser.add_argument("--voxel-mm", type=float, default=2.0)
    parser.add_argument("--n-vols", type=int, default=200)
    parser.add_argument("--model-size", default="tiny", help="model preset of the fMRIPrep rows (base = released size)")
    parser.add_argument("--nprocs", default="1,2", help="comma-separated --nprocs values")
    parser.add_argument("--quick", action="store_true", help="20 time-series runs, 2 fMRIPrep runs at 4 mm")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: timeseries,fmriprep,index")
    args = parser.parse_args()
    if args.quick:
        args.n_timeseries, args.n_fmriprep, args.voxel_mm = 20, 2, 4.0
    os.environ.setdefault("BIDS_SEMANTOKS_ATLAS_DIR", str(SHARED / "atlases"))
    nprocs = [int(p) for p in args.nprocs.split(",")]
    skip = set(args.skip.split(","))
    measured = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "timeseries" not in skip:
            subjects = sorted(p.name[4:] for p in ABIDE.glob("sub-*"))[: args.n_timeseries]
            extra = ["--input-type", "timeseries", "--atlas", str(CC200), "--participant-label", *subjects]
            model = tiny_model(tmp / "tinycc200", CC200, "tiny")
            opts = {"input_type": "timeseries", "atlas": str(CC200), "participant_label": subjects}
            rows = section("timeseries", ABIDE, extra, opts, model, tmp, len(subjects), nprocs)
            print_rows("(a) ABIDE CC200 time series", rows, len(subjects))
            measured["timeseries"] = rows
        if "fmriprep" not in skip and args.n_fmriprep:
            from bids_semantoks.atlas import registry
            from bids_semantoks.demo import make_dataset

            atlas = registry.get_default_atlas("MNI152NLin2009cAsym")
            t0 = time.perf_counter()
            bids = make_dataset(tmp / "fmriprep", atlas.dseg_img_path, atlas.table.network_index,
                                subjects=tuple(f"{i:03d}" for i in range(args.n_fmriprep)), n_vols=args.n_vols,
                                tr=2.0, voxel_mm=args.voxel_mm)
            print(f"\n(wrote {args.n_fmriprep} synthetic fMRIPrep runs in {time.perf_counter() - t0:.0f} s)")
            model = tiny_model(tmp / f"{args.model_size}457", None, args.model_size)
            rows = section("fmriprep", bids, [], {}, model, tmp, args.n_fmriprep, nprocs)
            print_rows(f"(b) synthetic fMRIPrep, {args.voxel_mm:g} mm, {args.n_vols} volumes, "
                       f"{args.model_size} model", rows, args.n_fmriprep)
            measured["fmriprep"] = rows
            shutil.rmtree(bids)
        if "index" not in skip:
            big, one = indexing_ratio(tmp)
            print(f"\n### (c) pybids indexing of one subject\n\n1000-subject layout {big:.2f} s, "
                  f"1-subject layout {one:.2f} s: ratio {big / one:.2f} (target <= 1.2)")
        if "fmriprep" in measured:
            rows = measured["fmriprep"]
            n = args.n_fmriprep
            per_run = rows["none nprocs 1"][0] / n * (490 / args.n_vols) * (2.0 / args.voxel_mm) ** 3
            crops = 40_000 * 8 / 26_000
            hours = 40_000 * per_run / 64 / 3600 + crops / 3600
            print(f"\n### (d) UK Biobank projection\n\n40,000 runs x {per_run:.2f} s per run (measured here, scaled "
                  f"to 490 volumes at 2 mm) / 64 cores + {crops:.0f} s of GPU encoder = {hours:.2f} h "
                  "(goal < 1 h; assumes the per-run cost scales with voxels x volumes and 64 processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
