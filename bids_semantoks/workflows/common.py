"""What the levels share: folders, the atlas and the model of a run of the app, checked.

Nothing here writes outputs; each check fails with a one-line :class:`BidsAppError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from bids_semantoks.bids import outputs
from bids_semantoks.config import Settings
from bids_semantoks.errors import BidsAppError, DataError, MissingInputError, OutputError, UsageError
from bids_semantoks.workflows.jobs import AtlasInfo, ModelInfo

LOGGER = logging.getLogger("bids_semantoks")


def work_dir(settings: Settings) -> Path:
    return Path(settings.run.work_dir or Path(settings.output_dir) / "work").resolve()


# -- atlas ---------------------------------------------------------------------------
def resolve_atlas(settings: Settings) -> tuple[Any, AtlasInfo]:
    """The atlas of this run (as the registry resolved it) and its description for the jobs."""
    from bids_semantoks.atlas import registry

    st = settings.participant
    need_image = st.input_type == "fmriprep"
    if st.atlas == "default":
        if need_image:
            resolved = registry.get_default_atlas(st.space, data_dir=settings.run.data_dir)
        else:
            table = registry.get_default_table(data_dir=settings.run.data_dir)
            resolved = registry.ResolvedAtlas(table=table, dseg_img_path=None, space=None, sources=[], citation="")
    else:
        resolved = registry.get_user_atlas(Path(st.atlas), st.space if need_image else None, need_image)
    table = resolved.table
    dseg = getattr(resolved, "dseg_img_path", None)
    desc = AtlasInfo(
        label=table.label,
        names=tuple(table.names),
        indices=tuple(int(i) for i in table.indices),
        networks=tuple(table.networks),
        channel_networks=tuple(int(i) for i in table.network_index.tolist()),
        dseg=str(dseg) if dseg else None,
        dseg_sha=_sha256(Path(dseg)) if dseg else None,
        sources=tuple(getattr(resolved, "sources", []) or []),
    )
    return resolved, desc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- model ---------------------------------------------------------------------------
def resolve_model(settings: Settings, cache_dir: Path | None = None) -> ModelInfo | None:
    """Find the model and its identity (label, source, sha256): what the up-to-date keys need.

    No encoder is built here (and, for a model file or folder, torch is not imported), so a
    rerun with nothing to do stays cheap and a pool of processes can still be forked; whether
    the model fits the atlas is checked by :func:`load_checked_encoder` when some run needs
    embedding. The sha256 of a file is remembered in ``cache_dir`` (when it exists) by (path,
    size, mtime).
    """
    spec = settings.participant.model
    if spec.lower() == "none":
        return None
    data_dir = settings.run.data_dir
    if spec == "official":  # label "official" only for bytes shown to be the release (model/hub.py)
        from bids_semantoks.model.hub import official_provenance

        prov = official_provenance(data_dir)
        path, label, source, is_demo, sha = Path(prov.path), prov.label, prov.source, False, prov.sha256
    else:
        path = Path(spec).expanduser().resolve()
        if not path.exists():
            raise MissingInputError(f"{path}: model not found; pass 'official', 'none', a checkpoint or a model folder")
        source = str(path)
        meta: dict[str, Any] = {}
        if path.is_dir() and (path / "config.json").is_file():
            try:
                meta = json.loads((path / "config.json").read_text())
            except (ValueError, OSError) as exc:
                raise DataError(f"{path / 'config.json'}: unreadable model config ({exc}); "
                                "copy the model folder again") from None
        is_demo = bool(meta.get("metadata", {}).get("demo", False) or meta.get("demo", False))
        label = outputs.sanitize_label(path.name if path.is_dir() else path.stem)
        weights = path if path.is_file() else path / "model.safetensors"
        if not weights.is_file():
            raise MissingInputError(f"{weights}: model weights not found; copy the model folder again "
                                    "or pass a checkpoint file")
        sha = sha256_cached(weights, cache_dir)
    return ModelInfo(label=label, path=str(path), source=source, sha256=sha, is_demo=is_demo,
                     device=settings.participant.device, data_dir=str(data_dir) if data_dir else None)


def sha256_cached(path: Path, cache_dir: Path | None) -> str:
    """sha256 of ``path``, remembered in ``cache_dir/model_sha256.json`` by (path, size, mtime_ns)."""
    st = path.stat()
    key = [str(path), st.st_size, st.st_mtime_ns]
    record = Path(cache_dir, "model_sha256.json") if cache_dir and Path(cache_dir).is_dir() else None
    known: list = []
    if record is not None:
        try:
            known = json.loads(record.read_text())
        except (OSError, ValueError):
            known = []
        for entry in known if isinstance(known, list) else []:
            if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("sha256"), str):
                return entry["sha256"]
    sha = _sha256(path)
    if record is not None:
        keep = [e for e in known if isinstance(e, dict) and isinstance(e.get("key"), list)
                and e["key"][:1] != key[:1]][-15:] if isinstance(known, list) else []
        try:
            outputs.write_text(record, json.dumps(keep + [{"key": key, "sha256": sha}]) + "\n")
        except (OSError, BidsAppError):
            pass  # a cache only
    return sha


def load_checked_encoder(model: ModelInfo, atlas: AtlasInfo, threads: int | None = None) -> tuple[ModelInfo, Any]:
    """Load the encoder and check it fits the atlas; the model with its device resolved, and the
    encoder in eval mode on that device.

    Raises
    ------
    UsageError
        The model was trained for another number of regions or network grouping (exit 64), or
        ``--device cuda`` without a CUDA device.
    """
    import numpy as np
    import torch

    from bids_semantoks.model import load_encoder

    if threads:
        torch.set_num_threads(max(1, int(threads)))
    path = Path(model.path)
    device = model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    encoder = load_encoder(path, network_map=np.asarray(atlas.channel_networks), data_dir=model.data_dir)
    n_channels = len(encoder.config.channel_networks)
    if n_channels != len(atlas.names):
        raise UsageError(
            f"{path}: the model expects {n_channels} regions but atlas '{atlas.label}' has "
            f"{len(atlas.names)}; use the atlas the model was trained with, or pre-train a model for this atlas"
        )
    if list(encoder.config.channel_networks) != list(atlas.channel_networks):
        raise UsageError(
            f"{path}: the model's network grouping differs from atlas '{atlas.label}'; "
            "use the atlas the model was trained with"
        )
    if model.is_demo:
        LOGGER.warning("model %s is a DEMO model with random weights: its embeddings mean nothing", model.label)
    return replace(model, device=device), encoder.to(device).eval()


def check_output_dir(output_dir: Path, what: str = "OUTPUT_DIR") -> None:
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create {what} ({exc.strerror}); choose a writable folder") from exc
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"{output_dir}: {what} is not writable; fix its permissions or choose another folder")


def citation(resolved, model: ModelInfo | None) -> str:
    from bids_semantoks import __version__

    text = [f"# How these data were processed\n\nRegional time series and embeddings were computed with "
            f"bids_semantoks {__version__}.\n"]
    cit = getattr(resolved, "citation", "") or ""
    if cit:
        text.append(cit.strip() + "\n")
    if model is not None:
        text.append(
            "Embeddings were computed with the Brain-Semantoks teacher encoder (Gijsen, Schulz & Ritter, "
            "'Brain-Semantoks: Learning Semantic Tokens of Brain Dynamics with a Self-Distilled Foundation "
            f"Model', ICLR 2026, arXiv:2512.11582); model '{model.label}', sha256 {model.sha256}.\n"
        )
    return "\n".join(text)
