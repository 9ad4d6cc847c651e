"""Runs the participant level's work units, in this process or in a pool of processes.

A work unit is a list of :class:`~bids_semantoks.workflows.jobs.SubjectJob` (whole subjects,
so a subject's mean is made where its runs are). Per unit: take the subjects' locks, extract
every run that is not up to date (one bad run fails alone, with its one-line reason), embed
the runs of the whole unit in shared encoder batches, then write the subject means.

With ``--nprocs N`` > 1 the units go to N worker processes (forked before this process imports
torch, or spawned once torch is loaded: no fork of a process that holds torch threads); each
worker loads the encoder once, on its first run to embed, and keeps it. No polling:
the main process waits on the futures. Ctrl-C: the workers are stopped (a file being written
is removed by its atomic writer), nothing is recorded as a crash, and the level exits 130.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from bids_semantoks.bids import outputs
from bids_semantoks.errors import BidsAppError, OutputError
from bids_semantoks.workflows.jobs import Context, RunJob, RunResult, SubjectJob, digest

LOGGER = logging.getLogger("bids_semantoks")
LOCK_NAME = ".bids_semantoks.lock"  # in OUTPUT_DIR/sub-<label>/log/

# per process: the context and the encoder, loaded once
_CTX: Context | None = None
_ENCODER: Any = None
_BUSY = False


# -- up-to-date decisions ---------------------------------------------------------------
def is_current(path: Path | None, key: str | None) -> bool:
    """True when ``path`` and its sidecar exist and the sidecar's ``SettingsHash`` is ``key``."""
    if path is None or key is None:
        return False
    side = outputs.sidecar_of(path)
    if not (path.is_file() and side.is_file()):
        return False
    try:
        return json.loads(side.read_text()).get("SettingsHash") == key
    except (OSError, ValueError):
        return False


def drop_record_path(job: RunJob, output_dir: Path) -> Path:
    """Where a run dropped by ``--min-time`` is recorded (so a rerun does not prepare it again)."""
    return Path(output_dir, f"sub-{job.run.subject}", "log", job.timeseries_path.name.replace("_timeseries.tsv",
                                                                                               "_dropped.json"))


def dropped_reason(job: RunJob, output_dir: Path) -> str | None:
    """The recorded reason when this run, with these inputs and settings, was dropped."""
    path = drop_record_path(job, output_dir)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec.get("Reason") if rec.get("SettingsHash") == job.extraction_key else None


def mean_key(ctx: Context, subject: SubjectJob, used: list[RunJob]) -> str:
    """The subject mean depends on exactly which runs (and embeddings) went into it."""
    return digest([ctx.model.identity() if ctx.model else None,
                   sorted((j.name, j.embedding_key) for j in used)])


def state(ctx: Context, subject: SubjectJob) -> tuple[list[RunJob], list[RunJob], dict[str, str], bool]:
    """``(to extract, to embed, dropped name -> reason, mean needed)`` of one subject now."""
    to_extract, to_embed, dropped = [], [], {}
    for job in subject.runs:
        if not ctx.overwrite and is_current(job.timeseries_path, job.extraction_key):
            pass
        elif not ctx.overwrite and (reason := dropped_reason(job, ctx.output_dir)) is not None:
            dropped[job.name] = reason
            continue
        else:
            to_extract.append(job)
        if ctx.model is not None and (ctx.overwrite or not _embedding_current(ctx, job)):
            to_embed.append(job)
    need_mean = False
    if ctx.model is not None and subject.mean_path is not None:
        used = [j for j in subject.runs if j.name not in dropped]
        need_mean = bool(to_extract or to_embed) or (bool(used) and (
            ctx.overwrite or not is_current(subject.mean_path, mean_key(ctx, subject, used))))
    return to_extract, to_embed, dropped, need_mean


def _embedding_current(ctx: Context, job: RunJob) -> bool:
    if not is_current(job.embedding_path, job.embedding_key):
        return False
    if ctx.settings.get("save_tokens"):
        from bids_semantoks.workflows.steps import tokens_path

        return is_current(tokens_path(job.embedding_path), job.embedding_key)
    return True


# -- one work unit -------------------------------------------------------------------------
class _Capture(logging.Filter):
    """Holds back the app's warnings during one step: they go into that run's one line."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())
            return False
        return True


@contextmanager
def _captured() -> Iterator[_Capture]:
    cap = _Capture()
    LOGGER.addFilter(cap)
    try:
        yield cap
    finally:
        LOGGER.removeFilter(cap)


def _failure(name: str, subject: str, step: str, exc: Exception, where: str) -> RunResult:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, BidsAppError):
        return RunResult(name, subject, "failed", str(exc), exc.code, tb)
    detail = " ".join(str(exc).split())[:300]
    msg = (f"{where}: unexpected error while running {step} ({type(exc).__name__}: {detail}); "
           "see the crash file under OUTPUT_DIR/sub-*/log/ and report it")
    return RunResult(name, subject, "failed", msg, 1, tb)


def _crash_file(ctx: Context, result: RunResult, step: str) -> None:
    """The traceback of a failed run, as text under ``OUTPUT_DIR/sub-<label>/log/``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(ctx.output_dir, f"sub-{result.subject}", "log", f"crash-{stamp}-{result.name}-{step}.txt")
    try:
        outputs.write_text(path, f"run: {result.name}\nstep: {step}\nexit code: {result.code}\n"
                                 f"message: {result.message}\n\n{result.detail}")
    except (OSError, BidsAppError):
        pass  # the folder itself is the problem; the one-line message says so


def process_unit(subjects: list[SubjectJob]) -> list[RunResult]:
    """Bring every run of these subjects up to date; one :class:`RunResult` per run."""
    global _BUSY
    ctx = _CTX
    assert ctx is not None, "init_process() first"
    _BUSY = True
    results: dict[str, RunResult] = {}
    try:
        with ExitStack() as stack:
            locked = []
            for subject in sorted(subjects, key=lambda s: s.label):
                try:
                    stack.enter_context(_subject_lock(ctx, subject))
                    locked.append(subject)
                except OutputError as exc:
                    for job in subject.runs:
                        results[job.name] = RunResult(job.name, subject.subject, "failed", str(exc), exc.code)
            todo = []
            for subject in locked:
                to_extract, to_embed, dropped, need_mean = state(ctx, subject)
                for name, reason in dropped.items():
                    results[name] = RunResult(name, subject.subject, "dropped", reason)
                for job in subject.runs:
                    if job.name not in dropped and job not in to_extract and job not in to_embed:
                        results[job.name] = RunResult(job.name, subject.subject, "current")
                todo.append((subject, to_extract, to_embed, need_mean))
            for subject, to_extract, _, _ in todo:
                for job in to_extract:
                    results[job.name] = _extract(ctx, subject, job)
            embed = [(s, j) for s, _, to_embed, _ in todo for j in to_embed
                     if results.get(j.name) is None or results[j.name].status == "done"]
            for job, res in _embed(ctx, embed).items():
                results[job] = res
            for subject, _, _, need_mean in todo:
                if need_mean:
                    _mean(ctx, subject, results)
            _qc_pages(ctx, locked)
    finally:
        _BUSY = False
    return [results[j.name] for s in subjects for j in s.runs if j.name in results]


def _qc_pages(ctx: Context, subjects: list[SubjectJob]) -> None:
    """The QC page (``sub-<label>.html``) of each subject, from its outputs on disk; a page that
    fails is one warning line, never a failed run."""
    from bids_semantoks.reports import write_participant_reports

    write_participant_reports(ctx.output_dir, sorted({s.subject for s in subjects}), ctx.bids_dir)


@contextmanager
def _subject_lock(ctx: Context, subject: SubjectJob):
    from filelock import FileLock

    log_dir = subject.log_dir(ctx.output_dir)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(log_dir / LOCK_NAME))
        lock.acquire()
    except OSError as exc:
        raise OutputError(f"{log_dir}: cannot write here ({exc.strerror}); check permissions and free space") from exc
    try:
        yield
    finally:
        lock.release()


def _extract(ctx: Context, subject: SubjectJob, job: RunJob) -> RunResult:
    from bids_semantoks.workflows.steps import extract_step

    with _captured() as cap:
        try:
            written = extract_step(job.step_dict(ctx))
        except Exception as exc:  # one bad run fails alone; KeyboardInterrupt is not caught
            res = _failure(job.name, subject.subject, "extract", exc, str(job.run.bold))
            _crash_file(ctx, res, "extract")
            return res
    if written is None:  # dropped (--min-time): recorded so that a rerun skips it
        reason = cap.messages[0] if cap.messages else f"{job.run.bold.name}: run dropped"
        try:
            outputs.write_json(drop_record_path(job, ctx.output_dir),
                               {"Reason": reason, "SettingsHash": job.extraction_key})
        except BidsAppError:
            pass
        return RunResult(job.name, subject.subject, "dropped", reason)
    return RunResult(job.name, subject.subject, "done", "; ".join(cap.messages))


def _encoder():
    """The encoder of this process, loaded (and checked against the atlas) on first use."""
    global _ENCODER
    if _ENCODER is None:
        from bids_semantoks.workflows.common import load_checked_encoder

        _, _ENCODER = load_checked_encoder(_CTX.model, _CTX.atlas, _CTX.omp_nthreads)
    return _ENCODER


def _embed(ctx: Context, pairs: list[tuple[SubjectJob, RunJob]]) -> dict[str, RunResult]:
    """Embed the runs of a unit together; when that fails, one by one (so the failure is isolated)."""
    from bids_semantoks.workflows.steps import embed_step

    if not pairs or ctx.model is None:
        return {}
    out: dict[str, RunResult] = {}

    def go(group):
        jobs = [(j.timeseries_path, j.embedding_path, j.embedding_key) for _, j in group]
        with _captured() as cap:
            embed_step(jobs, ctx.model, ctx.atlas, ctx.settings, _encoder(), ctx.output_dir)
        return cap.messages

    try:
        messages = go(pairs)
        for s, j in pairs:
            mine = [m for m in messages if m.startswith(j.timeseries_path.name)]
            out[j.name] = RunResult(j.name, s.subject, "done", "; ".join(mine))
    except Exception:
        for s, j in pairs:
            try:
                msgs = go([(s, j)])
                out[j.name] = RunResult(j.name, s.subject, "done", "; ".join(msgs))
            except Exception as exc:
                res = _failure(j.name, s.subject, "embed", exc, str(j.timeseries_path))
                _crash_file(ctx, res, "embed")
                out[j.name] = res
    return out


def _mean(ctx: Context, subject: SubjectJob, results: dict[str, RunResult]) -> None:
    """The subject mean over its runs now selected; not written when one of them failed."""
    from bids_semantoks.workflows.steps import subject_mean_step

    mine = [results.get(j.name) for j in subject.runs]
    if any(r is None or r.status == "failed" for r in mine):
        return
    used = [j for j in subject.runs if results[j.name].status != "dropped"]
    if not used:
        return
    key = mean_key(ctx, subject, used)
    if not ctx.overwrite and is_current(subject.mean_path, key) and all(
            results[j.name].status == "current" for j in used):
        return
    try:
        subject_mean_step(str(subject.mean_path), [str(j.embedding_path) for j in used], key, str(ctx.output_dir))
    except Exception as exc:
        res = _failure(subject.label, subject.subject, "subject mean", exc, str(subject.mean_path))
        _crash_file(ctx, res, "mean")
        for j in used:
            results[j.name] = RunResult(j.name, subject.subject, "failed", res.message, res.code, res.detail)


# -- processes --------------------------------------------------------------------------------
def init_process(ctx: Context | None, encoder: Any = None, worker: bool = False, verbose: int = 0) -> None:
    """Set this process's context (and encoder, when the caller already loaded it)."""
    global _CTX, _ENCODER
    _CTX = ctx
    _ENCODER = encoder
    if worker:
        from bids_semantoks.console import setup_logging

        setup_logging(ctx.verbose if ctx is not None else verbose)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process, which stops us
        signal.signal(signal.SIGTERM, _on_term)


def _on_term(signum, frame):
    if _BUSY:
        raise KeyboardInterrupt  # unwinds the atomic writers: no half-written file is left
    os._exit(130)


def _use(ctx: Context) -> None:
    """Take the context of this task (the encoder is kept while the model stays the same)."""
    global _CTX, _ENCODER
    if _CTX is None or _CTX.model != ctx.model or _CTX.atlas != ctx.atlas:
        _ENCODER = None
    _CTX = ctx


def _in_worker(ctx: Context, subjects: list[SubjectJob]) -> list[RunResult]:
    _use(ctx)
    try:
        return process_unit(subjects)
    except KeyboardInterrupt:
        os._exit(130)


def _noop() -> int:
    return os.getpid()


def _check_in_worker(ctx: Context):
    """Load the encoder in this worker (kept for its units) and check it fits the atlas."""
    global _CTX, _ENCODER
    from bids_semantoks.workflows.common import load_checked_encoder

    try:
        model, encoder = load_checked_encoder(ctx.model, ctx.atlas, ctx.omp_nthreads)
    except BidsAppError as exc:
        return None, str(exc), exc.code
    except KeyboardInterrupt:
        os._exit(130)
    _CTX, _ENCODER = replace(ctx, model=model), encoder
    return model, "", 0


class WorkerPool:
    """N worker processes, started at once.

    Forked (the workers inherit the imports) when this process has not imported torch: fork is
    unsafe once torch runs its threads, so the participant level starts the pool before anything
    imports torch, and the encoder is then loaded in the workers only (once each). Spawned when
    torch is already loaded here (or on macOS).
    """

    def __init__(self, nprocs: int, verbose: int = 0):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.method = "spawn" if "torch" in sys.modules or sys.platform == "darwin" else "fork"
        self.nprocs = nprocs
        self.executor = ProcessPoolExecutor(max_workers=nprocs, mp_context=multiprocessing.get_context(self.method),
                                            initializer=init_process, initargs=(None, None, True, verbose))
        self._closed = False
        if self.method == "fork":
            self.executor.submit(_noop).result()  # fork every worker now, before torch is imported here

    def check_model(self, ctx: Context):
        """The model with its device resolved, checked in one worker (which keeps the encoder).

        Raises
        ------
        BidsAppError
            The model does not fit the atlas (or cannot be loaded): its one-line error.
        """
        model, message, code = self.executor.submit(_check_in_worker, ctx).result()
        if model is None:
            raise BidsAppError(message, code=code)
        return model

    def close(self) -> None:
        """Stop the workers now: each removes the file it was writing, then exits."""
        if not self._closed:
            self._closed = True
            _stop(self.executor)


def run_units(ctx: Context, units: list[list[SubjectJob]], nprocs: int, on_result: Callable[[RunResult], None],
              encoder: Any = None, pool: WorkerPool | None = None) -> None:
    """Process every unit; call ``on_result`` for each run as its unit completes.

    With ``pool`` (or ``nprocs`` > 1 and several units) the units go to worker processes.
    """
    if not units:
        return
    if pool is None and (nprocs <= 1 or len(units) == 1):
        init_process(ctx, encoder)
        for unit in units:
            for res in process_unit(unit):
                on_result(res)
        return
    from concurrent.futures import FIRST_COMPLETED, wait

    own = pool is None
    if pool is None:
        pool = WorkerPool(min(nprocs, len(units)), ctx.verbose)
    pending = {pool.executor.submit(_in_worker, ctx, unit): unit for unit in units}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                unit = pending.pop(fut)
                try:
                    results = fut.result()
                except Exception as exc:  # a worker died (killed, out of memory): its runs failed
                    results = [RunResult(j.name, s.subject, "failed",
                                         f"{s.label}: the worker process ended unexpectedly ({type(exc).__name__}: "
                                         f"{exc}); rerun, or lower --nprocs if memory ran out", 1)
                               for s in unit for j in s.runs]
                for res in results:
                    on_result(res)
    finally:
        if own:
            pool.close()  # all done (or interrupted): idle workers exit at once, busy ones clean up first


def _stop(pool) -> None:
    """Stop the workers now: each removes the file it was writing, then exits."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except (ProcessLookupError, OSError):
            pass
    deadline = time.monotonic() + 10
    for p in procs:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
