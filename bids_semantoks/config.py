"""Settings: one pydantic model for every level, loadable from TOML/YAML/JSON.

Precedence: command-line options > ``--config-file`` > defaults below. The
resolved settings are written next to the outputs (``sub-<label>/log/`` for
participant jobs, ``group/`` and ``models/<name>/`` for the other levels) so
every derivative can be traced to the exact settings that produced it.

Default denoising strategy: ``simple`` (nilearn preset: 6 motion parameters +
derivatives/squares, mean WM and CSF, high-pass via fMRIPrep cosines). The
model was pre-trained on continuous UK Biobank runs without scrubbing, and a
model window is a *contiguous* 200 s crop: censoring volumes (``scrubbing``)
splices distant time points into one window, so it is opt-in. ``simple`` removes
the dominant motion and physiological confounds without global signal
regression, which keeps the network covariance the tokenizer sees.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bids_semantoks.errors import DataError, MissingInputError, UsageError

DENOISE_STRATEGIES = ("simple", "scrubbing", "compcor", "ica_aroma", "none")
SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")


class ParticipantSettings(BaseModel):
    """Settings of discovery, extraction and embedding (participant level)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    participant_label: list[str] = Field(default_factory=list, description="subjects to process (no 'sub-')")
    session_label: list[str] = Field(default_factory=list, description="sessions to process (no 'ses-')")
    task_id: list[str] = Field(default_factory=list, description="tasks to process (no 'task-')")
    bids_filters: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fMRIPrep-style filters: {'bold': {'acquisition': 'x'}}"
    )
    space: str = Field("MNI152NLin2009cAsym", description="template space of the BOLD runs")
    input_type: Literal["fmriprep", "timeseries"] = "fmriprep"
    atlas: str = Field("default", description="'default' (model atlas) or a user _dseg.tsv path")
    denoise_strategy: Literal["simple", "scrubbing", "compcor", "ica_aroma", "none"] = "simple"
    fd_thresh: float = Field(0.5, ge=0, description="framewise displacement threshold (mm) for scrubbing")
    std_dvars_thresh: float = Field(1.5, ge=0, description="standardised DVARS threshold for scrubbing")
    min_time: float = Field(
        100.0, ge=0, description="runs with less retained time (s) than this are dropped (0 keeps all)"
    )
    lower_bpf: float = Field(0.01, ge=0, description="high-pass cut-off (Hz); 0 disables")
    upper_bpf: float = Field(0.1, ge=0, description="low-pass cut-off (Hz); 0 disables")
    target_tr: float = Field(2.0, gt=0, description="repetition time of the model input (s)")
    min_coverage: float = Field(
        0.5, ge=0, le=1, description="regions with less of their voxels inside the brain mask become n/a"
    )
    model: str = Field("official", description="'official', 'none', or a checkpoint file / model folder")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, ge=1)
    save_tokens: bool = False
    n_crops: int = Field(8, ge=1, description="evenly spaced 100-TR crops per run")

    @field_validator("participant_label", "session_label", "task_id", mode="before")
    @classmethod
    def _strip_prefix(cls, v, info):
        if v is None:
            return []
        if isinstance(v, str):
            v = [v]
        prefix = {"participant_label": "sub-", "session_label": "ses-", "task_id": "task-"}[info.field_name]
        out = []
        for item in v:
            item = str(item).strip()
            if item.startswith(prefix):
                item = item[len(prefix):]
            if item and item not in out:
                out.append(item)
        return out

    @field_validator("upper_bpf")
    @classmethod
    def _check_band(cls, v, info):
        low = info.data.get("lower_bpf", 0)
        if v and low and v <= low:
            raise ValueError(f"--upper-bpf ({v}) must be above --lower-bpf ({low}), or 0 to disable")
        return v


class RunSettings(BaseModel):
    """Settings of the execution (not of the results: they do not enter the settings hash)."""

    model_config = ConfigDict(extra="forbid")

    work_dir: Path | None = None
    bids_database_dir: Path | None = None
    data_dir: Path | None = None
    nprocs: int = Field(1, ge=1)
    omp_nthreads: int = Field(1, ge=1)
    verbose: int = 0
    overwrite: bool = False
    notrack: bool = False


class Settings(BaseModel):
    """Everything one invocation of ``bids_semantoks`` needs."""

    model_config = ConfigDict(extra="forbid")

    bids_dir: Path
    output_dir: Path
    analysis_level: Literal["participant", "group", "pretrain"]
    participant: ParticipantSettings = Field(default_factory=ParticipantSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    group: dict[str, Any] = Field(default_factory=dict)
    pretrain: dict[str, Any] = Field(default_factory=dict)

    def results_hash(self) -> str:
        """Hash of the settings that determine participant outputs (not paths or CPU counts)."""
        payload = self.participant.model_dump(
            mode="json", exclude={"participant_label", "session_label", "device", "batch_size"}
        )
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON settings file into nested dicts.

    The file mirrors :class:`Settings` sections, e.g. ``[participant]`` with
    ``denoise_strategy = "scrubbing"``; top-level keys of the participant
    section are also accepted without the section header.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: config file not found; check the --config-file path")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"{path}: unknown config format; use .toml, .yaml/.yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot parse config file ({str(exc).splitlines()[0]}); fix its syntax") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: config file must hold a table/mapping of settings")
    sections = {"participant", "run", "group", "pretrain"}
    flat = {k: v for k, v in data.items() if k not in sections}
    nested = {k: dict(v) for k, v in data.items() if k in sections}
    for key, value in flat.items():
        target = "run" if key in RunSettings.model_fields else "participant"
        nested.setdefault(target, {})[key] = value
    return nested


def build_settings(
    bids_dir: Path,
    output_dir: Path,
    analysis_level: str,
    cli: dict[str, dict[str, Any]],
    config_file: Path | None = None,
) -> Settings:
    """Merge defaults, the config file and command-line values into :class:`Settings`.

    Parameters
    ----------
    cli : dict
        ``{"participant": {...}, "run": {...}, "group": {...}, "pretrain": {...}}`` with only
        the options the user actually gave (``None`` values are dropped).
    """
    merged: dict[str, dict[str, Any]] = read_config_file(config_file) if config_file else {}
    for section, values in cli.items():
        for key, value in values.items():
            if value is None:
                continue
            merged.setdefault(section, {})[key] = value
    try:
        return Settings(bids_dir=bids_dir, output_dir=output_dir, analysis_level=analysis_level, **merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        where = f"{config_file}: " if config_file else ""
        raise UsageError(f"{where}invalid setting '{loc}': {err['msg']}") from exc
