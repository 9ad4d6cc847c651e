"""What the levels share: folders, the atlas and the model of a run of the app, checked.

Nothing here writes outputs; each check fails with a one-line :class:`BidsAppError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from bids_semantoks.bids import outputs
from bids_semantoks.config import Settings
from bids_semantoks.errors import DataError, MissingInputError, OutputError, UsageError
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
def resolve_model(settings: Settings, atlas: AtlasInfo) -> tuple[ModelInfo | None, Any]:
    """Find the model, check it fits the atlas; its description (for provenance) and the loaded
    encoder (reused by the participant level when it runs in this process)."""
    spec = settings.participant.model
    if spec.lower() == "none":
        return None, None
    import numpy as np
    import torch

    from bids_semantoks.model import load_encoder
    from bids_semantoks.model.hub import official_provenance

    data_dir = settings.run.data_dir
    if spec == "official":  # label "official" only for bytes shown to be the release (model/hub.py)
        prov = official_provenance(data_dir)
        path, label, source, is_demo = Path(prov.path), prov.label, prov.source, False
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
    encoder = load_encoder(path, network_map=np.asarray(atlas.channel_networks), data_dir=data_dir)
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
    device = settings.participant.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu or auto")
    sha = _sha256(path) if path.is_file() else _sha256(path / "model.safetensors")
    if is_demo:
        LOGGER.warning("model %s is a DEMO model with random weights: its embeddings mean nothing", label)
    info = ModelInfo(label=label, path=str(path), source=source, sha256=sha, is_demo=is_demo, device=device,
                     data_dir=str(data_dir) if data_dir else None)
    return info, encoder


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
