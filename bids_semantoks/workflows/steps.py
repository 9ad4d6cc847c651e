"""The steps of the participant level, as plain functions.

``extract_step`` prepares one run (JSON-able job in, time-series TSV out);
``embed_step`` embeds the model-ready series of many runs in shared encoder batches;
``subject_mean_step`` averages a subject's run embeddings. Each writes its outputs
atomically. :mod:`bids_semantoks.workflows.runner` calls them for a work unit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_semantoks import __version__
from bids_semantoks.bids import outputs
from bids_semantoks.bids.layout import RunInputs
from bids_semantoks.errors import DataError

LOGGER = logging.getLogger("bids_semantoks")


def _run(run: dict[str, Any]) -> RunInputs:
    return RunInputs(
        entities=run["entities"], bold=Path(run["bold"]), tr=float(run["tr"]),
        confounds=Path(run["confounds"]) if run.get("confounds") else None,
        mask=Path(run["mask"]) if run.get("mask") else None, space=run.get("space"), res=run.get("res"),
    )


def _source(bids_dir: str, path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return "bids:input:" + str(Path(path).resolve().relative_to(Path(bids_dir).resolve()))
    except ValueError:
        return str(path)


def job_path(job: dict[str, Any], key: str) -> Path:
    """An output path of a job (stored relative to the output folder)."""
    return Path(job["output_dir"]) / job[key]


def extract_step(job: dict[str, Any]) -> str | None:
    """Parcellate, clean and write the model-ready time series of one run.

    Returns the time-series TSV path, or None when the run was dropped (``--min-time``).
    """
    from bids_semantoks.extract.signal import clean_signals, load_confounds, read_timeseries_tsv

    run = _run(job["run"])
    st = job["settings"]
    atlas = job["atlas"]
    out_path = job_path(job, "timeseries_path")
    names = tuple(atlas["names"])
    coverage = None
    missing_cov: list[str] = []
    if st["input_type"] == "timeseries":
        signals = read_timeseries_tsv(run.bold, names)
        n_vol = signals.shape[0]
        conf, sample_mask, mean_fd = None, None, None
        detrend = True  # already denoised upstream; a linear detrend is harmless and removes drifts
    else:
        import nibabel as nib

        from bids_semantoks.extract.parcellate import extract_regions

        try:
            bold_img = nib.load(str(run.bold))
        except Exception as exc:
            raise DataError(f"{run.bold}: cannot read NIfTI ({exc}); the file is corrupt, rerun fMRIPrep") from exc
        if bold_img.ndim != 4:
            raise DataError(f"{run.bold}: expected a 4-D BOLD series, got {bold_img.ndim}-D; check the file")
        n_vol = bold_img.shape[3]
        _check_header_tr(run, bold_img)
        conf, sample_mask, mean_fd = load_confounds(
            run.bold, run.confounds, st["denoise_strategy"], st["fd_thresh"], st["std_dvars_thresh"], n_vol
        ) if run.confounds is not None else (None, None, None)
        mask_img = str(run.mask) if run.mask else None  # read (and checked) by extract_regions
        signals, coverage, missing_idx = extract_regions(
            bold_img, nib.load(atlas["dseg"]), list(atlas["indices"]), mask_img=mask_img,
            min_coverage=st["min_coverage"],
        )
        missing_cov = [names[i] for i in missing_idx]
        detrend = st["denoise_strategy"] != "none"
    res = clean_signals(
        signals, run.tr, confounds=conf, sample_mask=sample_mask, detrend=detrend,
        lower_bpf=st["lower_bpf"], upper_bpf=st["upper_bpf"], target_tr=st["target_tr"], min_time=st["min_time"],
    )
    if res.dropped_reason:
        LOGGER.warning("%s: run dropped: %s", run.bold.name, res.dropped_reason)
        return None
    all_nan = ~np.isfinite(res.data).all(axis=0)
    if all_nan.all():
        raise DataError(
            f"{run.bold}: no region has a usable signal (the data are empty, constant or outside the brain mask); "
            "check the file, or rerun fMRIPrep for this run"
        )
    frame = pd.DataFrame(res.data.astype(np.float32), columns=list(names))
    sidecar = {
        "Description": "Regional mean BOLD series, denoised, band-passed, resampled to the model TR and "
        "z-scored per region, in the channel order of the atlas.",
        "SamplingFrequency": 1.0 / st["target_tr"],
        "RepetitionTime": st["target_tr"],
        "OriginalRepetitionTime": run.tr,
        "Sources": [s for s in (_source(job["bids_dir"], run.bold), _source(job["bids_dir"], run.confounds),
                                _source(job["bids_dir"], run.mask)) if s],
        "Atlas": atlas["label"],
        "AtlasSources": atlas.get("sources", []),
        "DenoiseStrategy": st["denoise_strategy"],
        "ConfoundsUsed": res.confounds_used,
        "Detrend": detrend,
        "HighPass": st["lower_bpf"] or None,
        "LowPass": st["upper_bpf"] or None,
        "FDThreshold": st["fd_thresh"] if st["denoise_strategy"] == "scrubbing" else None,
        "NumberOfVolumes": res.n_volumes_in,
        "VolumesCensored": res.n_censored_in,
        "SamplesCensoredAtTargetTR": res.n_censored_out,
        "NumberOfSamples": int(res.data.shape[0]),
        "MeanFD": mean_fd,
        "CoverageThreshold": st["min_coverage"],
        "Coverage": None if coverage is None else {n: round(float(c), 4) for n, c in zip(names, coverage)},
        "MissingRegions": [n for n, m in zip(names, all_nan) if m],
        "LowCoverageRegions": missing_cov,
        "SettingsHash": job["settings_hash"],
        "SoftwareVersion": __version__,
    }
    outputs.write_tsv(out_path, frame)
    outputs.write_json(outputs.sidecar_of(out_path), sidecar)
    return str(out_path)


def _check_header_tr(run: RunInputs, img) -> None:
    zooms = img.header.get_zooms()
    units = img.header.get_xyzt_units()[1] if hasattr(img.header, "get_xyzt_units") else "sec"
    if len(zooms) < 4 or not zooms[3]:
        return
    hdr_tr = float(zooms[3]) / (1000.0 if units == "msec" else 1.0)
    if hdr_tr > 0 and abs(hdr_tr - run.tr) > 0.01 * run.tr:
        raise DataError(
            f"{run.bold}: RepetitionTime {run.tr} s in the sidecar contradicts the NIfTI header ({hdr_tr:g} s); "
            "fix the sidecar or the header"
        )


def embed_step(jobs: list[tuple[Path, Path, str]], model, atlas, settings: dict[str, Any], encoder,
               output_dir: Path) -> None:
    """Embed the model-ready series of many runs (crops batched together) and write their tables.

    Parameters
    ----------
    jobs : list of (timeseries path, embedding path, up-to-date key)
        One per run.
    model : bids_semantoks.workflows.jobs.ModelInfo
    atlas : bids_semantoks.workflows.jobs.AtlasInfo
    settings : dict
        Participant settings (``target_tr``, ``n_crops``, ``batch_size``, ``save_tokens``).
    encoder : bids_semantoks.model.Encoder
        Loaded once per process, in eval mode on ``model.device``.
    """
    from bids_semantoks.embed import embed_runs, embedding_frame

    if not jobs:
        return
    import torch

    data = [pd.read_csv(ts, sep="\t", na_values=["n/a"]).to_numpy(dtype=np.float64) for ts, _, _ in jobs]
    embs = embed_runs(
        encoder, data, list(atlas.names), list(atlas.networks), np.asarray(atlas.channel_networks),
        tr=settings["target_tr"], n_crops=settings["n_crops"], batch_size=settings["batch_size"],
        device=model.device, save_tokens=settings["save_tokens"],
    )
    for (ts_path, out_path, key), emb in zip(jobs, embs):
        for msg in emb.warnings:
            LOGGER.warning("%s: %s", Path(ts_path).name, msg)
        frame = embedding_frame(emb)
        dim = emb.features.shape[1] // 2
        sidecar = {
            "Description": "Brain-Semantoks teacher-encoder embedding per 100-TR crop: cls_avg = "
            "[mean of the patch tokens (avg_*), CLS token (cls_*)].",
            "Model": model.label,
            "ModelSource": model.source,
            "ModelSha256": model.sha256,
            "ModelIsRandomDemo": bool(model.is_demo),
            "FeatureLayout": {"avg": ["avg_0000", f"avg_{dim - 1:04d}"], "cls": ["cls_0000", f"cls_{dim - 1:04d}"]},
            "EmbeddingDimension": int(emb.features.shape[1]),
            "CropLength": 100,
            "CropOnsets": emb.onsets.tolist(),
            "ZeroPadded": emb.padded,
            "Warnings": emb.warnings,
            "MaskedNetworks": emb.masked_networks,
            "ZeroFilledRegions": emb.zero_filled_regions,
            "Device": str(model.device),
            "Precision": "float32",
            "TorchVersion": torch.__version__,
            "Sources": [_source(str(output_dir), Path(ts_path)).replace("bids:input:", "bids::")],
            "SettingsHash": key,
            "SoftwareVersion": __version__,
        }
        outputs.write_tsv(out_path, frame, float_format="%.7g")
        outputs.write_json(outputs.sidecar_of(out_path), sidecar)
        if emb.tokens is not None:
            tok_path = tokens_path(out_path)
            with outputs.atomic_path(tok_path) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, tokens=emb.tokens, networks=np.array(atlas.networks), onsets=emb.onsets)
            outputs.write_json(outputs.sidecar_of(tok_path), {
                "Description": "Per-network token embeddings (mean over the 5 patches) per crop: [crop, network, D].",
                "Networks": list(atlas.networks), "Model": model.label, "SettingsHash": key,
            })


def tokens_path(embedding_path: Path) -> Path:
    """The per-network tokens file written beside a run embedding (``--save-tokens``)."""
    return embedding_path.with_name(embedding_path.name.replace("_embedding.tsv", "_tokens.npz"))


def subject_mean_step(out_path: str, embeddings: list[str | None], settings_hash: str, output_dir: str) -> str | None:
    """Mean embedding over all runs and crops of one subject (and session)."""
    paths = [Path(p) for p in embeddings if p]
    if not paths:
        return None
    frames = [pd.read_csv(p, sep="\t") for p in paths]
    feats = pd.concat([f.drop(columns=["crop", "onset"]) for f in frames], ignore_index=True)
    mean = feats.mean(axis=0).to_frame().T
    mean.insert(0, "n_crops", len(feats))
    metas = [json.loads(outputs.sidecar_of(p).read_text()) for p in paths]
    out = Path(out_path)
    outputs.write_tsv(out, mean, float_format="%.7g")
    outputs.write_json(outputs.sidecar_of(out), {
        "Description": "Mean cls_avg embedding over all crops of all runs of this subject.",
        "Model": metas[0]["Model"],
        "ModelSha256": metas[0].get("ModelSha256"),
        "ModelIsRandomDemo": metas[0].get("ModelIsRandomDemo", False),
        "NumberOfRuns": len(paths),
        "NumberOfCrops": int(len(feats)),
        "MaskedNetworks": sorted({n for m in metas for n in m.get("MaskedNetworks", [])}),
        "Sources": ["bids::" + str(p.resolve().relative_to(Path(output_dir).resolve())) for p in paths],
        "SettingsHash": settings_hash,
        "SoftwareVersion": __version__,
    })
    return str(out)
