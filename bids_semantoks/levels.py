"""The three analysis levels, top to bottom.

``participant``: check inputs -> atlas -> discover runs (pybids) -> model -> nipype graph
(extract -> embed per run, subject mean) -> outputs.
``group``: embeddings/time series + phenotypes -> probes -> tables and report.
``pretrain``: model-ready series -> self-distillation -> ``OUTPUT_DIR/models/<name>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from bids_semantoks.bids import layout as bids_layout
from bids_semantoks.bids import outputs
from bids_semantoks.config import Settings
from bids_semantoks.errors import DataError, MissingInputError, OutputError, UsageError

LOGGER = logging.getLogger("bids_semantoks")


def run(settings: Settings) -> None:
    """Run the level named in ``settings``; raise BidsAppError subclasses on user errors."""
    _limit_threads(settings.run.omp_nthreads)
    if settings.analysis_level == "participant":
        run_participant(settings)
    elif settings.analysis_level == "group":
        run_group(settings)
    else:
        run_pretrain(settings)


def _limit_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def work_dir(settings: Settings) -> Path:
    return Path(settings.run.work_dir or Path(settings.output_dir) / "work").resolve()


# -- atlas ---------------------------------------------------------------------------
def resolve_atlas(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The atlas of this run, and its JSON-able description for the workflow nodes."""
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
    desc = {
        "label": table.label,
        "names": list(table.names),
        "indices": list(table.indices),
        "networks": list(table.networks),
        "channel_networks": table.network_index.tolist(),
        "dseg": str(dseg) if dseg else None,
        "dseg_sha": _sha256(Path(dseg)) if dseg else None,
        "sources": list(getattr(resolved, "sources", []) or []),
    }
    return resolved, desc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- model ---------------------------------------------------------------------------
def resolve_model(settings: Settings, atlas: dict[str, Any]) -> dict[str, Any] | None:
    """Find the model, check it fits the atlas, and describe it for provenance."""
    spec = settings.participant.model
    if spec.lower() == "none":
        return None
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
    encoder = load_encoder(path, network_map=np.asarray(atlas["channel_networks"]), data_dir=data_dir)
    n_channels = len(encoder.config.channel_networks)
    if n_channels != len(atlas["names"]):
        raise UsageError(
            f"{path}: the model expects {n_channels} regions but atlas '{atlas['label']}' has "
            f"{len(atlas['names'])}; use the atlas the model was trained with, or pre-train a model for this atlas"
        )
    if list(encoder.config.channel_networks) != list(atlas["channel_networks"]):
        raise UsageError(
            f"{path}: the model's network grouping differs from atlas '{atlas['label']}'; "
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
    return {"label": label, "path": str(path), "source": source, "sha256": sha, "is_demo": is_demo,
            "device": device, "data_dir": str(data_dir) if data_dir else None}


# -- participant -----------------------------------------------------------------------
def run_participant(settings: Settings) -> None:
    from bids_semantoks.workflows.participant import failures_summary, plan_jobs, run_workflow

    st = settings.participant
    input_desc = bids_layout.check_dataset(settings.bids_dir, settings.output_dir, st.input_type)
    _check_output_dir(settings.output_dir)
    resolved, atlas = resolve_atlas(settings)
    model = resolve_model(settings, atlas)  # before anything is written: a missing model fails fast
    wdir = work_dir(settings)
    _check_output_dir(wdir, "the work directory (-w)")
    layout = bids_layout.index(
        settings.bids_dir,
        participant_labels=st.participant_label,
        database_dir=settings.run.bids_database_dir or wdir / "bids_db",
        ignore_dirs=[settings.output_dir, wdir],
    )
    skipped: list = []  # (entities, error) of runs with bad sidecars/confounds: the others go on
    runs = bids_layout.collect_runs(layout, st, errors=skipped)
    bad_keys = {(e.get("subject"), e.get("session")) for e, _ in skipped}
    for ents, exc in skipped:
        LOGGER.error("sub-%s: skipped: %s", ents.get("subject"), exc)
    runs = [r for r in runs if (r.subject, r.entities.get("session")) not in bad_keys]  # no partial subject mean
    if not runs and skipped:
        raise skipped[0][1]
    LOGGER.info("found %d run(s) of %d subject(s)", len(runs), len({r.subject for r in runs}))
    outputs.init_output_dataset(settings.output_dir, settings.bids_dir, input_desc, citation=_citation(resolved, model))
    unwritable: set[str] = set()
    for subject in sorted({r.subject for r in runs}):
        outputs.remove_stale_temporaries(Path(settings.output_dir, f"sub-{subject}"), recursive=True)  # killed jobs
        try:
            outputs.write_text_if_changed(
                Path(settings.output_dir, f"sub-{subject}", "log", "bids_semantoks_participant.json"),
                settings.to_json() + "\n")
        except OutputError as exc:  # this subject's folder cannot be written: the others go on
            LOGGER.error("sub-%s: skipped: %s", subject, exc)
            skipped.append(({"subject": subject}, exc))
            unwritable.add(subject)
    runs = [r for r in runs if r.subject not in unwritable]
    if not runs:
        raise skipped[0][1]
    jobs = plan_jobs(runs, atlas, settings, model)
    failures = run_workflow(jobs, settings, wdir)
    from bids_semantoks.reports import write_participant_reports  # QC pages: a failure is one warning line

    write_participant_reports(settings.output_dir, sorted({r.subject for r in runs}), settings.bids_dir)
    error = failures_summary([(exc.code, str(exc)) for _, exc in skipped] + failures)
    if error is not None:
        raise error


def _check_output_dir(output_dir: Path, what: str = "OUTPUT_DIR") -> None:
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create {what} ({exc.strerror}); choose a writable folder") from exc
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"{output_dir}: {what} is not writable; fix its permissions or choose another folder")


def _citation(resolved, model: dict[str, Any] | None) -> str:
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
            f"Model', ICLR 2026, arXiv:2512.11582); model '{model['label']}', sha256 {model['sha256']}.\n"
        )
    return "\n".join(text)


# -- group -----------------------------------------------------------------------------
def run_group(settings: Settings) -> None:
    from bids_semantoks.probe import GroupOptions
    from bids_semantoks.probe import run_group as _run_group

    st = settings.participant
    bids_layout.check_dataset(settings.bids_dir, settings.output_dir, "timeseries")
    options = settings.group  # validated with the settings (n_jobs defaults to --nprocs there)
    atlas_tsv = None if st.atlas == "default" else Path(st.atlas)
    code = _run_group(options, settings.bids_dir, settings.output_dir, input_type=st.input_type,
                      atlas_tsv=atlas_tsv, participant_labels=st.participant_label or None)
    if code:
        from bids_semantoks.errors import BidsAppError

        raise BidsAppError("group level failed; see the log above", code=code)


# -- pretrain --------------------------------------------------------------------------
def run_pretrain(settings: Settings) -> None:
    from bids_semantoks.pretrain import PretrainOptions
    from bids_semantoks.pretrain import run_pretrain as _run_pretrain

    st = settings.participant
    bids_layout.check_dataset(settings.bids_dir, settings.output_dir, st.input_type)
    _check_output_dir(settings.output_dir)
    options = settings.pretrain  # validated with the settings
    _, atlas = resolve_atlas(settings)
    runs = collect_model_ready_runs(settings, atlas)
    folder = _run_pretrain(options, runs, settings.output_dir, network_names=atlas["networks"],
                           channel_networks=atlas["channel_networks"], channel_names=atlas["names"],
                           atlas_label=atlas["label"])
    LOGGER.info("model written to %s; use it with: participant --model %s", folder, folder)


def collect_model_ready_runs(settings: Settings, atlas: dict[str, Any]) -> list:
    """Model-ready series for pre-training: participant outputs in OUTPUT_DIR, else extracted now."""
    from bids_semantoks.errors import NothingSelectedError
    from bids_semantoks.pretrain.data import load_runs_from_derivatives

    def load():  # participant outputs are already at the model TR and z-scored: read them as they are
        return load_runs_from_derivatives(settings.output_dir, [atlas["label"]],
                                          settings.participant.participant_label or None,
                                          prepare=lambda data, tr: data.astype("float32"))

    try:
        return load()
    except NothingSelectedError:
        LOGGER.info("no participant outputs in %s: extracting time series first", settings.output_dir)
    model_none = settings.model_copy(deep=True)
    model_none.participant.model = "none"
    run_participant(model_none)
    try:
        return load()
    except NothingSelectedError:
        raise MissingInputError(
            f"{settings.output_dir}: no model-ready time series to pre-train on; check the selection"
        ) from None


def _options(model_cls, values: dict[str, Any], section: str):
    from pydantic import ValidationError

    try:
        return model_cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UsageError(f"invalid {section} setting '{'.'.join(map(str, err['loc']))}': {err['msg']}") from exc
