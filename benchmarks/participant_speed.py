"""Participant level on one full-size run vs just reading the NIfTI.

Writes one fMRIPrep-style run on the 97x115x97 MNI152NLin2009cAsym 2 mm grid (T volumes,
float32, painted into the 457-region atlas, with confounds) and prints:

* the time to read the BOLD with nibabel (``np.asarray(img.dataobj)``), the baseline;
* the time of the extraction step of one run in-process (parcellation, confounds, cleaning,
  resampling, z-scoring, writing), the work the participant level adds per run;
* the wall time of the whole CLI (``bids_semantoks ... participant --model none``) in a
  subprocess, including Python start-up, imports and pybids indexing;

and their ratios to the read. Target (issue 2): about 1.5x the read for one run.

Usage: ``python benchmarks/participant_speed.py [--n-vols 200] [--atlas-dir ../shared/atlases]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-vols", type=int, default=200)
    parser.add_argument("--atlas-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "atlases")
    args = parser.parse_args()
    os.environ.setdefault("BIDS_SEMANTOKS_ATLAS_DIR", str(args.atlas_dir))

    from bids_semantoks.atlas import registry
    from bids_semantoks.demo import write_run

    atlas = registry.get_default_atlas("MNI152NLin2009cAsym")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "fmriprep"
        (root).mkdir()
        (root / "dataset_description.json").write_text(json.dumps(
            {"Name": "bench", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
        rng = np.random.default_rng(0)
        paths = write_run(root / "sub-01" / "func", "sub-01_task-rest", nib.load(str(atlas.dseg_img_path)),
                          atlas.table.network_index, n_vols=args.n_vols, tr=2.0, space="MNI152NLin2009cAsym",
                          res="2", rng=rng)
        size = paths["bold"].stat().st_size / 2**20

        t0 = time.perf_counter()
        np.asarray(nib.load(str(paths["bold"])).dataobj)
        t_read = time.perf_counter() - t0

        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "bids_semantoks", str(root), str(Path(tmp) / "out"), "participant",
               "--model", "none", "-w", str(Path(tmp) / "work")]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        t_cli = time.perf_counter() - t0

        # the extraction step alone, in-process, on the job the CLI planned
        from bids_semantoks.bids import layout as bids_layout
        from bids_semantoks.config import build_settings
        from bids_semantoks.workflows.common import resolve_atlas
        from bids_semantoks.workflows.participant import make_context, plan
        from bids_semantoks.workflows.steps import extract_step

        settings = build_settings(root, Path(tmp) / "out2", "participant", {"participant": {"model": "none"}})
        _, atlas = resolve_atlas(settings)
        runs = bids_layout.collect_runs(bids_layout.index(root), settings.participant)
        ctx = make_context(settings, atlas, None)
        job = plan(runs, ctx)[0][0].runs[0].step_dict(ctx)
        t0 = time.perf_counter()
        extract_step(job)
        t_step = time.perf_counter() - t0

    rows = [
        ("read NIfTI (nibabel, baseline)", t_read, 1.0),
        ("extraction step of one run (in-process)", t_step, t_step / t_read),
        ("whole CLI, --model none (subprocess, incl. start-up)", t_cli, t_cli / t_read),
    ]
    print(f"one run: 97x115x97x{args.n_vols} float32, {size:.0f} MiB .nii.gz")
    print(f"{'step':<55} {'seconds':>8} {'x read':>7}")
    for name, t, r in rows:
        print(f"{name:<55} {t:8.2f} {r:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
