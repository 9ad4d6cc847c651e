"""The per-run steps of the participant level, as plain functions.

Each step takes JSON-serialisable arguments (so nipype can hash them for its cache),
writes its outputs atomically, and returns the paths it wrote. The nipype graph in
:mod:`bids_semantoks.workflows.participant` only wires them together.
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
from bids_semantoks.errors import BidsAppError, DataError

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


def guarded(step: str, job: dict[str, Any], error_dir: str, where: str | None, fn, *args):
    """Run ``fn(*args)``; on failure, leave a one-line error record for the job, then re-raise.

    nipype only keeps tracebacks (in the crash files); the record gives the CLI the exit code
    and the one-line message naming the run's file. A bug is reported with exit code 1.
    """
    try:
        return fn(*args)
    except Exception as exc:
        if isinstance(exc, BidsAppError):
            code, msg = exc.code, str(exc)
        else:
            detail = " ".join(str(exc).split())[:300]
            code, msg = 1, (f"{where}: unexpected error while running {step} ({type(exc).__name__}: {detail}); "
                            "see the crash file under OUTPUT_DIR/sub-*/log/ and report it")
        Path(error_dir).mkdir(parents=True, exist_ok=True)
        Path(error_dir, f"{job['name']}_{step}.json").write_text(json.dumps({"code": code, "message": msg}))
        raise


def job_path(job: dict[str, Any], key: str) -> Path:
    """An output path of a job (stored relative to the output folder)."""
    return Path(job["output_dir"]) / job[key]


def is_current(path: Path, settings_hash: str) -> bool:
    """True when ``path`` and its sidecar exist and were made with the same settings."""
    side = outputs.sidecar_of(path)
    if not (path.is_file() and side.is_file()):
        return False
    try:
        return json.loads(side.read_text()).get("SettingsHash") == settings_hash
    except (OSError, json.JSONDecodeError):
        return False


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


def embed_step(job: dict[str, Any], timeseries: str | None) -> str | None:
    """Embed one run's model-ready series with the teacher encoder and write the table."""
    if timeseries is None:
        return None
    from bids_semantoks.embed import embed_series, embedding_frame
    from bids_semantoks.model import load_encoder

    ts_path = Path(timeseries)
    out_path = job_path(job, "embedding_path")
    model = job["model"]
    atlas = job["atlas"]
    data = pd.read_csv(ts_path, sep="\t", na_values=["n/a"]).to_numpy(dtype=np.float64)
    device = model["device"]
    torch = _torch(job["omp_nthreads"])
    encoder = load_encoder(model["path"], network_map=np.asarray(atlas["channel_networks"]), data_dir=model.get("data_dir"))
    encoder = encoder.to(device).eval()
    emb = embed_series(
        encoder, data, atlas["names"], atlas["networks"], np.asarray(atlas["channel_networks"]),
        tr=job["settings"]["target_tr"], n_crops=job["settings"]["n_crops"],
        batch_size=job["settings"]["batch_size"], device=device, save_tokens=job["settings"]["save_tokens"],
    )
    for msg in emb.warnings:
        LOGGER.warning("%s: %s", ts_path.name, msg)
    frame = embedding_frame(emb)
    dim = emb.features.shape[1] // 2
    sidecar = {
        "Description": "Brain-Semantoks teacher-encoder embedding per 100-TR crop: cls_avg = "
        "[mean of the patch tokens (avg_*), CLS token (cls_*)].",
        "Model": model["label"],
        "ModelSource": model["source"],
        "ModelSha256": model.get("sha256"),
        "ModelIsRandomDemo": bool(model.get("is_demo", False)),
        "FeatureLayout": {"avg": [f"avg_0000", f"avg_{dim - 1:04d}"], "cls": [f"cls_0000", f"cls_{dim - 1:04d}"]},
        "EmbeddingDimension": int(emb.features.shape[1]),
        "CropLength": 100,
        "CropOnsets": emb.onsets.tolist(),
        "ZeroPadded": emb.padded,
        "Warnings": emb.warnings,
        "MaskedNetworks": emb.masked_networks,
        "ZeroFilledRegions": emb.zero_filled_regions,
        "Device": str(device),
        "Precision": "float32",
        "TorchVersion": torch.__version__,
        "Sources": [_source(job["output_dir"], ts_path).replace("bids:input:", "bids::")],
        "SettingsHash": job["embedding_hash"],
        "SoftwareVersion": __version__,
    }
    outputs.write_tsv(out_path, frame, float_format="%.7g")
    outputs.write_json(outputs.sidecar_of(out_path), sidecar)
    if emb.tokens is not None:
        tok_path = out_path.with_name(out_path.name.replace("_embedding.tsv", "_tokens.npz"))
        with outputs.atomic_path(tok_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, tokens=emb.tokens, networks=np.array(atlas["networks"]), onsets=emb.onsets)
        outputs.write_json(outputs.sidecar_of(tok_path), {
            "Description": "Per-network token embeddings (mean over the 5 patches) per crop: [crop, network, D].",
            "Networks": list(atlas["networks"]), "Model": model["label"], "SettingsHash": job["embedding_hash"],
        })
    return str(out_path)


def _torch(nthreads: int):
    import torch

    torch.set_num_threads(max(1, int(nthreads)))
    return torch


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
