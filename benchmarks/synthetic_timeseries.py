#!/usr/bin/env python
"""Synthetic regional time series for end-to-end runs of ``pretrain`` and ``participant``.

Writes an XCP-D-style time-series dataset (``--input-type timeseries``): one run per
subject, ``sub-<label>/func/sub-<label>_task-rest_atlas-<A>_timeseries.tsv`` with its JSON
sidecar (``RepetitionTime`` 2 s), ``dataset_description.json``, and the atlas table
``atlas-<A>/atlas-<A>_dseg.tsv`` (``index``, ``name``, ``network_label``) to pass as
``--atlas``. The default grouping is the released model's: 457 regions in 9 networks.
Each network shares a slow latent signal (so there is something to learn), plus noise;
every column is z-scored.

``--as-outputs`` writes the same kind of series as participant-level outputs instead
(``..._atlas-<A>_desc-none_timeseries.tsv``, already at TR 2 s and z-scored; no atlas table
or dataset description) into an OUTPUT_DIR, so that ``pretrain`` reads them directly instead of extracting them first
(``workflows.pretrain.collect_model_ready_runs``): that times the pre-training, not the extraction.

Files are written by ``--jobs`` processes (default: all cores). Nothing is downloaded.

Usage::

    python benchmarks/synthetic_timeseries.py /tmp/ts1000 --subjects 1000
    python benchmarks/synthetic_timeseries.py /tmp/out10k --subjects 10000 --as-outputs
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

#: Region counts per network of the default 457-region atlas (MODEL_SPEC section 2).
DEFAULT_SIZES = {"Vis": 61, "SomMot": 77, "DorsAttn": 46, "SalVentAttn": 47, "Limbic": 26, "Cont": 52,
                 "Default": 91, "Subcortex": 50, "Cerebellum": 7}


def region_table(label: str, sizes: dict[str, int]) -> list[tuple[int, str, str]]:
    """``(index, name, network_label)`` of every region, networks in ``sizes`` order."""
    rows, i = [], 1
    for network, n in sizes.items():
        for _ in range(n):
            rows.append((i, f"{label}_{i:03d}", network))
            i += 1
    return rows


def _series(seed: int, n_vols: int, network_of: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_vols, int(network_of.max()) + 1)).cumsum(0) * 0.3
    x = latent[:, network_of] + rng.standard_normal((n_vols, network_of.size))
    return (x - x.mean(0)) / x.std(0)


def _write_subject(args: tuple) -> None:
    root, sub, seed, n_vols, label, names, network_of, desc = args
    func = Path(root) / f"sub-{sub}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{sub}_task-rest_atlas-{label}" + (f"_desc-{desc}" if desc else "") + "_timeseries"
    x = _series(seed, n_vols, network_of)
    with open(func / f"{stem}.tsv", "w") as fh:
        fh.write("\t".join(names) + "\n")
        np.savetxt(fh, x, fmt="%.5g", delimiter="\t")
    (func / f"{stem}.json").write_text(json.dumps({"RepetitionTime": 2.0, "SamplingFrequency": 0.5}))


def make_timeseries_dataset(
    root: Path, n_subjects: int, *, n_vols: int = 180, label: str = "Synth457",
    sizes: dict[str, int] | None = None, seed: int = 0, as_outputs: bool = False, jobs: int | None = None,
) -> Path:
    """Write the data set (or participant outputs) under ``root``; return the atlas ``_dseg.tsv``.

    Parameters
    ----------
    root : Path
        Folder to write (created).
    n_subjects : int
        One run per subject, labels ``00000``, ``00001``, ...
    n_vols : int
        Volumes per run at TR 2 s (>= 100 for an uncropped pre-training view).
    label : str
        Atlas label (``atlas-<label>``).
    sizes : dict, optional
        Regions per network, in network order (default: the released 457 / 9).
    seed : int
    as_outputs : bool
        Write participant-level outputs (``desc-none``) instead of an input data set.
    jobs : int, optional
        Writer processes (default: all cores).

    Returns
    -------
    Path
        ``root/atlas-<label>/atlas-<label>_dseg.tsv`` (pass it as ``--atlas``; not written
        with ``as_outputs``: use the one of an input data set made with the same ``sizes``).
    """
    root = Path(root)
    rows = region_table(label, sizes or DEFAULT_SIZES)
    names = [r[1] for r in rows]
    networks = list(dict.fromkeys(r[2] for r in rows))
    network_of = np.array([networks.index(r[2]) for r in rows])
    root.mkdir(parents=True, exist_ok=True)
    atlas_dir = root / f"atlas-{label}"
    dseg = atlas_dir / f"atlas-{label}_dseg.tsv"
    if not as_outputs:  # an OUTPUT_DIR gets only the series: the app writes its own description
        (root / "dataset_description.json").write_text(json.dumps({
            "Name": "bids_semantoks synthetic time series (benchmarks/synthetic_timeseries.py)",
            "BIDSVersion": "1.10.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "synthetic_timeseries"}],
        }, indent=2))
        atlas_dir.mkdir(exist_ok=True)
        dseg.write_text("index\tname\tnetwork_label\n" + "".join(f"{i}\t{n}\t{net}\n" for i, n, net in rows))
    tasks = [(str(root), f"{s:05d}", seed * 1_000_003 + s, n_vols, label, names, network_of,
              "none" if as_outputs else None) for s in range(n_subjects)]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1 or n_subjects < 64:
        for t in tasks:
            _write_subject(t)
    else:
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_write_subject, tasks, chunksize=64))
    return dseg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--subjects", type=int, default=1000)
    ap.add_argument("--volumes", type=int, default=180)
    ap.add_argument("--label", default="Synth457")
    ap.add_argument("--small", action="store_true", help="12 regions in 3 networks instead of 457 in 9 (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--as-outputs", action="store_true", help="write participant outputs (desc-none) instead")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    sizes = {"Vis": 5, "SomMot": 4, "Default": 3} if args.small else None
    dseg = make_timeseries_dataset(args.root, args.subjects, n_vols=args.volumes, label=args.label, sizes=sizes,
                                   seed=args.seed, as_outputs=args.as_outputs, jobs=args.jobs)
    print(dseg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
