"""Our model folder layout: ``model.safetensors`` (weights) + ``config.json`` (architecture).

``config.json`` = ``{"format": "bids_semantoks-encoder", "format_version": 1,
"config": <EncoderConfig>, "metadata": {...}}``. Both files are written to a temporary
name in the folder and moved into place with ``os.replace`` (weights first, config
last), so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bids_semantoks.errors import DataError
from bids_semantoks.model.checkpoint import ModelNotAvailable, _one_line, load_state_checked
from bids_semantoks.model.config import EncoderConfig
from bids_semantoks.model.encoder import Encoder

__all__ = ["save_encoder", "load_folder", "FORMAT"]

FORMAT = "bids_semantoks-encoder"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _replace_atomic(folder: Path, name: str, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: a model written in a container must stay readable
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_encoder(encoder: Encoder, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` atomically.

    Parameters
    ----------
    encoder : Encoder
        Model to save (its state dict, buffers included).
    folder : str or Path
        Target folder; created when missing; existing files are replaced.
    metadata : dict, optional
        JSON-serialisable provenance stored under ``"metadata"`` in ``config.json``.

    Returns
    -------
    Path
        The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    doc = {"format": FORMAT, "format_version": 1, "config": encoder.config.model_dump(), "metadata": metadata or {}}
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    _replace_atomic(folder, WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    _replace_atomic(folder, CONFIG, lambda tmp: Path(tmp).write_text(text))
    return folder


def load_folder(folder: str | Path) -> Encoder:
    """Load an encoder saved by :func:`save_encoder` (eval mode).

    Raises
    ------
    ModelNotAvailable
        Folder or one of its two files missing.
    DataError
        Unreadable/truncated weights, invalid config, or weights that do not fit it.
    """
    folder = Path(folder)
    cfg_path, weights = folder / CONFIG, folder / WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            raise ModelNotAvailable(f"{p}: missing; a model folder needs {WEIGHTS} and {CONFIG} (save_encoder writes both)")
    try:
        doc = json.loads(cfg_path.read_text())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"'format' is not {FORMAT!r}")
        config = EncoderConfig.model_validate(doc["config"])
    except (ValueError, KeyError, ValidationError) as exc:
        raise DataError(f"{cfg_path}: not a valid encoder config ({_one_line(exc)}); write it with save_encoder") from None
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{weights}: cannot read the weights, the file is truncated or corrupt ({_one_line(exc)})") from None
    encoder = Encoder(config)
    load_state_checked(encoder, state, weights)
    return encoder.eval()
