"""Checkpoints: the model folder (inference) and the resumable training state.

Layout of ``OUTPUT_DIR/models/<name>/``::

    model.safetensors, config.json     teacher encoder (save_encoder): all inference needs
    training/state.pt                  student, teacher, optimiser, RNG states, epoch, step
    training/options.yaml              the settings of the run
    training/training_log.tsv          one row per step
    training/epoch_log.tsv             one row per epoch (collapse watch)
    training/loss_curve.png

``training/`` can be deleted once training is over; the model folder stays loadable.
Every file is written to a temporary name in the same folder, flushed to disk and moved
over the old one with :func:`os.replace` (atomic on POSIX), so a process killed while
writing leaves the previous checkpoint intact. The schedules are not stored: they are
recomputed from the options, which must match for a resume (checked by fingerprint).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_semantoks.errors import DataError, OutputError, UsageError

__all__ = [
    "atomic_torch_save", "atomic_write_text", "rng_state", "set_rng_state", "load_state", "STATE_NAME",
    "save_training_state", "resume_training",
]

STATE_NAME = "training/state.pt"


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot write checkpoint ({exc}); check permissions and free space") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: outputs written in a container must stay readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` via a temporary file + ``os.replace``."""
    _atomic(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(text: str, path: Path) -> None:
    _atomic(path, lambda fh: fh.write(text.encode()))


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (CPU and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(path: Path) -> dict[str, Any]:
    """Load a training state written by :func:`atomic_torch_save` (CPU tensors).

    Read with ``weights_only=True`` (tensors, containers, and the numpy arrays of the RNG
    state only), so a planted file that would run code when unpickled is refused.
    """
    from torch.serialization import add_safe_globals

    core = getattr(np, "_core", None) or np.core
    # registered process-wide (idempotent): the `safe_globals` context manager swaps a global
    # list, so two threads loading at once could drop each other's entries and refuse a good file
    add_safe_globals([core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise DataError(
                f"{path}: refused: the training state holds pickled Python objects that could run code; "
                "delete it and start without --resume"
            ) from None
        msg = " ".join(str(exc).split())[:200]
        raise OutputError(f"{path}: unreadable training state ({msg}); delete it and start without --resume") from exc


def save_training_state(
    path: Path, *, epoch: int, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    fingerprint: dict[str, Any],
) -> None:
    """Write the resumable state (student, teacher, optimiser, RNG states) after ``epoch`` epochs.

    ``model`` is the :class:`~bids_semantoks.pretrain.meta_arch.SelfDistillation` (not a
    DistributedDataParallel wrapper), so the keys are the same on one or many processes.
    """
    atomic_torch_save(
        {
            "epoch": epoch,
            "step": step,
            "student": model.student.state_dict(),
            "teacher": model.teacher.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "fingerprint": fingerprint,
        },
        path,
    )


def resume_training(
    path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fingerprint: dict[str, Any]
) -> int:
    """Load the state at ``path`` into ``model`` and ``optimizer``, restore the RNGs.

    Returns
    -------
    int
        The number of epochs already done (where the run continues).

    Raises
    ------
    UsageError
        The state was written by a run with other settings or subjects (fingerprint).
    """
    state = load_state(path)
    if state["fingerprint"] != fingerprint:
        raise UsageError(
            f"{path}: saved run used other settings or subjects; resume with the same options, "
            "or start without --resume (after moving the folder)"
        )
    model.student.load_state_dict(state["student"])
    model.teacher.load_state_dict(state["teacher"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return int(state["epoch"])
