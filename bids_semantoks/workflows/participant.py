"""The participant level as a nipype workflow: one node chain per run.

``extract`` (parcellate + clean + write time series) -> ``embed`` (teacher encoder +
write embedding) per run, then one ``subject_mean`` node per subject/session. nipype
gives us: ``--nprocs`` parallelism over runs and subjects (MultiProc), a cache in the
work directory (a rerun after a change downstream recomputes only that node), and crash
files, written as text under ``OUTPUT_DIR/sub-<label>/log/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bids_semantoks.bids import outputs
from bids_semantoks.bids.layout import RunInputs
from bids_semantoks.errors import BidsAppError
from bids_semantoks.workflows.steps import is_current, job_path

LOGGER = logging.getLogger("bids_semantoks")


# -- node functions: nipype serialises their source, so every import is inside --------
def _extract_node(job, error_dir):
    from bids_semantoks.workflows.steps import extract_step, guarded

    return guarded("extract", job, error_dir, job["run"]["bold"], extract_step, job)


def _embed_node(job, timeseries, error_dir):
    from bids_semantoks.workflows.steps import embed_step, guarded

    return guarded("embed", job, error_dir, timeseries, embed_step, job, timeseries)


def _mean_node(out_path, embeddings, settings_hash, output_dir):
    from bids_semantoks.workflows.steps import subject_mean_step

    return subject_mean_step(out_path, embeddings, settings_hash, output_dir)


# -------------------------------------------------------------------------------------
def _stamp(path: Path | None) -> list | None:
    if path is None:
        return None
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def effective_strategy(participant) -> str:
    """The denoising actually applied: time-series inputs are already denoised (no confounds)."""
    return "none" if participant.input_type == "timeseries" else participant.denoise_strategy


def plan_jobs(runs: list[RunInputs], atlas: dict[str, Any], settings, model: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One job description (JSON-able) per run, with its output paths and settings hashes."""
    st = settings.participant.model_dump(mode="json")
    st["denoise_strategy"] = effective_strategy(settings.participant)
    extraction = {k: v for k, v in st.items() if k not in _EMBED_ONLY}
    extraction_hash = _hash([extraction, atlas["label"], atlas["names"], atlas.get("dseg_sha")])
    embedding_hash = _hash([extraction_hash, model and {k: model[k] for k in ("label", "sha256", "source")},
                            st["n_crops"], st["save_tokens"]])
    jobs = []
    space = None if settings.participant.input_type == "timeseries" else settings.participant.space
    for run in runs:
        run_space = run.space or space
        res_atlas = atlas["label"]
        job = {
            "name": run.name,
            "run": {"entities": run.entities, "bold": str(run.bold), "tr": run.tr,
                    "confounds": str(run.confounds) if run.confounds else None,
                    "mask": str(run.mask) if run.mask else None, "space": run.space, "res": run.res,
                    "stamp": [_stamp(run.bold), _stamp(run.confounds), _stamp(run.mask)]},
            "atlas": atlas,
            "settings": st,
            "settings_hash": extraction_hash,
            "bids_dir": str(settings.bids_dir.resolve()),
            "output_dir": str(settings.output_dir.resolve()),
            "omp_nthreads": settings.run.omp_nthreads,
            # output paths relative to output_dir: nipype content-hashes strings naming existing files
            "timeseries_path": str(outputs.timeseries_path(Path("."), run, res_atlas, run_space,
                                                           effective_strategy(settings.participant))),
        }
        if model is not None:
            job["model"] = model
            job["embedding_path"] = str(outputs.embedding_path(Path("."), run, res_atlas, run_space, model["label"]))
            job["embedding_hash"] = embedding_hash
        jobs.append(job)
    return jobs


_EMBED_ONLY = ("participant_label", "session_label", "task_id", "bids_filters", "model", "device", "batch_size",
               "save_tokens", "n_crops")


def extraction_job(job: dict[str, Any]) -> dict[str, Any]:
    """The part of a job the extraction depends on (so a model change keeps its cache)."""
    out = {k: v for k, v in job.items() if k not in ("model", "embedding_path", "embedding_hash")}
    out["settings"] = {k: v for k, v in job["settings"].items() if k not in _EMBED_ONLY}
    return out


def run_workflow(jobs: list[dict[str, Any]], settings, work_dir: Path) -> list[tuple[int, str]]:
    """Build and run the nipype graph for the jobs that are not already done.

    Returns the list of ``(exit_code, message)`` of the runs that failed.
    """
    from nipype import Function, Node, Workflow
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    overwrite = settings.run.overwrite
    todo: set[str] = set()  # names of the runs with outputs to (re)compute
    subjects: dict[tuple, list] = {}
    for job in jobs:
        ts_done = is_current(job_path(job, "timeseries_path"), job["settings_hash"])
        emb_done = "model" not in job or is_current(job_path(job, "embedding_path"), job["embedding_hash"])
        key = (job["run"]["entities"]["subject"], job["run"]["entities"].get("session"))
        subjects.setdefault(key, []).append(job)
        if ts_done and emb_done and not overwrite:
            LOGGER.info("%s: outputs up to date, skipped", job["name"])
            continue
        todo.add(job["name"])

    def mean_stale(key, runs) -> bool:
        return overwrite or any(j["name"] in todo for j in runs) or not is_current(
            _mean_path(settings, key, runs[0]), runs[0]["embedding_hash"])

    means_needed = [k for k, js in subjects.items() if "model" in js[0] and mean_stale(k, js)]
    if not todo and not means_needed:
        return []

    work_dir.mkdir(parents=True, exist_ok=True)
    error_dir = work_dir / "errors"
    # only this job's records: parallel jobs (a SLURM array) may share the work dir
    own_errors = [error_dir / f"{j['name']}_{step}.json" for j in jobs for step in ("extract", "embed")]
    for f in own_errors:
        f.unlink(missing_ok=True)
    nipype_config.update_config({
        "execution": {"crashfile_format": "txt", "stop_on_first_crash": "false", "remove_unnecessary_outputs": "false",
                      "hash_method": "timestamp", "create_report": "false", "use_relative_paths": "false"},
        "logging": {"workflow_level": "INFO" if settings.run.verbose > 1 else "WARNING",
                    "interface_level": "WARNING", "utils_level": "WARNING"},
        "monitoring": {"enabled": "false"},
    })
    nipype_logging.update_logging(nipype_config)
    wf = Workflow(name="bids_semantoks_participant", base_dir=str(work_dir))
    embed_nodes: dict[tuple, list] = {}
    for job in jobs:
        key = (job["run"]["entities"]["subject"], job["run"]["entities"].get("session"))
        if job["name"] not in todo and key not in means_needed:
            continue
        safe = outputs.sanitize_label(job["name"])
        log_dir = Path(settings.output_dir, f"sub-{key[0]}", "log")
        ext = Node(Function(input_names=["job", "error_dir"], output_names=["timeseries"], function=_extract_node),
                   name=f"extract_{safe}")
        ext.inputs.job = extraction_job(job)
        ext.inputs.error_dir = str(error_dir)
        ext.config = {"execution": {"crashdump_dir": str(log_dir)}}
        ts_done = is_current(job_path(job, "timeseries_path"), job["settings_hash"])
        ext.overwrite = bool(overwrite or not ts_done)
        wf.add_nodes([ext])
        if "model" in job:
            emb = Node(Function(input_names=["job", "timeseries", "error_dir"], output_names=["embedding"],
                                function=_embed_node), name=f"embed_{safe}")
            emb.inputs.job = job
            emb.inputs.error_dir = str(error_dir)
            emb.config = {"execution": {"crashdump_dir": str(log_dir)}}
            emb.overwrite = bool(overwrite or not is_current(job_path(job, "embedding_path"), job["embedding_hash"]))
            wf.connect(ext, "timeseries", emb, "timeseries")
            embed_nodes.setdefault(key, []).append(emb)
    for key in means_needed:
        nodes = embed_nodes.get(key, [])
        if not nodes:
            continue
        from nipype.interfaces.utility import Merge

        safe = outputs.sanitize_label(f"sub{key[0]}ses{key[1] or ''}")
        merge = Node(Merge(len(nodes)), name=f"merge_{safe}")
        for i, node in enumerate(nodes, start=1):
            wf.connect(node, "embedding", merge, f"in{i}")
        first = subjects[key][0]
        mean = Node(Function(input_names=["out_path", "embeddings", "settings_hash", "output_dir"],
                             output_names=["mean"], function=_mean_node), name=f"mean_{safe}")
        mean.inputs.out_path = str(_mean_path(settings, key, first))
        mean.inputs.settings_hash = first["embedding_hash"]
        mean.inputs.output_dir = str(settings.output_dir.resolve())
        mean.overwrite = True
        mean.config = {"execution": {"crashdump_dir": str(Path(settings.output_dir, f"sub-{key[0]}", "log"))}}
        wf.connect(merge, "out", mean, "embeddings")

    n_nodes = len(wf._graph.nodes())
    progress = _Progress(n_nodes, enabled=sys.stderr.isatty())
    plugin = "MultiProc" if settings.run.nprocs > 1 else "Linear"
    plugin_args: dict[str, Any] = {"status_callback": progress.callback}
    if plugin == "MultiProc":
        plugin_args.update(n_procs=settings.run.nprocs, raise_insufficient=False)
    failures: list[tuple[int, str]] = []
    try:
        with progress:
            wf.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError:
        pass  # nipype raises after all runnable nodes finished; we report below
    for f in sorted(own_errors):
        if f.is_file():
            rec = json.loads(f.read_text())
            failures.append((int(rec["code"]), rec["message"]))
    if progress.failed and not failures:  # nipype itself failed (our steps record their errors)
        full = _cannot_write(work_dir)
        if full:
            failures.append((73, f"{work_dir}: cannot write the work directory ({full}); "
                                 "free space or choose another --work-dir"))
        else:
            failures.append((1, f"{progress.failed} step(s) crashed; see the crash files under OUTPUT_DIR/sub-*/log/"))
    return failures


def _cannot_write(folder: Path, size: int = 1 << 20) -> str | None:
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


def _mean_path(settings, key, job) -> Path:
    return outputs.subject_embedding_path(settings.output_dir, key[0], key[1], job["atlas"]["label"], job["model"]["label"])


class _Progress:
    """A rich progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.failed = 0
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]participant"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.description}"), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def callback(self, node, status):
        if status not in ("end", "exception"):
            return
        self.done += 1
        if status == "exception":
            self.failed += 1
        name = node.name
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=name)
        else:
            LOGGER.info("[%d/%d] %s %s", self.done, self.total, name, "failed" if status == "exception" else "done")


def failures_summary(failures: list[tuple[int, str]]) -> BidsAppError | None:
    if not failures:
        return None
    code, message = failures[0]
    more = f" (and {len(failures) - 1} more failures; see the log)" if len(failures) > 1 else ""
    return BidsAppError(message + more, code=code)
