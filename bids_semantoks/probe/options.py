"""Settings of the group level (linear probes of embeddings and connectomes).

One pydantic model holds every setting, so the CLI maps its flags onto the
fields one to one and the JSON sidecar of the outputs records them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FeatureName = Literal["semantoks", "fc"]
TargetType = Literal["classification", "regression"]


class GroupOptions(BaseModel):
    """Every setting of the group level.

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

    Attributes
    ----------
    targets : list of str
        Phenotype columns to predict (``--target``, repeatable). At least one.
    target_types : dict of str to {"classification", "regression"}
        Overrides of the inferred task per target (``--target-type COL=TYPE``).
    confounds : list of str
        Phenotype columns regressed out of the features inside the CV folds
        (``--confounds``). Categorical columns are one-hot encoded.
    features : list of {"semantoks", "fc"} or None
        Feature sets to compare (``--features``). None: every set whose inputs
        are found (embeddings -> ``semantoks``, time series -> ``fc``).
    fc_kind : {"correlation", "tangent"}
        Connectome of ``fc`` (``--fc-kind``), nilearn ``ConnectivityMeasure``.
    semantoks_protocol : {"subject_mean", "crops"}
        ``subject_mean``: one sample per subject, the mean ``cls_avg`` embedding.
        ``crops``: the authors' protocol, every crop a training sample and the
        predictions averaged over a subject's crops (``--probe-protocol``).
    cv_folds, cv_repeats : int
        Outer repeated (stratified) K-fold (``--cv-folds``, ``--cv-repeats``).
    cv_groups : str or None
        Phenotype column of groups (e.g. ``site``): leave-one-group-out outer CV
        when there are at most ``cv_folds`` groups, else a repeated
        (stratified) group K-fold (``--cv-groups``).
    inner_folds : int
        Folds of the inner CV that picks the regularisation.
    n_permutations : int
        Label permutations for a p-value of the primary metric (0: none).
    seed : int
        Seed of every shuffle (``--random-seed``).
    phenotypes : Path or None
        Extra TSV/CSV keyed by ``participant_id`` (``--phenotypes``).
    raw_dir : Path or None
        Raw BIDS dataset holding ``participants.tsv`` and ``phenotype/``
        (``--derivatives raw=PATH``).
    model_label : str or None
        ``desc`` label of the embeddings to use (``--model-label``). None:
        ``official`` when present, else the only label found.
    atlas : str or None
        Atlas label of the time series/embeddings. None: taken from the atlas
        table given to :func:`run_group`, else the embeddings' atlas, else the
        only one found.
    timeseries_desc : str or None
        ``desc`` label of the time series when OUTPUT_DIR holds several.
    sentinel_values : list of float
        Numeric codes treated as missing in phenotype columns.
    max_missing_roi_fraction : float
        See above.
    n_jobs : int or None
        Parallel workers over CV folds; None uses every CPU available to the
        process.
    """

    model_config = ConfigDict(extra="forbid")

    targets: list[str] = Field(default_factory=list)
    target_types: dict[str, TargetType] = Field(default_factory=dict)
    confounds: list[str] = Field(default_factory=list)
    features: list[FeatureName] | None = None
    fc_kind: Literal["correlation", "tangent"] = "correlation"
    semantoks_protocol: Literal["subject_mean", "crops"] = "subject_mean"
    cv_folds: int = Field(5, ge=2)
    cv_repeats: int = Field(5, ge=1)
    cv_groups: str | None = None
    inner_folds: int = Field(5, ge=2)
    n_permutations: int = Field(0, ge=0)
    seed: int = 0
    phenotypes: Path | None = None
    raw_dir: Path | None = None
    model_label: str | None = None
    atlas: str | None = None
    timeseries_desc: str | None = None
    sentinel_values: list[float] = Field(default_factory=lambda: [-9999.0, -999.0])
    max_missing_roi_fraction: float = Field(0.1, ge=0.0, le=1.0)
    n_jobs: int | None = None

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
