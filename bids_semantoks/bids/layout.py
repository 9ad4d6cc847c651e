"""Discovery of the inputs with pybids.

Two input types:

* ``fmriprep``: each ``desc-preproc_bold`` NIfTI in the requested space is paired with
  its ``desc-confounds_timeseries.tsv``/``.json``, its ``desc-brain_mask`` on the same
  grid and its JSON sidecar (``RepetitionTime``).
* ``timeseries``: XCP-D-style ``*_timeseries.tsv`` files (with a ``.json`` sidecar
  holding ``SamplingFrequency`` or ``RepetitionTime``) whose columns are named by an
  atlas ``_dseg.tsv``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_semantoks.errors import DataError, MissingInputError, NothingSelectedError, OutputError, UsageError

LOGGER = logging.getLogger("bids_semantoks")

#: Entities that identify one acquisition run (used to pair files and to name outputs).
#: In BIDS order; every entity that can distinguish two BOLD runs of one subject is here, so
#: output names (and the work units) never collide (``res`` is added by the output names).
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction", "direction", "run",
                "echo", "part")
ENTITY_KEYS = {
    "subject": "sub",
    "session": "ses",
    "task": "task",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "direction": "dir",
    "run": "run",
    "echo": "echo",
    "part": "part",
    "space": "space",
    "cohort": "cohort",
    "res": "res",
    "den": "den",
    "atlas": "atlas",
}


@dataclass
class RunInputs:
    """All inputs of one BOLD run.

    Attributes
    ----------
    entities : dict
        The run's identifying entities (subject, session, task, acquisition, run, ...).
    bold : Path
        ``desc-preproc_bold`` image, or the ``_timeseries.tsv`` for time-series input.
    tr : float
        Repetition time in seconds.
    confounds : Path or None
        fMRIPrep confounds TSV.
    mask : Path or None
        Brain mask on the BOLD grid.
    space, res : str or None
        Template space and resolution label of the BOLD run.
    """

    entities: dict[str, str]
    bold: Path
    tr: float
    confounds: Path | None = None
    mask: Path | None = None
    space: str | None = None
    res: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def name(self) -> str:
        """BIDS prefix of the run, e.g. ``sub-01_ses-1_task-rest_run-1``."""
        return "_".join(
            f"{ENTITY_KEYS[k]}-{self.entities[k]}" for k in RUN_ENTITIES if self.entities.get(k) is not None
        )


def is_derivative(desc: dict[str, Any]) -> bool:
    """Whether a ``dataset_description.json`` describes a derivatives dataset.

    BIDS >= 1.4 says so with ``DatasetType: derivative``; fMRIPrep 1.x (BIDS 1.1-1.3) wrote no
    ``DatasetType`` but a ``PipelineDescription`` (later ``GeneratedBy``), which only derivatives
    have. A description without ``DatasetType`` and without either is a raw dataset.
    """
    kind = desc.get("DatasetType")
    if kind is not None:
        return kind == "derivative"
    return isinstance(desc.get("PipelineDescription"), dict) or bool(desc.get("GeneratedBy"))


def check_dataset(bids_dir: Path, output_dir: Path, input_type: str) -> dict[str, Any]:
    """Check BIDS_DIR and OUTPUT_DIR before anything is indexed or written.

    Returns the input's ``dataset_description.json`` content.
    """
    bids_dir = bids_dir.resolve()
    output_dir = output_dir.resolve()
    if not bids_dir.is_dir():
        raise MissingInputError(f"{bids_dir}: BIDS_DIR does not exist; pass fMRIPrep's output folder")
    if output_dir == bids_dir:
        raise UsageError(f"{output_dir}: OUTPUT_DIR equals BIDS_DIR; choose a separate output folder")
    if bids_dir in output_dir.parents:
        raise UsageError(
            f"{output_dir}: OUTPUT_DIR is inside BIDS_DIR; choose a folder outside the input dataset"
        )
    desc_file = bids_dir / "dataset_description.json"
    if not desc_file.is_file():
        raise MissingInputError(
            f"{desc_file}: not found; BIDS_DIR must be a BIDS derivatives dataset (fMRIPrep's output folder)"
        )
    try:
        desc = json.loads(desc_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{desc_file}: invalid JSON ({exc}); fix or regenerate it") from exc
    if input_type == "fmriprep" and not is_derivative(desc):
        raise UsageError(
            f"{bids_dir}: this is a raw BIDS dataset; pass fMRIPrep's output folder "
            "(e.g. derivatives/fmriprep) as BIDS_DIR and the raw dataset with --derivatives raw=PATH"
        )
    return desc


def check_not_inside(bids_dir: Path, folder: Path | None, option: str) -> None:
    """Refuse a work or database folder inside BIDS_DIR: nothing is ever written into the input."""
    if folder is None:
        return
    bids_dir = Path(bids_dir).resolve()
    folder = Path(folder).resolve()
    if folder == bids_dir or bids_dir in folder.parents:
        raise UsageError(f"{folder}: {option} is inside BIDS_DIR; choose a folder outside the input dataset")


def dataset_fingerprint(bids_dir: Path, participant_labels: list[str] | None = None) -> str:
    """A cheap identity of what pybids indexes: the relative paths of the top-level files and of
    every file under the selected ``sub-*`` folders (names only: the index holds no metadata).

    A subject added or removed, or a file renamed, changes it; a file rewritten in place does
    not (the up-to-date decision of every run hashes its own inputs).
    """
    bids_dir = Path(bids_dir)
    wanted = set(participant_labels or [])
    names: list[str] = []
    with os.scandir(bids_dir) as it:
        top = sorted(it, key=lambda e: e.name)
    for entry in top:
        if entry.name.startswith("."):
            continue
        if entry.name.startswith("sub-") and entry.is_dir():
            if wanted and entry.name[4:] not in wanted:
                continue
            for dirpath, dirnames, filenames in os.walk(entry.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = os.path.relpath(dirpath, bids_dir)
                names.extend(f"{rel}/{f}" for f in sorted(filenames) if not f.startswith("."))
        elif not entry.is_dir():
            names.append(entry.name)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def index(
    bids_dir: Path,
    *,
    participant_labels: list[str] | None = None,
    database_dir: Path | None = None,
    ignore_dirs: list[Path] | None = None,
):
    """Index BIDS_DIR with pybids, without validation.

    Only the selected subjects are indexed, so one subject of a 1000-subject dataset indexes
    as fast as a one-subject dataset: pybids indexes a "shadow" root (a temporary folder of
    symbolic links to the top-level entries of BIDS_DIR and to the selected ``sub-*`` folders
    only, so the other subjects are never listed), then every path in the index, and the
    layout's root, are those in BIDS_DIR itself, as if BIDS_DIR had been indexed; the shadow
    is removed at once and nothing is written into BIDS_DIR. The database is kept in
    ``database_dir`` (one per selection) and reused only while the dataset's file list is
    unchanged (:func:`dataset_fingerprint`): a subject added or deleted since rebuilds it.
    Jobs sharing the database folder take turns (a file lock), so two jobs on one work dir
    never write one sqlite file at once.
    """
    from filelock import FileLock

    bids_dir = bids_dir.resolve()
    ignore: list[Any] = [re.compile(r"^/(code|sourcedata|stimuli|logs|log|figures|work)(/|$)"), re.compile(r"/\.")]
    for d in ignore_dirs or []:
        d = Path(d).resolve()
        if bids_dir in d.parents:
            ignore.append(re.compile("^/" + re.escape(str(d.relative_to(bids_dir))) + "(/|$)"))
    database_path = None
    if database_dir is not None:
        key = hashlib.sha256(
            json.dumps([str(bids_dir), sorted(participant_labels or [])]).encode()
        ).hexdigest()[:12]
        database_path = Path(database_dir) / f"bids_db_{key}"
    try:
        if database_path is None:
            return _build_layout(bids_dir, participant_labels, ignore, None, False)
        database_path.mkdir(parents=True, exist_ok=True)
        with FileLock(str(database_path / ".lock")):
            # reused only when its build finished (a killed job leaves a partial index) and the
            # dataset still holds the same files (subjects added or removed since: rebuilt)
            complete = database_path / ".complete"
            fingerprint = dataset_fingerprint(bids_dir, participant_labels)
            stored = complete.read_text().strip() if complete.is_file() else None
            exists = (database_path / "layout_index.sqlite").exists()
            reset = stored != fingerprint and exists
            if reset:
                complete.unlink(missing_ok=True)
                LOGGER.info("%s: the dataset changed since it was indexed; indexing it again", bids_dir)
            if exists and not reset:
                layout = _load_layout(database_path)
            else:
                layout = _build_layout(bids_dir, participant_labels, ignore, database_path, reset)
            if stored != fingerprint:
                complete.write_text(fingerprint + "\n")
            return layout
    except Exception as exc:  # pybids raises plain ValueError/BIDSValidationError variants
        text = " ".join(str(getattr(exc, "orig", None) or exc).split())  # sqlalchemy: the sqlite error, no SQL
        storage = isinstance(exc, OSError) or any(
            s in text for s in ("disk is full", "readonly database", "read-only", "unable to open database"))
        if database_path is not None and storage:  # the database folder, not the dataset, is at fault
            raise OutputError(
                f"{database_path}: cannot write the pybids database ({text[:200]}); "
                "free space or choose a writable --work-dir / --bids-database-dir"
            ) from exc
        raise DataError(f"{bids_dir}: pybids could not index the dataset ({text[:300]})") from exc


def _load_layout(database_path: Path):
    """A layout read back from its database (no indexing)."""
    from bids import BIDSLayout

    return BIDSLayout(None, validate=False, is_derivative=True, database_path=database_path)


def _build_layout(bids_dir: Path, participant_labels: list[str] | None, ignore: list[Any],
                  database_path: Path | None, reset: bool):
    """Index ``bids_dir`` (all of it, or only the selected subjects through a shadow root)."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    kwargs = dict(validate=False, is_derivative=True, config=["bids", "derivatives"],
                  database_path=database_path, reset_database=reset)
    if not participant_labels:
        indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False)
        return BIDSLayout(bids_dir, indexer=indexer, **kwargs)
    import tempfile

    if database_path is not None:  # left by a killed job (the caller holds the database's lock)
        for stale in database_path.glob(".shadow-*"):
            _remove_shadow(stale)
    shadow = Path(tempfile.mkdtemp(prefix=".shadow-", dir=database_path))
    try:
        try:
            _fill_shadow(shadow, bids_dir, participant_labels)
        except OSError as exc:  # no symbolic links here: every other sub-* folder ignored instead
            LOGGER.debug("%s: no shadow root (%s); indexing BIDS_DIR with an ignore list", shadow, exc)
            keep = "|".join(re.escape(lab) for lab in participant_labels)
            ignore = [*ignore, re.compile(rf"^/sub-(?!(?:{keep})(?:/|$))[^/]+")]
            indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False)
            return BIDSLayout(bids_dir, indexer=indexer, **kwargs)
        indexer = _shadow_indexer(shadow, bids_dir, validate=False, ignore=ignore, index_metadata=False)
        layout = BIDSLayout(shadow, indexer=indexer, **kwargs)
        # the index reads as if BIDS_DIR itself had been indexed (root, relpath, reloads)
        session = layout.connection_manager.session
        info = session.query(type(layout.connection_manager.layout_info)).first()
        info.root = str(bids_dir)
        session.commit()
        layout._root = type(layout._root)(bids_dir)
        return layout
    finally:
        _remove_shadow(shadow)


def _fill_shadow(shadow: Path, bids_dir: Path, participant_labels: list[str]) -> None:
    """Symbolic links in ``shadow`` to every top-level entry of ``bids_dir`` except the
    ``sub-*`` folders of subjects not selected."""
    wanted = {f"sub-{lab}" for lab in participant_labels}
    with os.scandir(bids_dir) as it:
        for entry in it:
            if entry.name.startswith("sub-") and entry.name not in wanted and entry.is_dir():
                continue
            os.symlink(entry.path, shadow / entry.name)


def _remove_shadow(shadow: Path) -> None:
    """Remove the shadow root: its links only, never what they point to."""
    if not shadow.is_dir():
        return
    with os.scandir(shadow) as it:
        for entry in it:
            if entry.is_symlink():
                os.unlink(entry.path)
    shutil.rmtree(shadow, ignore_errors=True)  # no link is left in it: only its own files


def _shadow_indexer(shadow: Path, real_root: Path, **kwargs):
    """A pybids indexer that walks ``shadow`` but records every file under ``real_root``.

    The files keep their paths relative to the root, so pybids parses the same entities as
    when ``real_root`` itself is indexed.
    """
    from bids import BIDSLayoutIndexer

    class ShadowIndexer(BIDSLayoutIndexer):
        def _index_file(self, abs_fn, entities):
            rel = os.path.relpath(str(abs_fn.path), str(shadow))
            return super()._index_file(type(abs_fn)(os.path.join(str(real_root), rel)), entities)

    return ShadowIndexer(**kwargs)


def read_filter_file(path: Path) -> dict[str, dict[str, Any]]:
    """Read an fMRIPrep-style ``--bids-filter-file`` (JSON: ``{"bold": {"task": "rest"}}``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: filter file not found; check --bids-filter-file")
    try:
        filters = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: invalid JSON in filter file (line {exc.lineno}: {exc.msg}); fix the syntax") from exc
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(f'{path}: filter file must map query names to entity filters, e.g. {{"bold": {{"task": "rest"}}}}')
    return {k: _json_filters(v) for k, v in filters.items()}


def _json_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Translate fMRIPrep JSON filter values (null/"*") to pybids Query objects."""
    from bids.layout import Query

    out = {}
    for key, value in filters.items():
        if value is None:
            out[key] = Query.NONE
        elif value == "*":
            out[key] = Query.ANY
        else:
            out[key] = value
    return out


def _selection(settings) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if settings.participant_label:
        sel["subject"] = settings.participant_label
    if settings.session_label:
        sel["session"] = settings.session_label
    if settings.task_id:
        sel["task"] = settings.task_id
    return sel


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read JSON sidecar ({exc}); fix or regenerate it") from exc


def _tr_from_sidecar(meta: dict[str, Any], path: Path) -> float:
    """Repetition time (s) from a sidecar's ``RepetitionTime`` and/or ``SamplingFrequency``.

    Either field may be given; when both are, they must agree (within 0.1 %): a sidecar that
    contradicts itself is bad data, whichever field is right. Every problem is a
    :class:`DataError` naming ``path``, so it concerns this run only.
    """
    import math

    values = {}
    for key in ("RepetitionTime", "SamplingFrequency"):
        value = meta.get(key)
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {key} {value!r} is not a number; fix the JSON sidecar") from None
        if isinstance(value, bool) or not math.isfinite(number) or not number > 0:
            raise DataError(f"{path}: {key} is {value!r}; it must be a positive number (RepetitionTime in "
                            "seconds, SamplingFrequency in Hz); fix the JSON sidecar")
        values[key] = number
    if not values:
        raise DataError(
            f"{path}: sidecar has no RepetitionTime; add it (seconds) to the JSON sidecar of this run"
        )
    tr = values.get("RepetitionTime", 1.0 / values.get("SamplingFrequency", 1.0))
    if "SamplingFrequency" in values and "RepetitionTime" in values:
        other = 1.0 / values["SamplingFrequency"]
        if abs(other - tr) > 1e-3 * tr:
            raise DataError(
                f"{path}: RepetitionTime {tr:g} s disagrees with SamplingFrequency "
                f"{values['SamplingFrequency']:g} Hz (= {other:g} s per sample); fix the JSON sidecar"
            )
    return tr


def read_tr(sidecar: Path, data_file: Path) -> float:
    """Repetition time (s) from the JSON sidecar of ``data_file`` (RepetitionTime or SamplingFrequency)."""
    if not Path(sidecar).is_file():
        raise MissingInputError(
            f"{data_file}: JSON sidecar {Path(sidecar).name} not found; add one with SamplingFrequency (Hz)"
        )
    return _tr_from_sidecar(_read_json(sidecar), sidecar)


def collect_runs(layout, settings, check_subjects: bool = True, errors: list | None = None) -> list[RunInputs]:
    """Find every run selected by the settings.

    Raises
    ------
    MissingInputError
        An unknown participant label.
    NothingSelectedError
        Filters that select no run.
    DataError, MissingInputError
        A run with a bad or missing sidecar/confounds/mask; when ``errors`` is a list, such runs
        are skipped and ``(entities, error)`` appended to it instead, so other runs go on.
    """
    root = Path(layout.root)
    subjects = set(layout.get_subjects())
    if check_subjects and settings.participant_label:
        unknown = [s for s in settings.participant_label if s not in subjects]
        if unknown:
            # the index holds only the selected subjects: list the folders for the hint
            present = sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())
            raise MissingInputError(
                f"{root}: participant(s) {', '.join('sub-' + s for s in unknown)} not found; "
                f"available: {', '.join(present[:10]) + (' ...' if len(present) > 10 else '') or 'none'}"
            )
    query = {**_selection(settings), **settings.bids_filters.get("bold", {})}
    if settings.input_type == "timeseries":
        return _collect_timeseries(layout, settings, query, errors)
    bold_desc = _bold_desc(settings, root)
    files = layout.get(
        return_type="object",
        desc=bold_desc,
        suffix="bold",
        extension=[".nii.gz", ".nii"],
        space=settings.space,
        **{k: v for k, v in query.items() if k not in ("desc", "suffix", "extension", "space")},
    )
    if not files and bold_desc != "preproc":
        raise MissingInputError(
            f"{root}: no desc-{bold_desc}_bold in space {settings.space} for this selection, which "
            f"--denoise-strategy {settings.denoise_strategy} needs; run fMRIPrep < 23.1 with --use-aroma "
            "(or fMRIPost-AROMA) to produce it, or choose another --denoise-strategy"
        )
    if not files:
        any_bold = layout.get(desc="preproc", suffix="bold", extension=[".nii.gz", ".nii"], **_selection(settings))
        if not any_bold and not layout.get(suffix="bold"):
            raise NothingSelectedError(
                f"{root}: no desc-preproc_bold files for this selection; is BIDS_DIR fMRIPrep's output?"
            )
        if not any_bold:  # the labels (task, session) match nothing, whatever the space
            present = layout.get(desc="preproc", suffix="bold", extension=[".nii.gz", ".nii"])
            tasks = sorted({str(f.entities["task"]) for f in present if "task" in f.entities})
            sessions = sorted({str(f.entities["session"]) for f in present if "session" in f.entities})
            raise NothingSelectedError(
                f"{root}: no desc-preproc_bold matches --task-id/--session-label "
                f"(tasks present: {', '.join(tasks) or 'none'}; sessions: {', '.join(sessions) or 'none'}); "
                "change the labels"
            )
        spaces = sorted({f.entities.get("space", "native") for f in any_bold})
        raise NothingSelectedError(
            f"{root}: no desc-preproc_bold in space {settings.space} for this selection "
            f"(spaces present: {', '.join(spaces) or 'none'}); change --space or the filters"
        )
    runs = []
    for f in files:
        ents = {k: str(f.entities[k]) for k in RUN_ENTITIES if k in f.entities}
        try:
            runs.append(_run_inputs(layout, f, ents, settings))
        except (DataError, MissingInputError) as exc:
            if errors is None:
                raise
            errors.append((ents, exc))
    return sorted(runs, key=lambda r: r.name)


def _bold_desc(settings, root: Path) -> str:
    """The ``desc-`` of the BOLD the denoising strategy needs (its preset), checked against --space."""
    from bids_semantoks.extract.denoise import load_strategy

    preset = load_strategy(settings.denoise_strategy)
    if preset["space"] and settings.space != preset["space"]:
        raise UsageError(
            f"{root}: --denoise-strategy {settings.denoise_strategy} reads desc-{preset['bold_desc']}_bold, "
            f"which fMRIPrep writes only in {preset['space']}; add --space {preset['space']}"
        )
    return preset["bold_desc"]


def _run_inputs(layout, f, ents: dict[str, str], settings) -> RunInputs:
    """The inputs of one BOLD run (sidecar, TR, confounds, mask), checked."""
    path = Path(f.path)
    sidecar = _sidecar(path)
    meta = _read_json(sidecar) if sidecar else {}
    if not sidecar:
        raise MissingInputError(
            f"{path}: no JSON sidecar found; fMRIPrep writes one with RepetitionTime next to each BOLD"
        )
    tr = _tr_from_sidecar(meta, sidecar)
    run_query = {k: v for k, v in ents.items() if k in RUN_ENTITIES}
    confounds = _one(
        layout.get(desc="confounds", suffix="timeseries", extension=".tsv", **_exact(run_query)),
        "confounds",
    )
    space = f.entities.get("space")
    res = f.entities.get("res")
    mask = _one(
        layout.get(
            desc="brain", suffix="mask", extension=[".nii.gz", ".nii"], space=space,
            res=res if res is not None else _none(), **_exact(run_query),
        ),
        "mask",
    )
    if settings.denoise_strategy != "none" and confounds is None:
        raise MissingInputError(
            f"{path}: no desc-confounds_timeseries.tsv found for this run; rerun fMRIPrep or "
            "use --denoise-strategy none"
        )
    return (
        RunInputs(entities=ents, bold=path, tr=tr, confounds=confounds, mask=mask, space=space,
                  res=str(res) if res is not None else None, metadata=meta)
    )


def _collect_timeseries(layout, settings, query, errors: list | None = None) -> list[RunInputs]:
    root = Path(layout.root)
    files = layout.get(
        return_type="object", suffix="timeseries", extension=".tsv",
        **{k: v for k, v in query.items() if k not in ("suffix", "extension")},
    )
    # XCP-D writes confounds and our own outputs with the same suffix: keep atlas-labelled series
    files = [f for f in files if "atlas" in f.entities and f.entities.get("desc") != "confounds"]
    if not files:
        raise NothingSelectedError(
            f"{root}: no *_atlas-<label>_timeseries.tsv files for this selection; check the filters"
        )
    runs = []
    for f in files:
        path = Path(f.path)
        ents = {k: str(f.entities[k]) for k in RUN_ENTITIES if k in f.entities}
        try:
            sidecar = _sidecar(path)
            if sidecar is None:
                raise MissingInputError(
                    f"{path}: no JSON sidecar; add one with SamplingFrequency (Hz) or RepetitionTime (s)"
                )
            meta = _read_json(sidecar)
            tr = _tr_from_sidecar(meta, sidecar)
        except (DataError, MissingInputError) as exc:
            if errors is None:
                raise
            errors.append((ents, exc))
            continue
        runs.append(RunInputs(entities=ents, bold=path, tr=tr, space=f.entities.get("space"), metadata=meta))
    return sorted(runs, key=lambda r: r.name)


def _sidecar(path: Path) -> Path | None:
    name = path.name
    for ext in (".nii.gz", ".nii", ".tsv"):
        if name.endswith(ext):
            candidate = path.with_name(name[: -len(ext)] + ".json")
            return candidate if candidate.is_file() else None
    return None


def _exact(query: dict[str, str]) -> dict[str, Any]:
    """Match the run entities exactly: an absent entity must be absent on the partner too."""
    out: dict[str, Any] = {k: query.get(k, _none()) for k in RUN_ENTITIES if k != "echo"}
    return out


def _none():
    from bids.layout import Query

    return Query.NONE


def _one(files: list, what: str) -> Path | None:
    if not files:
        return None
    paths = sorted({Path(getattr(f, "path", f)) for f in files})
    if len(paths) > 1:
        raise DataError(f"{paths[0]}: several {what} files match one run ({len(paths)}); use --bids-filter-file")
    return paths[0]
