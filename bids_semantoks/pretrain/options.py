"""Pre-training settings: one pydantic model, the paper's values as defaults, presets as data.

Every number of the recipe (MODEL_SPEC section 5) is a field of :class:`PretrainOptions`.
Settings are merged in this order, later wins:

1. the field defaults (the paper: ``base`` model, batch 512, 100 epochs, ...);
2. a named preset from :data:`PRESETS` (``paper``, ``small``, ``cpu-smoke``);
3. a YAML or TOML file (``--pretrain-config``), a flat mapping of field names;
4. command-line overrides (``--epochs``, ``--batch-size``, ``--lr``, ``--model-size`` ...).

Use :func:`load_options` for that merge. Unknown keys are rejected, so a typo in a
config file fails loudly instead of being ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bids_semantoks.errors import DataError, MissingInputError, UsageError

__all__ = ["PretrainOptions", "PRESETS", "load_options"]


class PretrainOptions(BaseModel):
    """All settings of a pre-training run (defaults = the paper's recipe).

    Attributes are grouped below; each has its meaning in ``Field(description=...)``.
    The effective peak learning rate is ``lr`` if given, else ``base_lr * batch_size / 256``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- run -----------------------------------------------------------------------
    name: str = Field("pretrained", description="Model folder name: OUTPUT_DIR/models/<name>/.")
    seed: int = Field(0, description="Seed of everything random (subject subset, batches, views, masks, init).")
    resume: bool = Field(False, description="Continue from OUTPUT_DIR/models/<name>/training/state.pt if present.")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")

    # --- data ----------------------------------------------------------------------
    train_fraction: float = Field(
        1.0, gt=0.0, le=1.0,
        description="Fraction of subjects used (seeded subset, at least one batch); for scaling analyses.",
    )
    data_dtype: Literal["float16", "float32"] = Field(
        "float16", description="In-memory dtype of the (z-scored) series; float16 halves the memory."
    )

    # --- model -----------------------------------------------------------------------
    model_size: Literal["tiny", "small", "base"] = Field("base", description="Encoder preset; base = released size.")
    model_overrides: dict[str, Any] = Field(
        default_factory=dict, description="EncoderConfig fields to override on the preset (e.g. dim, depth, heads)."
    )
    head_hidden: int = Field(1024, gt=0, description="Projection head hidden width.")
    head_out: int = Field(128, gt=0, description="Projection head output width p.")

    # --- optimisation ----------------------------------------------------------------
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(512, gt=0, description="Global batch (all processes together), drop_last.")
    base_lr: float = Field(7e-4, gt=0, description="LR per 256 subjects: peak LR = base_lr * batch_size / 256.")
    lr: float | None = Field(None, gt=0, description="Absolute peak LR; overrides base_lr scaling when set.")
    min_lr: float = Field(0.0, ge=0, description="LR at the end of the cosine.")
    warmup_epochs: float = Field(3.0, ge=0, description="Linear LR warm-up from 0, in epochs.")
    weight_decay_start: float = Field(0.05, ge=0)
    weight_decay_end: float = Field(0.3, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = Field(1.0, gt=0, description="Gradient-norm clip; None disables.")
    momentum_start: float = Field(0.99, ge=0, le=1, description="Teacher EMA momentum at step 0.")
    momentum_end: float = Field(1.0, ge=0, le=1, description="Teacher EMA momentum at the last step.")
    mixed_precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="'auto' = bf16 autocast on CUDA, fp32 on CPU."
    )

    # --- views and augmentation ------------------------------------------------------
    n_views: int = Field(2, ge=2, description="Random 100-TR crops per subject and step.")
    region_drop_max: float = Field(0.1, ge=0, le=1, description="Zero a U(0, max) fraction of regions (>= 1).")
    time_block_max: float = Field(0.3, ge=0, le=1, description="Zero one time block of U(0, max) of the crop (>= 1 TR).")
    scale_range: tuple[float, float] = Field((0.8, 1.2), description="Multiply each view by U(lo, hi).")
    noise_sd: float = Field(0.1, ge=0, description="Additive Gaussian noise SD.")

    # --- masking -----------------------------------------------------------------------
    mask_step_prob: float = Field(0.5, ge=0, le=1, description="Probability that a step uses masking.")
    temporal_mask_prob: float = Field(0.5, ge=0, le=1, description="P(temporal mask) vs network mask, per view.")
    mask_patches: tuple[int, int] = Field(
        (3, 4), description="Temporal mask: contiguous patches masked, uniform in [lo, hi], for 5 patches."
    )
    mask_networks: tuple[int, int] = Field(
        (5, 6), description="Network mask: networks masked, uniform in [lo, hi], for 9 networks (scaled to N)."
    )

    # --- losses -------------------------------------------------------------------------
    coding_rate_eps: float = Field(
        0.05, gt=0,
        description="epsilon of R(Z) = 1/2 logdet(I + p/(m eps) Z^T Z); the loss weights R by SimDINO's (p + m)/(p m).",
    )
    tok_loss_weight: float = Field(0.5, ge=0, description="Weight of the masked-token loss.")
    ttr_weight_start: float = Field(0.5, ge=0, description="TTR weight at step 0 (cosine to 0).")
    ttr_end_fraction: float = Field(0.05, ge=0, le=1, description="TTR weight reaches 0 after this fraction of steps.")

    # --- bookkeeping -------------------------------------------------------------------
    checkpoint_every: int = Field(10, gt=0, description="Write model + training state every N epochs (and at the end).")
    log_every: int = Field(20, gt=0, description="Steps between flushes of training_log.tsv / progress updates.")
    progress: bool = Field(True, description="Show a rich progress bar per epoch (rank 0).")
    collapse_erank: float = Field(
        2.0, ge=0, description="Warn when the effective rank of the teacher [CLS] projections drops below this."
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the student and teacher encoders: 'auto' = on CUDA (1.6x faster steps on an "
        "H100, ~1 min of compilation, falls back to eager if compilation fails), never on CPU; true/false force it.",
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"model name {value!r} must be letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> "PretrainOptions":
        for key in ("mask_patches", "mask_networks", "scale_range"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ValueError(f"{key}: low value {lo} exceeds high value {hi}")
        if min(self.mask_patches + self.mask_networks) < 1:
            raise ValueError("mask_patches and mask_networks must be >= 1")
        return self

    @property
    def peak_lr(self) -> float:
        """Peak learning rate after warm-up (``lr``, else ``base_lr * batch_size / 256``)."""
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256

    def to_file(self, path: str | Path) -> None:
        """Write the settings as YAML (reload with ``load_options(config_file=path)``)."""
        import yaml

        from bids_semantoks.pretrain.checkpoint import atomic_write_text  # never a half-written file

        atomic_write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False), Path(path))


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

            data = tomllib.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text()) or {}
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
    except Exception as exc:  # pydantic.ValidationError -> one line for the user
        msg = str(exc).replace("\n", "; ")
        raise UsageError(f"invalid pre-training settings: {msg}") from exc
