"""Pre-training settings: the paper's values as defaults, presets as data, files and overrides.

Every number of the recipe (MODEL_SPEC section 5) is a field of :class:`PretrainOptions`,
defined once in :mod:`bids_semantoks.config` (the ``pretrain`` section of the nested
:class:`~bids_semantoks.config.Settings`, ``[pretrain]`` in ``--config-file``) and re-exported
here. For the Python API, settings are merged in this order, later wins:

1. the field defaults (the paper: ``base`` model, batch 512, 100 epochs, ...);
2. a named preset from :data:`PRESETS` (``paper``, ``small``, ``cpu-smoke``);
3. a YAML or TOML file, a flat mapping of field names (or a ``[pretrain]`` table);
4. overrides by field name (``{"epochs": 3, "lr": 1e-3}``).

Use :func:`load_options` for that merge. Unknown keys are rejected, so a typo in a
config file fails loudly instead of being ignored. The app's command line builds the
same model through :func:`bids_semantoks.config.build_settings` (``[pretrain]`` of
``--config-file``, then ``--epochs``, ``--batch-size``, ``--lr`` = ``base_lr`` ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bids_semantoks.config import PretrainOptions, read_user_text
from bids_semantoks.errors import DataError, MissingInputError, UsageError

__all__ = ["PretrainOptions", "PRESETS", "load_options"]


#: Presets are plain data: field overrides on top of the defaults (the paper).
PRESETS: dict[str, dict[str, Any]] = {
    # The published recipe (UK Biobank, ~39k scans): every default unchanged.
    "paper": {},
    # A few hundred to a few thousand subjects (e.g. ABIDE): smaller model and batch,
    # more epochs because each epoch has few steps; LR keeps the batch/256 scaling.
    "small": {
        "model_size": "small",
        "batch_size": 64,
        "epochs": 100,
        "warmup_epochs": 5.0,
        "checkpoint_every": 20,
    },
    # Seconds on a laptop CPU: checks the plumbing, learns nothing useful.
    "cpu-smoke": {
        "model_size": "tiny",
        "batch_size": 8,
        "epochs": 2,
        "warmup_epochs": 0.5,
        "head_hidden": 64,
        "head_out": 32,
        "checkpoint_every": 1,
        "log_every": 1,
        "device": "cpu",
        "data_dtype": "float32",
    },
}


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingInputError(f"{path}: pre-training config file not found; pass an existing .yaml or .toml file")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(read_user_text(path, "pre-training config"))
        else:
            import yaml

            data = yaml.safe_load(read_user_text(path, "pre-training config")) or {}
    except DataError:
        raise
    except Exception as exc:  # parse errors of either format
        raise DataError(f"{path}: cannot parse pre-training config ({exc}); fix the YAML/TOML syntax") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: pre-training config must be a mapping of option names to values")
    return data.get("pretrain", data) if isinstance(data.get("pretrain"), dict) else data


def load_options(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> PretrainOptions:
    """Build :class:`PretrainOptions` from defaults, a preset, a file and overrides.

    Parameters
    ----------
    preset : str, optional
        Key of :data:`PRESETS` (``"paper"``, ``"small"``, ``"cpu-smoke"``).
    config_file : str or Path, optional
        YAML (``.yaml``/``.yml``) or TOML (``.toml``) file with option names as keys
        (optionally nested under a ``pretrain`` table).
    overrides : dict, optional
        Final overrides, e.g. from the command line; ``None`` values are ignored.

    Returns
    -------
    PretrainOptions

    Examples
    --------
    >>> load_options("cpu-smoke", overrides={"epochs": 3}).epochs
    3
    """
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"unknown pre-training preset {preset!r}; choose one of {sorted(PRESETS)}")
        merged.update(PRESETS[preset])
    if config_file is not None:
        merged.update(_read_config_file(Path(config_file)))
    if overrides:
        merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PretrainOptions(**merged)
    except ValidationError as exc:  # one line for the user
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "pretrain"
        raise UsageError(f"invalid pre-training setting '{where}': {err['msg'].removeprefix('Value error, ')}") from None
