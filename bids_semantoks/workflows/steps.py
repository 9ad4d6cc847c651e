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
        metadata=run.get("metadata") or {},  # the input's sidecar: e.g. XCP-D's record of its band-pass
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
    """Prepare one run (:func:`bids_semantoks.extract.prepare.prepare_run`) and write its outputs.

    Returns the time-series TSV path, or None when the run was dropped (``--min-time``, too
    short to filter, everything censored).
    """
    from bids_semantoks.extract.prepare import prepare_run

    run = _run(job["run"])
    out_path = job_path(job, "timeseries_path")
    prepared = prepare_run(run, job["settings"], job["atlas"], bids_dir=job["bids_dir"])
    if prepared.dropped_reason:
        LOGGER.warning("%s: run dropped: %s", run.bold.name, prepared.dropped_reason)
        return None
    frame = pd.DataFrame(prepared.data.astype(np.float32), columns=list(prepared.names))
    sidecar = {**prepared.sidecar, "SettingsHash": job["settings_hash"], "SoftwareVersion": __version__}
    outputs.write_tsv(out_path, frame)
    outputs.write_json(outputs.sidecar_of(out_path), sidecar)
    return str(out_path)


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
    segments = [_segments(ts) for ts, _, _ in jobs]  # crops never splice censored stretches together
    embs = embed_runs(
        encoder, data, list(atlas.names), list(atlas.networks), np.asarray(atlas.channel_networks),
        tr=settings["target_tr"], n_crops=settings["n_crops"], batch_size=settings["batch_size"],
        device=model.device, save_tokens=settings["save_tokens"], segments=segments,
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


def _segments(timeseries: Path) -> list[list[int]] | None:
    """The ``ContiguousSegments`` of a time-series sidecar (None when absent or unreadable)."""
    try:
        segs = json.loads(outputs.sidecar_of(Path(timeseries)).read_text()).get("ContiguousSegments")
    except (OSError, ValueError):
        return None
    return [list(map(int, seg)) for seg in segs] if isinstance(segs, list) and segs else None


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
