"""The participant level, top to bottom.

check the folders -> atlas -> model -> index BIDS_DIR (pybids, validated cache) -> select the
runs -> plan (one :class:`~bids_semantoks.workflows.jobs.SubjectJob` per subject/session, with
the keys that say whether each output is up to date) -> skip what is up to date -> process the
rest in work units (:mod:`bids_semantoks.workflows.runner`: extract -> embed in shared batches
-> subject mean) -> one line per run, a summary line, the exit code.

Up to date means: the output's sidecar records the key of everything it was made from, i.e.
the settings, the atlas, the software version, the identity (size, mtime, content hash) of
each input file and, for embeddings, the model; a subject mean also records which runs went
into it (so ``-t rest`` after ``rest`` + ``nback`` rebuilds it from the rest runs only; the
nback runs' own outputs stay on disk). Runs that fail (a corrupt or missing file) fail alone,
with their one-line reason; the others finish.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

from bids_semantoks import __version__
from bids_semantoks.bids import layout as bids_layout
from bids_semantoks.bids import outputs
from bids_semantoks.config import Settings
from bids_semantoks.console import NOTE, note
from bids_semantoks.errors import EX_NOINPUT, BidsAppError, NothingSelectedError, OutputError
from bids_semantoks.extract.prepare import outliers_file
from bids_semantoks.reports import report_path
from bids_semantoks.workflows import runner
from bids_semantoks.workflows.common import (
    check_output_dir,
    citation,
    load_checked_encoder,
    resolve_atlas,
    resolve_model,
    work_dir,
)
from bids_semantoks.workflows.jobs import Context, RunJob, RunResult, SubjectJob, digest, file_identity

LOGGER = logging.getLogger("bids_semantoks")

#: Settings that change the embedding but not the extracted series.
_EMBED_ONLY = ("participant_label", "session_label", "task_id", "bids_filters", "model", "device", "batch_size",
               "save_tokens", "n_crops")
#: Settings that change neither (which runs are selected is decided per subject mean).
_NEITHER = ("participant_label", "session_label", "task_id", "bids_filters", "device", "batch_size")

EXIT_MEANING = {0: "success", 1: "unexpected failure (a bug: see the crash files and report it)",
                18: "nothing selected or nothing usable", 64: "usage error", 65: "bad input data",
                66: "missing input", 73: "output not writable", 130: "interrupted"}


def run_participant(settings: Settings) -> None:
    """Run the participant level; raise :class:`BidsAppError` (with its exit code) when it fails."""
    st = settings.participant
    # 1. folders: nothing is written into BIDS_DIR, nothing starts on an unusable output
    input_desc = bids_layout.check_dataset(settings.bids_dir, settings.output_dir, st.input_type)
    wdir = work_dir(settings)
    bids_layout.check_not_inside(settings.bids_dir, wdir, "the work directory (-w)")
    bids_layout.check_not_inside(settings.bids_dir, settings.run.bids_database_dir, "--bids-database-dir")
    check_output_dir(settings.output_dir)
    # 2. atlas and the model's identity (the encoder is loaded only when a run needs it)
    resolved, atlas = resolve_atlas(settings)
    nprocs = settings.run.nprocs
    pool = None
    if nprocs > 1 and st.model.lower() != "none":
        # the workers are forked before anything here imports torch; each loads the encoder once
        pool = runner.WorkerPool(nprocs, settings.run.verbose)
    try:
        model = resolve_model(settings, cache_dir=wdir)  # a missing model fails before anything is written
        check_output_dir(wdir, "the work directory (-w)")
        _run(settings, input_desc, wdir, resolved, atlas, model, pool)
    finally:
        if pool is not None:
            pool.close()


def _run(settings: Settings, input_desc, wdir: Path, resolved, atlas, model, pool) -> None:
    st = settings.participant
    nprocs = settings.run.nprocs
    # 3. discovery: the dataset as it is now
    layout = bids_layout.index(
        settings.bids_dir,
        participant_labels=st.participant_label,
        database_dir=settings.run.bids_database_dir or wdir / "bids_db",
        ignore_dirs=[settings.output_dir, wdir],
    )
    skipped: list = []  # (entities, error) of runs with bad sidecars/confounds: the others go on
    runs = bids_layout.collect_runs(layout, st, errors=skipped)
    del layout
    bad_keys = {(e.get("subject"), e.get("session")) for e, _ in skipped}
    runs = [r for r in runs if (r.subject, r.entities.get("session")) not in bad_keys]  # no partial subject mean
    failed: list[RunResult] = [RunResult(_entities_name(e), e.get("subject", "?"), "failed", str(exc), exc.code)
                               for e, exc in skipped]
    if not runs and skipped:
        raise skipped[0][1]
    LOGGER.info("found %d run(s) of %d subject(s)", len(runs), len({r.subject for r in runs}))
    room = runner_room(wdir)
    if room:
        raise OutputError(f"{wdir}: cannot write the work directory ({room}); free space or choose another --work-dir")
    # 4. plan: keys of every output (from the model's identity); inputs that cannot be read fail here, alone
    ctx = make_context(settings, atlas, model)
    subjects, unreadable = plan(runs, ctx)
    failed += unreadable
    states = {id(s): runner.state(ctx, s) for s in subjects}
    # 5. the model is loaded and checked against the atlas only when some run needs embedding,
    # and before anything is written (a model for another atlas fails with its one-line error)
    encoder = None
    if model is not None and any(states[id(s)][1] for s in subjects):
        if pool is not None:
            model = pool.check_model(ctx)
        else:
            model, encoder = load_checked_encoder(model, atlas, settings.run.omp_nthreads)
        ctx = replace(ctx, model=model)
    # 6. the output dataset and each subject's record of the settings
    outputs.init_output_dataset(settings.output_dir, settings.bids_dir, input_desc, citation=citation(resolved, model))
    unwritable: set[str] = set()
    for subject in sorted({s.subject for s in subjects}):
        outputs.remove_stale_temporaries(Path(settings.output_dir, f"sub-{subject}"), recursive=True)  # killed jobs
        try:
            outputs.write_text_if_changed(
                Path(settings.output_dir, f"sub-{subject}", "log", "bids_semantoks_participant.json"),
                settings.to_json() + "\n")
        except OutputError as exc:  # this subject's folder cannot be written: the others go on
            unwritable.add(subject)
            failed += [RunResult(j.name, subject, "failed", str(exc), exc.code)
                       for s in subjects if s.subject == subject for j in s.runs]
    subjects = [s for s in subjects if s.subject not in unwritable]
    # 7. skip what is up to date, process the rest
    report = _Report(total=len(failed) + sum(len(s.runs) for s in subjects))
    for res in failed:
        report.add(res)
    todo = []
    for subject in subjects:
        to_extract, to_embed, dropped, need_mean = states[id(subject)]
        if to_extract or to_embed or need_mean or not report_path(ctx.output_dir, subject.subject).is_file():
            todo.append(subject)
            continue
        for job in subject.runs:
            report.add(RunResult(job.name, subject.subject, "dropped" if job.name in dropped else "current",
                                 dropped.get(job.name, "")))
    units = make_units(todo, nprocs, st.batch_size)
    if units:
        LOGGER.info("%d subject(s) to process in %d unit(s) with %d process(es)", len(todo), len(units), nprocs)
    try:
        with report.live():
            runner.run_units(ctx, units, nprocs, report.add, encoder=encoder, pool=pool)
    except KeyboardInterrupt:
        note("interrupted: %d of %d run(s) finished; files being written were removed; rerun the same command "
             "to continue (exit 130)", report.finished, report.total)
        raise
    report.finish()


def runner_room(folder: Path, size: int = 1 << 20) -> str | None:
    """Why ``folder`` cannot take ``size`` more bytes (strerror), or None when it can."""
    import os
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder) as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _entities_name(ents: dict) -> str:
    return "_".join(f"{bids_layout.ENTITY_KEYS[k]}-{ents[k]}" for k in bids_layout.RUN_ENTITIES if ents.get(k))


def effective_strategy(participant) -> str:
    """The denoising actually applied: time-series inputs are already denoised (no confounds)."""
    return "none" if participant.input_type == "timeseries" else participant.denoise_strategy


def make_context(settings: Settings, atlas, model) -> Context:
    st = settings.participant.model_dump(mode="json")
    st["denoise_strategy"] = effective_strategy(settings.participant)
    return Context(atlas=atlas, model=model, settings=st, bids_dir=settings.bids_dir.resolve(),
                   output_dir=settings.output_dir.resolve(), omp_nthreads=settings.run.omp_nthreads,
                   overwrite=settings.run.overwrite, verbose=settings.run.verbose)


def plan(runs: list[bids_layout.RunInputs], ctx: Context) -> tuple[list[SubjectJob], list[RunResult]]:
    """One :class:`SubjectJob` per subject/session with the output paths and keys of its runs.

    A run whose inputs cannot be read (a missing file, a broken symbolic link) is returned as a
    failed :class:`RunResult`; its subject's other runs go on (without a subject mean).
    """
    st = ctx.settings
    extraction = {k: v for k, v in st.items() if k not in _EMBED_ONLY}
    base = digest([extraction, ctx.atlas.label, list(ctx.atlas.names), ctx.atlas.dseg_sha, __version__])
    embed_settings = digest([ctx.model.identity() if ctx.model else None, st["n_crops"], st["save_tokens"]])
    space = None if st["input_type"] == "timeseries" else st["space"]
    subjects: dict[tuple, SubjectJob] = {}
    failed: list[RunResult] = []
    for run in runs:
        run_space = run.space or space
        key = (run.subject, run.entities.get("session"))
        subject = subjects.setdefault(key, SubjectJob(run.subject, key[1]))
        job = RunJob(
            run=run,
            timeseries_path=outputs.timeseries_path(ctx.output_dir, run, ctx.atlas.label, run_space,
                                                    st["denoise_strategy"]),
            embedding_path=None if ctx.model is None else outputs.embedding_path(
                ctx.output_dir, run, ctx.atlas.label, run_space, ctx.model.label),
        )
        try:
            identity = [file_identity(p, ctx.bids_dir) for p in
                        (run.bold, bids_layout._sidecar(run.bold), run.confounds, run.mask,
                         outliers_file(run.bold, run.name))]  # XCP-D's record of removed volumes
        except OSError as exc:
            path = getattr(exc, "filename", None) or run.bold
            failed.append(RunResult(job.name, run.subject, "failed", _unreadable(Path(path), exc), EX_NOINPUT))
            subject.runs.append(None)  # type: ignore[arg-type]  # marks the subject incomplete
            continue
        job.extraction_key = digest([base, identity])
        if ctx.model is not None:
            job.embedding_key = digest([job.extraction_key, embed_settings])
        subject.runs.append(job)
    out = []
    for (sub, ses), subject in sorted(subjects.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        complete = all(j is not None for j in subject.runs)
        subject.runs = [j for j in subject.runs if j is not None]
        if ctx.model is not None and complete:
            subject.mean_path = outputs.subject_embedding_path(ctx.output_dir, sub, ses, ctx.atlas.label,
                                                               ctx.model.label)
        if subject.runs:
            out.append(subject)
    return out, failed


def _unreadable(path: Path, exc: OSError) -> str:
    if path.is_symlink() and not path.exists():
        return (f"{path}: broken symbolic link (an un-fetched DataLad/git-annex file?); fetch it "
                "(datalad get) or leave the run out with --bids-filter-file")
    return f"{path}: cannot read this input ({exc.strerror or exc}); check the file, or leave the run out"


def make_units(subjects: list[SubjectJob], nprocs: int, batch_size: int) -> list[list[SubjectJob]]:
    """Whole subjects in chunks: enough runs per unit to fill the encoder's batches, enough units
    (about four per process) to keep every process busy to the end."""
    if not subjects:
        return []
    per_batch = max(1, batch_size // 8)  # about 8 crops per run
    per_balance = max(1, math.ceil(len(subjects) / (4 * max(1, nprocs)))) if nprocs > 1 else per_batch
    size = max(1, min(per_batch, per_balance))
    return [subjects[i: i + size] for i in range(0, len(subjects), size)]


class _Report:
    """One console line per run as it completes, a progress bar on a terminal, a summary line."""

    def __init__(self, total: int):
        self.total = total
        self.results: list[RunResult] = []
        self._progress = None

    @property
    def finished(self) -> int:
        return len(self.results)

    def live(self):
        report = self

        class _Live:
            def __enter__(self):
                if sys.stderr.isatty() and report.total:
                    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

                    report._progress = Progress(TextColumn("[bold]participant"), BarColumn(), MofNCompleteColumn(),
                                                TimeElapsedColumn(), transient=True)
                    report._progress.start()
                    report._task = report._progress.add_task("", total=report.total, completed=report.finished)
                    report._swap_streams()
                return self

            def __exit__(self, *exc):
                if report._progress is not None:
                    report._progress.stop()
                    report._swap_streams()
                    report._progress = None

        return _Live()

    def _swap_streams(self) -> None:
        """Point our console handler at rich's proxy while the bar is shown (lines print above it)."""
        for handler in logging.getLogger().handlers:
            if getattr(handler, "_bids_semantoks", False):
                handler.setStream(sys.stderr)

    def add(self, res: RunResult) -> None:
        self.results.append(res)
        if self._progress is not None:
            self._progress.update(self._task, advance=1)
        if res.status == "failed":
            LOGGER.error("%s: failed: %s", res.name, res.message)
            if res.detail:
                LOGGER.debug("%s", res.detail.rstrip())
        elif res.status == "dropped":
            LOGGER.warning("%s: %s", res.name, res.message)
        elif res.status == "current":
            LOGGER.log(NOTE, "%s: up to date, skipped", res.name)
        else:
            LOGGER.log(NOTE, "%s: done%s", res.name, f" ({res.message})" if res.message else "")

    def finish(self) -> None:
        """The summary line; raise the error of the level when it did not succeed."""
        by = {s: [r for r in self.results if r.status == s] for s in ("done", "current", "dropped", "failed")}
        error: BidsAppError | None = None
        if by["failed"]:
            first = by["failed"][0]
            more = f" (and {len(by['failed']) - 1} more failures; see the log)" if len(by["failed"]) > 1 else ""
            error = BidsAppError(first.message + more, code=first.code)
        elif not by["done"] and not by["current"] and by["dropped"]:
            error = NothingSelectedError(
                f"no run had enough usable data ({len(by['dropped'])} run(s) dropped: {by['dropped'][0].message}); "
                "see the warnings above: lower --min-time or --fd-thresh, disable the filters, or check the inputs")
        code = 0 if error is None else error.code
        note("participant: %d run(s): %d done, %d up to date, %d dropped, %d failed; exit %d (%s)",
             len(self.results), len(by["done"]), len(by["current"]), len(by["dropped"]), len(by["failed"]),
             code, EXIT_MEANING.get(code, "error"))
        if error is not None:
            raise error

