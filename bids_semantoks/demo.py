"""An embedded demo: a small synthetic fMRIPrep derivatives dataset with network structure.

The BOLD runs are painted into the model's atlas (resampled to a coarse grid, so the
demo is small): every region carries a mixture of its network's slow AR(1) process and
its own noise, plus motion-like confound signals the denoising has to remove. File
names, sidecars and confounds follow fMRIPrep's conventions so the real discovery,
confound loading and extraction code runs on them.

``python -m bids_semantoks.demo DIR`` writes the dataset (``DIR/fmriprep``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


def _network_signals(rng, n_networks: int, n_vols: int, tr: float) -> np.ndarray:
    """Slow AR(1) processes, one per network (coefficient tuned to ~0.05 Hz at any TR)."""
    phi = np.exp(-tr / 8.0)
    x = np.zeros((n_vols + 50, n_networks))
    noise = rng.standard_normal(x.shape)
    for t in range(1, len(x)):
        x[t] = phi * x[t - 1] + noise[t]
    return x[50:]


def resample_atlas(atlas_img: nib.Nifti1Image, voxel_mm: float) -> nib.Nifti1Image:
    """The atlas on a coarser grid covering the same field of view (nearest neighbour)."""
    from nilearn.image import resample_img

    affine = atlas_img.affine.copy()
    scale = voxel_mm / abs(affine[0, 0])
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * scale
    shape = tuple(int(np.ceil(s / scale)) for s in atlas_img.shape[:3])
    return resample_img(atlas_img, target_affine=new_affine, target_shape=shape, interpolation="nearest",
                        force_resample=True, copy_header=True)


def write_run(
    func_dir: Path,
    prefix: str,
    atlas_img: nib.Nifti1Image,
    channel_networks: np.ndarray,
    *,
    n_vols: int,
    tr: float,
    space: str,
    res: str | None,
    rng: np.random.Generator,
    region_signals: np.ndarray | None = None,
    noise: float = 0.3,
    motion_scale: float = 0.5,
    spikes: list[int] | None = None,
) -> dict[str, Path]:
    """Write one fMRIPrep-style run (BOLD, mask, sidecars, confounds).

    Parameters
    ----------
    region_signals : ndarray (n_vols, R), optional
        Signals painted into the atlas labels 1..R (e.g. a phantom); by default network-structured.
    """
    labels = np.asarray(atlas_img.dataobj).astype(np.int32)
    n_reg = len(channel_networks)
    if region_signals is None:
        nets = _network_signals(rng, int(channel_networks.max()) + 1, n_vols, tr)
        weights = rng.uniform(0.4, 1.0, n_reg)
        region_signals = nets[:, channel_networks] * weights + rng.standard_normal((n_vols, n_reg)) * 0.7
    steps = rng.standard_normal((n_vols, 6)) * np.array([0.02, 0.02, 0.02, 0.0003, 0.0003, 0.0003])
    motion = np.cumsum(steps, axis=0) * motion_scale  # mm and radians, as fMRIPrep writes them
    if spikes:
        for s in spikes:
            motion[s:] += rng.standard_normal(6) * np.array([0.8, 0.8, 0.8, 0.01, 0.01, 0.01])
    lookup = np.zeros((n_reg + 1, n_vols), dtype=np.float32)
    lookup[1:] = (region_signals.T * 10.0)
    inside = labels > 0
    data = np.zeros(labels.shape + (n_vols,), dtype=np.float32)
    base = 1000.0 + 50 * motion[:, 0]
    lab = np.clip(labels, 0, n_reg)
    data[inside] = lookup[lab[inside]] + base[None, :].astype(np.float32)
    if noise:
        data[inside] += rng.standard_normal((int(inside.sum()), n_vols)).astype(np.float32) * noise * 10
    ent = f"_space-{space}" + (f"_res-{res}" if res else "")
    hdr = nib.Nifti1Header()
    hdr.set_xyzt_units("mm", "sec")
    bold = nib.Nifti1Image(data, atlas_img.affine, hdr)
    bold.header.set_zooms(bold.header.get_zooms()[:3] + (tr,))
    func_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "bold": func_dir / f"{prefix}{ent}_desc-preproc_bold.nii.gz",
        "mask": func_dir / f"{prefix}{ent}_desc-brain_mask.nii.gz",
        "confounds": func_dir / f"{prefix}_desc-confounds_timeseries.tsv",
    }
    nib.save(bold, paths["bold"])
    mask = nib.Nifti1Image(inside.astype(np.uint8), atlas_img.affine)
    nib.save(mask, paths["mask"])
    (func_dir / f"{prefix}{ent}_desc-preproc_bold.json").write_text(json.dumps(
        {"RepetitionTime": tr, "SkullStripped": False, "TaskName": "rest", "SliceTimingCorrected": True}, indent=2))
    (func_dir / f"{prefix}{ent}_desc-brain_mask.json").write_text(json.dumps({"Type": "Brain", "RawSources": []}))
    _write_confounds(paths["confounds"], motion, region_signals, tr, rng)
    return paths


def _write_confounds(path: Path, motion: np.ndarray, signals: np.ndarray, tr: float, rng) -> None:
    n = len(motion)
    conf = {}
    for i, name in enumerate(MOTION):
        col = motion[:, i]
        d1 = np.r_[np.nan, np.diff(col)]
        conf[name] = col
        conf[f"{name}_derivative1"] = d1
        conf[f"{name}_power2"] = col**2
        conf[f"{name}_derivative1_power2"] = d1**2
    for name in ("csf", "white_matter", "global_signal"):
        col = signals.mean(axis=1) * 0.1 + rng.standard_normal(n) * 0.5
        conf[name] = col
        conf[f"{name}_derivative1"] = np.r_[np.nan, np.diff(col)]
        conf[f"{name}_power2"] = col**2
        conf[f"{name}_derivative1_power2"] = np.r_[np.nan, np.diff(col)] ** 2
    rot = np.abs(np.diff(motion[:, 3:], axis=0)) * 50
    fd = np.r_[np.nan, np.abs(np.diff(motion[:, :3], axis=0)).sum(1) + rot.sum(1)]
    conf["framewise_displacement"] = fd
    conf["dvars"] = np.r_[np.nan, rng.uniform(20, 30, n - 1)]
    conf["std_dvars"] = np.r_[np.nan, rng.uniform(0.8, 1.2, n - 1)]
    t = np.arange(n) * tr
    n_cos = max(1, int(np.floor(2 * n * tr * 1 / 128.0)))
    for k in range(n_cos):
        conf[f"cosine{k:02d}"] = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * np.arange(n) + 1) * (k + 1) / (2 * n))
    meta = {}
    for k in range(6):
        conf[f"a_comp_cor_{k:02d}"] = rng.standard_normal(n) / np.sqrt(n)
        meta[f"a_comp_cor_{k:02d}"] = {"Method": "aCompCor", "Mask": "combined", "Retained": True,
                                       "VarianceExplained": 0.1, "CumulativeVarianceExplained": 0.1 * (k + 1),
                                       "SingularValue": 1.0}
    del t
    frame = pd.DataFrame(conf)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def make_dataset(
    root: Path,
    atlas_dseg: Path,
    channel_networks: np.ndarray,
    *,
    subjects: tuple[str, ...] = ("01", "02"),
    sessions: tuple[str | None, ...] = (None,),
    runs: tuple[str | None, ...] = (None,),
    n_vols: int = 150,
    tr: float = 1.5,
    voxel_mm: float = 4.0,
    space: str = "MNI152NLin2009cAsym",
    res: str | None = None,
    seed: int = 0,
    phenotypes: bool = True,
) -> Path:
    """Write a synthetic fMRIPrep derivatives dataset under ``root`` and return it."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    atlas_img = nib.load(str(atlas_dseg))
    if voxel_mm and abs(abs(atlas_img.affine[0, 0]) - voxel_mm) > 1e-3:
        atlas_img = resample_atlas(atlas_img, voxel_mm)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "bids_semantoks synthetic demo (fMRIPrep-style)", "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.1", "Description": "synthetic stand-in"}],
    }, indent=2))
    rows = []
    for i, sub in enumerate(subjects):
        group = "patient" if i % 2 else "control"
        rows.append({"participant_id": f"sub-{sub}", "age": float(rng.uniform(20, 60)), "sex": "MF"[i % 2],
                     "group": group})
        for ses in sessions:
            for run in runs:
                prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + "_task-rest" + (f"_run-{run}" if run else "")
                func = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
                write_run(func, prefix, atlas_img, channel_networks, n_vols=n_vols, tr=tr, space=space, res=res, rng=rng)
    if phenotypes:
        pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m bids_semantoks.demo OUT_DIR [--subjects N]``: write the demo dataset."""
    import argparse

    from bids_semantoks.atlas import registry

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--n-vols", type=int, default=240)
    parser.add_argument("--tr", type=float, default=1.5)
    args = parser.parse_args(argv)
    resolved = registry.get_default_atlas("MNI152NLin2009cAsym")
    subjects = tuple(f"{i + 1:02d}" for i in range(args.subjects))
    make_dataset(args.out_dir, resolved.dseg_img_path, resolved.table.network_index, subjects=subjects,
                 n_vols=args.n_vols, tr=args.tr, res="4")
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
