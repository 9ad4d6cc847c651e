"""Settings: one nested pydantic model for every level, loadable from TOML/YAML/JSON.

:class:`Settings` holds one section per concern, each a typed model whose fields carry
their meaning (``Field(description=...)``):

========================  ======================================================
``participant``           :class:`ParticipantSettings` (discovery, extraction, embedding)
``run``                   :class:`RunSettings` (execution: folders, processes, threads)
``group``                 :class:`GroupOptions` (probes; ``[group]`` in a config file)
``pretrain``              :class:`PretrainOptions` (self-distillation; ``[pretrain]``)
========================  ======================================================

Everything is validated when the settings are built (:func:`build_settings`), before any
level starts: a bad value is one line naming the setting (and the option or config file it
came from), exit 64. Precedence: command-line options > ``--config-file`` > defaults below.
The resolved settings are written next to the outputs (``sub-<label>/log/`` for
participant jobs, ``group/`` and ``models/<name>/`` for the other levels) so every
derivative can be traced to the exact settings that produced it.

This module imports no numerical library (numpy, torch): the command line builds the
settings, limits the threads of BLAS/OpenMP from ``--omp-nthreads``, and only then imports
them (the thread variables are read once, when those libraries load).

Default denoising strategy: ``simple`` (nilearn preset: 6 motion parameters +
derivatives/squares, mean WM and CSF, high-pass via fMRIPrep cosines). The
model was pre-trained on continuous UK Biobank runs without scrubbing, and a
model window is a *contiguous* 200 s crop: censoring volumes (``scrubbing``)
splices distant time points into one window, so it is opt-in. ``simple`` removes
the dominant motion and physiological confounds without global signal
regression, which keeps the network covariance the tokenizer sees.
"""

from __future__ import annotations

import codecs
import difflib
import functools
import hashlib
import importlib.util
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bids_semantoks.errors import DataError, MissingInputError, UsageError
from bids_semantoks.extract.denoise import strategy_names

__all__ = [
    "DENOISE_STRATEGIES", "SPACES", "ParticipantSettings", "RunSettings", "GroupOptions", "PretrainOptions",
    "Settings", "build_settings", "read_config_file", "read_filter_json", "read_user_text", "available_cpus",
]

DENOISE_STRATEGIES = strategy_names()  # the presets in bids_semantoks/data/denoise/, listed once
SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
#: BIDS labels are alphanumeric (BIDS specification, "Entities").
_LABEL = re.compile(r"[A-Za-z0-9]+")
_UTF16_32_BOMS = {codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32",
                  codecs.BOM_UTF16_LE: "UTF-16", codecs.BOM_UTF16_BE: "UTF-16"}


# -- small helpers (no numerical imports) ----------------------------------------------------
def read_user_text(path: str | Path, what: str) -> str:
    """Text of a file the user wrote (config, label list, filter file), as UTF-8.

    A UTF-8 byte-order mark (Windows editors, Excel) is dropped. UTF-16/32 files and other
    non-UTF-8 bytes are refused with one line naming the file and the fix.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        What the file is, for the message (e.g. ``"config file"``).

    Returns
    -------
    str

    Raises
    ------
    DataError
        The file is not UTF-8 text (exit 65).
    """
    path = Path(path)
    data = path.read_bytes()
    for bom, name in _UTF16_32_BOMS.items():  # UTF-32-LE starts with the UTF-16-LE mark: longest first
        if data.startswith(bom):
            raise DataError(f"{path}: the {what} is {name}-encoded; save it as UTF-8 text")
    if b"\x00" in data:  # UTF-16/32 without a byte-order mark (ASCII in it is valid UTF-8 with NULs)
        raise DataError(f"{path}: the {what} is not UTF-8 text (it holds NUL bytes, as UTF-16 does); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None


@functools.lru_cache(maxsize=1)
def pybids_entities() -> frozenset[str]:
    """Entity names pybids knows with the ``bids`` + ``derivatives`` configs (what discovery uses).

    Read from pybids' own configuration files without importing pybids (which imports numpy);
    empty when pybids is not installed (then filters are not checked here).
    """
    spec = importlib.util.find_spec("bids")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    names: set[str] = set()
    for config in ("bids.json", "derivatives.json"):
        path = Path(spec.submodule_search_locations[0], "layout", "config", config)
        try:
            names |= {e["name"] for e in json.loads(path.read_text())["entities"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return frozenset(names)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what a container or SLURM gives it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _value_error_text(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


# -- participant ---------------------------------------------------------------------------
class ParticipantSettings(BaseModel):
    """Settings of discovery, extraction and embedding (participant level)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    participant_label: list[str] = Field(default_factory=list, description="subjects to process (no 'sub-')")
    session_label: list[str] = Field(default_factory=list, description="sessions to process (no 'ses-')")
    task_id: list[str] = Field(default_factory=list, description="tasks to process (no 'task-')")
    bids_filters: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="fMRIPrep-style filters, query -> {entity: value}: {'bold': {'acquisition': 'x'}}; "
        "entities are pybids' names (acquisition, run, echo, res, desc, ...)",
    )
    space: str = Field("MNI152NLin2009cAsym", description="template space of the BOLD runs")
    input_type: Literal["fmriprep", "timeseries"] = Field(
        "fmriprep", description="fMRIPrep derivatives, or XCP-D-style *_timeseries.tsv files"
    )
    atlas: str = Field("default", description="'default' (model atlas) or a user _dseg.tsv path")
    denoise_strategy: Literal[DENOISE_STRATEGIES] = Field(
        "simple", description="nilearn confound preset"
    )
    fd_thresh: float = Field(0.5, ge=0, description="framewise displacement threshold (mm) for scrubbing")
    std_dvars_thresh: float = Field(1.5, ge=0, description="standardised DVARS threshold for scrubbing")
    min_time: float = Field(
        100.0, ge=0, description="runs with less retained time (s) than this are dropped (0 keeps all)"
    )
    lower_bpf: float = Field(0.01, ge=0, description="high-pass cut-off (Hz); 0 disables")
    upper_bpf: float = Field(0.1, ge=0, description="low-pass cut-off (Hz); 0 disables")
    force_bandpass: bool = Field(
        False, description="band-pass even a series whose sidecar says it is filtered already (e.g. XCP-D outputs)"
    )
    target_tr: float = Field(
        2.0, ge=0.1, le=10.0,
        description="repetition time of the model input (s), 0.1-10; the released model was trained at 2.0",
    )
    min_coverage: float = Field(
        0.5, ge=0, le=1, description="regions with less of their voxels inside the brain mask become n/a"
    )
    model: str = Field("official", description="'official', 'none', or a checkpoint file / model folder")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' = cuda when available")
    batch_size: int = Field(64, ge=1, description="crops per forward pass of the encoder")
    save_tokens: bool = Field(False, description="also write the per-network token embeddings")
    n_crops: int = Field(8, ge=1, description="evenly spaced 100-TR crops per run")

    @field_validator("participant_label", "session_label", "task_id", mode="before")
    @classmethod
    def _strip_prefix(cls, v, info):
        if v is None:
            return []
        if isinstance(v, (str, int)):
            v = [v]
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"expected a list of labels, got {type(v).__name__}")
        prefix = {"participant_label": "sub-", "session_label": "ses-", "task_id": "task-"}[info.field_name]
        out = []
        for item in v:
            item = str(item).replace("\ufeff", "").strip()
            if item.startswith(prefix):
                item = item[len(prefix):]
            if item and not _LABEL.fullmatch(item):
                raise ValueError(f"{item!r} is not a BIDS label (letters and digits only, '{prefix}' optional)")
            if item and item not in out:
                out.append(item)
        return out

    @field_validator("bids_filters")
    @classmethod
    def _check_entities(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        valid = pybids_entities()
        if not valid:
            return v
        for query, filters in v.items():
            unknown = sorted(set(filters) - valid)
            if unknown:
                raise ValueError(
                    f"unknown entity {unknown[0]!r} in the {query!r} filters; valid entities: {', '.join(sorted(valid))}"
                )
        return v

    @field_validator("upper_bpf")
    @classmethod
    def _check_band(cls, v, info):
        low = info.data.get("lower_bpf", 0)
        if v and low and v <= low:
            raise ValueError(f"--upper-bpf ({v}) must be above --lower-bpf ({low}), or 0 to disable")
        return v


# -- execution -------------------------------------------------------------------------------
class RunSettings(BaseModel):
    """Settings of the execution (not of the results: they do not enter the settings hash)."""

    model_config = ConfigDict(extra="forbid")

    work_dir: Path | None = Field(None, description="working directory (pybids database, locks, failure records); default OUTPUT_DIR/work")
    bids_database_dir: Path | None = Field(None, description="pybids database folder; default under the work dir")
    data_dir: Path | None = Field(None, description="data cache (atlases, weights)")
    nprocs: int = Field(1, ge=1, description="parallel processes")
    omp_nthreads: int | None = Field(
        None, ge=1,
        description="threads per process for BLAS, OpenMP and torch; default: $OMP_NUM_THREADS when set, "
        "else the CPUs available divided by nprocs (at least 1)",
    )
    verbose: int = Field(0, ge=0, description="logging verbosity (-v, -vv)")
    overwrite: bool = Field(False, description="recompute outputs that already exist")
    notrack: bool = Field(False, description="accepted for compatibility; nothing is ever sent")

    @model_validator(mode="after")
    def _default_threads(self) -> "RunSettings":
        if self.omp_nthreads is None:
            env = os.environ.get("OMP_NUM_THREADS", "").strip()
            self.omp_nthreads = int(env) if env.isdigit() and int(env) > 0 else max(1, available_cpus() // self.nprocs)
        return self


# -- group -------------------------------------------------------------------------------------
FeatureName = Literal["semantoks", "fc"]
TargetType = Literal["classification", "regression"]


class GroupOptions(BaseModel):
    """Every setting of the group level (linear probes of embeddings and connectomes).

    Defaults and why
    ----------------
    * ``cv_folds=5``, ``cv_repeats=5``: 5-fold keeps 80 % of the subjects for
      training (small cohorts need it) and five repeats with different shuffles
      average out most of the split-to-split variance, which for cohorts of a few
      hundred subjects is larger than the differences users look for
      (Varoquaux 2018, "Cross-validation failure"). 25 fits stay cheap for
      linear models.
    * ``inner_folds=5``: the regularisation is chosen by a 5-fold CV on the
      training subjects of each outer fold only (nested CV).
    * ``n_permutations=0``: a permutation test reruns the whole CV that many
      times; it is opt-in.
    * ``sentinel_values=[-9999, -999]``: the codes used for "missing" in ABIDE,
      ADHD-200 and many other phenotype sheets. 999 is deliberately not in the
      list: it is a plausible value of many scores.
    * ``max_missing_roi_fraction=0.1``: a subject whose time series lack more
      than 10 % of the regions is left out of ``fc`` (and, to keep the
      comparison paired, of every feature set); the regions missing in any
      remaining subject are masked for everyone.

    Each field's meaning is its ``description``; the command-line option is named there.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    targets: list[str] = Field(
        default_factory=list, description="phenotype columns to predict (--target, repeatable); at least one"
    )
    target_types: dict[str, TargetType] = Field(
        default_factory=dict, description="task per target when not inferred (--target-type COL=TYPE)"
    )
    confounds: list[str] = Field(
        default_factory=list,
        description="phenotype columns regressed out of the features inside the CV folds (--confounds); "
        "categorical columns are one-hot encoded",
    )
    features: list[FeatureName] | None = Field(
        None,
        description="feature sets to compare (--features); None: every set whose inputs are found "
        "(embeddings -> semantoks, time series -> fc)",
    )
    fc_kind: Literal["correlation", "tangent"] = Field(
        "correlation", description="connectome of 'fc' (--fc-kind), nilearn ConnectivityMeasure"
    )
    semantoks_protocol: Literal["subject_mean", "crops"] = Field(
        "subject_mean",
        description="subject_mean: one sample per subject, the mean cls_avg embedding; crops: the authors' "
        "protocol, every crop a training sample and predictions averaged per subject (--probe-protocol)",
    )
    cv_folds: int = Field(5, ge=2, description="outer repeated (stratified) K-fold: folds (--cv-folds)")
    cv_repeats: int = Field(5, ge=1, description="outer repeats (--cv-repeats)")
    cv_groups: str | None = Field(
        None,
        description="phenotype column of groups, e.g. site: leave-one-group-out when there are at most "
        "cv_folds groups, else repeated group K-fold (--cv-groups)",
    )
    inner_folds: int = Field(5, ge=2, description="folds of the inner CV that picks the regularisation")
    n_permutations: int = Field(0, ge=0, description="label permutations for a p-value (0: none) (--n-permutations)")
    seed: int = Field(0, description="seed of every shuffle (--random-seed)")
    phenotypes: Path | None = Field(None, description="extra TSV/CSV keyed by participant_id (--phenotypes)")
    raw_dir: Path | None = Field(
        None, description="raw BIDS dataset with participants.tsv and phenotype/ (--derivatives raw=PATH)"
    )
    model_label: str | None = Field(
        None, description="desc label of the embeddings (--model-label); None: 'official' when present, else the only one"
    )
    atlas: str | None = Field(
        None, description="atlas label of the inputs; None: from --atlas, else the embeddings', else the only one"
    )
    timeseries_desc: str | None = Field(None, description="desc label of the time series when OUTPUT_DIR holds several")
    sentinel_values: list[float] = Field(
        default_factory=lambda: [-9999.0, -999.0], description="numeric codes treated as missing in phenotypes"
    )
    max_missing_roi_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="subjects missing more of the regions are left out (see above)"
    )
    n_jobs: int | None = Field(
        None, description="parallel workers over CV folds (joblib); default --nprocs (None in the API: every CPU)"
    )

    @field_validator("targets", "confounds")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(v.strip() for v in value if v.strip()))

    @field_validator("features")
    @classmethod
    def _features_unique(cls, value):
        if value is None:
            return None
        if not value:
            raise ValueError("features must name at least one of 'semantoks', 'fc'")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _check_types(self) -> "GroupOptions":
        unknown = sorted(set(self.target_types) - set(self.targets))
        if unknown:
            raise ValueError(f"--target-type given for {unknown} which are not --target columns")
        overlap = sorted(set(self.targets) & set(self.confounds))
        if overlap:
            raise ValueError(f"{overlap} cannot be both a target and a confound")
        return self


# -- pretrain ------------------------------------------------------------------------------------
class PretrainOptions(BaseModel):
    """All settings of a pre-training run (defaults = the paper's recipe, MODEL_SPEC section 5).

    Each field has its meaning in ``Field(description=...)``. The peak learning rate
    (reached after the warm-up) is ``lr`` if given, else ``base_lr * batch_size / 256``
    (the spec's 7e-4 x batch/256); the command line's ``--lr`` sets ``base_lr``.
    Presets and files: :func:`bids_semantoks.pretrain.options.load_options`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # --- run -----------------------------------------------------------------------
    name: str = Field("pretrained", description="Model folder name: OUTPUT_DIR/models/<name>/ (--model-name).")
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
    epochs: int = Field(100, gt=0, description="Passes over the selected subjects.")
    batch_size: int = Field(512, gt=0, description="Global batch (all processes together), drop_last.")
    base_lr: float = Field(
        7e-4, gt=0,
        description="LR per 256 samples (--lr): peak LR = base_lr * batch_size / 256 (the spec: 7e-4, 1.4e-3 at 512).",
    )
    lr: float | None = Field(
        None, gt=0, description="Absolute peak LR, overriding the base_lr scaling when set (config files only)."
    )
    min_lr: float = Field(0.0, ge=0, description="LR at the end of the cosine.")
    warmup_epochs: float = Field(3.0, ge=0, description="Linear LR warm-up from 0, in epochs.")
    weight_decay_start: float = Field(0.05, ge=0, description="Weight decay at step 0 (cosine to the end value).")
    weight_decay_end: float = Field(0.3, ge=0, description="Weight decay at the last step.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
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
    compile: bool | Literal["auto", "step"] = Field(
        "auto",
        description="torch.compile the student and teacher encoders: 'auto' = on CUDA (1.6x faster steps on an "
        "H100, ~1 min of compilation, falls back to eager if compilation fails), never on CPU; true/false force it; "
        "'step' (CUDA, experimental, not yet measured on a GPU) also compiles the loss assembly.",
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
        from bids_semantoks.pretrain.checkpoint import atomic_write_text  # never a half-written file

        atomic_write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False), Path(path))


# -- everything ------------------------------------------------------------------------------------
class Settings(BaseModel):
    """Everything one invocation of ``bids_semantoks`` needs, every level's section typed."""

    model_config = ConfigDict(extra="forbid")

    bids_dir: Path
    output_dir: Path
    analysis_level: Literal["participant", "group", "pretrain"]
    participant: ParticipantSettings = Field(default_factory=ParticipantSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    group: GroupOptions = Field(default_factory=GroupOptions)
    pretrain: PretrainOptions = Field(default_factory=PretrainOptions)

    @model_validator(mode="after")
    def _group_jobs(self) -> "Settings":
        if "n_jobs" not in self.group.model_fields_set:  # the CV folds use the processes given with --nprocs
            self.group.n_jobs = self.run.nprocs
        return self

    def results_hash(self) -> str:
        """Hash of the settings that determine participant outputs (not paths or CPU counts)."""
        payload = self.participant.model_dump(
            mode="json", exclude={"participant_label", "session_label", "device", "batch_size"}
        )
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


SECTIONS: dict[str, type[BaseModel]] = {
    "participant": ParticipantSettings, "run": RunSettings, "group": GroupOptions, "pretrain": PretrainOptions,
}


# -- files -----------------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", type(None): "empty"}.get(type(value), type(value).__name__)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON settings file into nested dicts.

    The file mirrors :class:`Settings` sections, e.g. ``[participant]`` with
    ``denoise_strategy = "scrubbing"``, ``[group]``, ``[pretrain]``, ``[run]``; top-level
    keys are accepted without a section header and go to the one section that has such a
    setting (``participant`` for the names several sections share: ``atlas``, ``device``, ...).

    Raises
    ------
    MissingInputError
        No such file (66).
    DataError
        Not UTF-8 text, or not parsable (65).
    UsageError
        Unknown format, or a section that is not a table (64).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: config file not found; check the --config-file path")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise UsageError(f"{path}: unknown config format; use .toml, .yaml/.yml or .json")
    text = read_user_text(path, "config file")
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot parse config file ({str(exc).splitlines()[0]}); fix its syntax") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: config file must hold a table/mapping of settings")
    nested: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise UsageError(
                    f"{path}: '{key}' must be a section of settings ([{key}] in TOML, '{key}:' with indented "
                    f"keys in YAML), not {_kind(value)} ({value!r})"
                )
            nested.setdefault(key, {}).update(value)
    for key, value in data.items():
        if key not in SECTIONS:  # a top-level key: the one section that has it, else participant
            owners = [name for name, model in SECTIONS.items() if key in model.model_fields]
            nested.setdefault(owners[0] if len(owners) == 1 else "participant", {})[key] = value
    return nested


def read_filter_json(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read an fMRIPrep-style ``--bids-filter-file`` as plain JSON (``null``/``"*"`` kept as they are).

    The entity names are checked when the settings are built; the pybids translation of
    ``null``/``"*"`` happens where the files are queried.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: filter file not found; check --bids-filter-file")
    try:
        filters = json.loads(read_user_text(path, "filter file"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: invalid JSON in filter file (line {exc.lineno}: {exc.msg}); fix the syntax") from exc
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(f'{path}: filter file must map query names to entity filters, e.g. {{"bold": {{"task": "rest"}}}}')
    return filters


# -- building --------------------------------------------------------------------------------------
def build_settings(
    bids_dir: Path,
    output_dir: Path,
    analysis_level: str,
    cli: dict[str, dict[str, Any]],
    config_file: Path | None = None,
    flags: dict[str, str] | None = None,
) -> Settings:
    """Merge defaults, the config file and command-line values into :class:`Settings`.

    Parameters
    ----------
    cli : dict
        ``{"participant": {...}, "run": {...}, "group": {...}, "pretrain": {...}}`` with only
        the options the user actually gave (``None`` values are dropped).
    config_file : Path, optional
        TOML/YAML/JSON file (:func:`read_config_file`).
    flags : dict, optional
        ``"section.field"`` -> the command-line text that set it (``"--target-tr inf"``), for
        the error message.

    Raises
    ------
    UsageError
        One line naming the first invalid setting, where it came from, and what is wrong (64).
    """
    merged: dict[str, dict[str, Any]] = read_config_file(config_file) if config_file else {}
    from_cli: set[str] = set()
    for section, values in cli.items():
        for key, value in values.items():
            if value is None:
                continue
            merged.setdefault(section, {})[key] = value
            from_cli.add(f"{section}.{key}")
    if "pretrain.base_lr" in from_cli:  # --lr sets the base LR: an absolute lr from the file would hide it
        merged["pretrain"].pop("lr", None)
    try:
        return Settings(bids_dir=bids_dir, output_dir=output_dir, analysis_level=analysis_level, **merged)
    except ValidationError as exc:
        raise UsageError(_explain(exc.errors()[0], from_cli, config_file, flags or {})) from None


def _explain(err: dict[str, Any], from_cli: set[str], config_file: Path | None, flags: dict[str, str]) -> str:
    loc = [str(x) for x in err["loc"]]
    setting = ".".join(loc[:2])
    prefix, where = "", ""
    if setting in from_cli:
        where = f" ({flags.get(setting, '--' + loc[1].replace('_', '-'))})"
    elif config_file is not None:
        prefix = f"{config_file}: "
    if err["type"] == "extra_forbidden" and len(loc) == 2 and loc[0] in SECTIONS:
        names = list(SECTIONS[loc[0]].model_fields)
        close = difflib.get_close_matches(loc[1], names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"the [{loc[0]}] settings are: {', '.join(names)}"
        return f"{prefix}unknown setting '{setting}'{where}; {hint}"
    msg = _value_error_text(err["msg"])
    value = err.get("input")
    got = f" (got {value!r})" if isinstance(value, (int, float, str)) and err["type"] != "value_error" else ""
    return f"{prefix}invalid setting '{'.'.join(loc)}'{where}: {msg}{got}"
