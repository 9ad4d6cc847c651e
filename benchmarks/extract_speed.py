#!/usr/bin/env python
"""Benchmark: region-mean reduction vs nilearn's ``img_to_signals_labels``.

Synthesises (in a temporary folder) a 97x115x97xT float32 ``.nii.gz`` BOLD run on the
MNI152NLin2009cAsym 2 mm grid with a brain-like mask, and reduces it with the real 457-label
atlas from ``shared/atlases/derived`` (same grid). Prints a table of timings (best of
``--repeats`` for ours and the plain read; nilearn once), the ratios, and the maximum relative
difference to nilearn.

Usage::

    python benchmarks/extract_speed.py            # T = 200 (the issue's size)
    python benchmarks/extract_speed.py --quick    # T = 40
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
ATLAS = (
    REPO.parent
    / "shared/atlases/derived/Schaefer400-7N_TianS3_Buckner7_MNI152NLin2009cAsym_2mm_dseg.nii.gz"
)


def synthesise(folder: Path, n_vols: int, atlas_img, seed: int = 0) -> tuple[Path, Path]:
    """Write ``bold.nii.gz`` (float32, noise + smooth baseline inside a head) and ``mask.nii.gz``."""
    lab = np.asarray(atlas_img.dataobj)
    brain = ndimage.binary_fill_holes(ndimage.binary_dilation(lab > 0, iterations=2))
    head = ndimage.binary_dilation(brain, iterations=6)
    rng = np.random.default_rng(seed)
    shape = lab.shape
    base = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3) * 2000 + 800
    head_f = np.flatnonzero(head.ravel(order="F"))
    base_f = base.ravel(order="F")[head_f]
    data = np.zeros(shape + (n_vols,), dtype=np.float32, order="F")
    flat = data.reshape((-1, n_vols), order="F")  # a view
    slow = rng.standard_normal((n_vols, 8)).astype(np.float32)  # a few shared slow signals
    weights = rng.standard_normal((head_f.size, 8)).astype(np.float32) * 10
    for t in range(n_vols):
        flat[head_f, t] = base_f + weights @ slow[t] + rng.standard_normal(head_f.size, dtype=np.float32) * 20
    img = nib.Nifti1Image(data, atlas_img.affine)
    img.header.set_data_dtype(np.float32)
    bold = folder / "bold.nii.gz"
    img.to_filename(bold)
    mask = folder / "mask.nii.gz"
    nib.Nifti1Image(brain.astype(np.uint8), atlas_img.affine).to_filename(mask)
    return bold, mask


def timed(fn, repeats: int):
    best, out = np.inf, None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T = 40 volumes instead of 200")
    ap.add_argument("--n-vols", type=int, default=None, help="number of volumes (overrides --quick)")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the read and our timings")
    ap.add_argument("--skip-nilearn", action="store_true", help="do not run nilearn (no comparison)")
    args = ap.parse_args(argv)
    n_vols = args.n_vols or (40 if args.quick else 200)

    from bids_semantoks.extract.io import iter_volume_blocks
    from bids_semantoks.extract.parcellate import region_means

    if not ATLAS.exists():
        print(f"atlas not found: {ATLAS}", file=sys.stderr)
        return 66
    atlas_img = nib.load(ATLAS)
    lab = np.asarray(atlas_img.dataobj)
    indices = np.unique(lab[lab > 0]).astype(int)

    with tempfile.TemporaryDirectory(prefix="extract_speed_") as tmp:
        t0 = time.perf_counter()
        bold, mask = synthesise(Path(tmp), n_vols, atlas_img)
        t_syn = time.perf_counter() - t0
        size_mb = bold.stat().st_size / 2**20
        raw_mb = np.prod(nib.load(bold).shape) * 4 / 2**20
        print(
            f"synthetic run: 97x115x97x{n_vols} float32, {size_mb:.0f} MiB gzip ({raw_mb:.0f} MiB raw), "
            f"written in {t_syn:.1f} s; atlas: {len(indices)} regions"
        )
        mask_data = np.asarray(nib.load(mask).dataobj)

        t_read, arr = timed(lambda: np.asarray(nib.load(bold).dataobj), args.repeats)

        def stream_only():
            n = 0
            for _, block in iter_volume_blocks(nib.load(bold)):
                n += block.shape[3]
            return n

        t_stream, _ = timed(stream_only, args.repeats)
        t_reduce, _ = timed(lambda: region_means(arr, lab, indices, mask=mask_data), args.repeats)
        del arr
        gc.collect()
        t_ours, (ours, n_vox) = timed(
            lambda: region_means(str(bold), str(ATLAS), indices, mask=str(mask)), args.repeats
        )

        rows = [
            ("read NIfTI: np.asarray(nib.load(f).dataobj)", t_read),
            ("read NIfTI: our streaming reader only", t_stream),
            ("ours: region_means, data already in memory", t_reduce),
            ("ours: region_means from the file (read + reduce)", t_ours),
        ]
        t_nl = None
        maxrel = None
        if not args.skip_nilearn:
            from nilearn.regions import img_to_signals_labels

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gc.collect()
                t0 = time.perf_counter()
                nl, nl_labels, _ = img_to_signals_labels(str(bold), str(ATLAS), mask_img=str(mask))
                t_nl = time.perf_counter() - t0
            rows.append(("nilearn img_to_signals_labels (read + reduce)", t_nl))
            cols = np.searchsorted(indices, np.asarray(nl_labels, dtype=int))
            diff = np.abs(ours[:, cols] - nl)
            maxrel = float(np.max(diff / np.maximum(np.abs(nl), np.finfo(np.float32).tiny)))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'step':<{width}}  time (s)")
    print(f"{'-' * width}  --------")
    for name, t in rows:
        print(f"{name:<{width}}  {t:8.2f}")
    print()
    if t_nl is not None:
        print(f"speed-up nilearn / ours (both from the file):   {t_nl / t_ours:6.1f}x   (need >= 5)")
    print(f"ours total / nibabel read:                     {t_ours / t_read:6.2f}    (need <= ~1.5)")
    print(f"ours total / our streaming read:               {t_ours / t_stream:6.2f}")
    if maxrel is not None:
        print(f"max relative difference to nilearn:            {maxrel:.2e}  (need <= 1e-5)")
    print(f"regions with voxels: {int((n_vox > 0).sum())}/{len(indices)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
