"""Command line: ``bids_semantoks BIDS_DIR OUTPUT_DIR {participant,group,pretrain} [options]``.

This module only parses options into :class:`bids_semantoks.config.Settings` and maps
errors to exit codes; :mod:`bids_semantoks.levels` runs the levels.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from bids_semantoks import __version__
from bids_semantoks.config import DENOISE_STRATEGIES
from bids_semantoks.errors import EX_FAILURE, EX_OK, EX_USAGE, BidsAppError

LOGGER = logging.getLogger("bids_semantoks")
PARTICIPANT = "Participant selection and inputs"


class _Greedy(click.Option):
    """An option that takes one or more values (``--participant-label 01 02``), as BIDS Apps do."""

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            original = opt.process

            def process(value, state, _original=original, _prefixes=opt.prefixes):
                values = [value]
                while state.rargs and not any(state.rargs[0].startswith(p) for p in _prefixes):
                    values.append(state.rargs.pop(0))
                for v in values:
                    _original(v, state)

            opt.process = process


def _labels(values: tuple[str, ...]) -> list[str] | None:
    """Labels given on the command line, or read from files with one label per line."""
    from bids_semantoks.config import read_user_text

    out: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_file():  # a byte-order mark (Windows editors) is dropped; UTF-16 is refused clearly
            lines = (line.strip() for line in read_user_text(path, "label file").splitlines())
            out += [line for line in lines if line and not line.startswith("#")]
        else:
            out += value.replace(",", " ").split()
    return out or None


#: Environment variables that size the thread pools of OpenMP, the BLAS libraries and numexpr.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def limit_threads(n: int) -> None:
    """Limit BLAS/OpenMP/torch to ``n`` threads in this process and the processes it starts.

    The libraries read the variables once, when they load: this runs before the CLI imports
    numpy or torch. When they are already loaded (the CLI called from Python), their pools are
    resized at run time as well (threadpoolctl, ``torch.set_num_threads``).
    """
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    if "numpy" in sys.modules or "torch" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _pybids_filters(filters: dict) -> dict:
    """fMRIPrep's JSON filter values as pybids queries: ``null`` = entity absent, ``"*"`` = any value."""
    from bids.layout import Query

    special = {None: Query.NONE, "*": Query.ANY}
    return {query: {k: special.get(v, v) if isinstance(v, (str, type(None))) else v for k, v in ents.items()}
            for query, ents in filters.items()}


#: Settings whose command-line option is not ``--<field-name>``, for error messages.
FLAGS = {
    "participant.bids_filters": "--bids-filter-file", "group.targets": "--target", "group.target_types": "--target-type",
    "group.semantoks_protocol": "--probe-protocol", "group.raw_dir": "--derivatives", "group.seed": "--random-seed",
    "pretrain.seed": "--random-seed", "pretrain.name": "--model-name", "pretrain.base_lr": "--lr", "run.verbose": "-v",
}


def _key_values(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        if "=" not in value:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=option)
        key, val = value.split("=", 1)
        out[key.strip()] = val.strip()
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bids_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("output_dir", type=click.Path(path_type=Path, file_okay=False))
@click.argument("analysis_level", type=click.Choice(["participant", "group", "pretrain"]))
@click.option("--participant-label", "--participant_label", "participant_label", multiple=True, cls=_Greedy,
              help="Subject label(s), with or without 'sub-', space/comma separated, or a file with one per line.")
@click.option("--session-label", "--session_label", "session_label", multiple=True, cls=_Greedy, help="Session label(s).")
@click.option("-t", "--task-id", "--task_id", "task_id", multiple=True, cls=_Greedy, help="Task label(s).")
@click.option("--bids-filter-file", "--bids_filter_file", "bids_filter_file",
              type=click.Path(path_type=Path, dir_okay=False),
              help='fMRIPrep-style JSON filters, e.g. {"bold": {"acquisition": "mb4"}}.')
@click.option("--space", type=str, default=None, show_default="MNI152NLin2009cAsym",
              help="Template space of the BOLD runs (MNI152NLin2009cAsym or MNI152NLin6Asym; any res-).")
@click.option("--input-type", type=click.Choice(["fmriprep", "timeseries"]), default=None,
              show_default="fmriprep", help="fMRIPrep derivatives, or XCP-D-style *_timeseries.tsv files.")
@click.option("--atlas", type=str, default=None,
              help="'default' (Schaefer-400 7N + Tian S3 + Buckner-7) or the path of a user _dseg.tsv.")
@click.option("--denoise-strategy", type=click.Choice(list(DENOISE_STRATEGIES)),
              default=None, show_default="simple", help="nilearn confound preset (see README for the rationale).")
@click.option("--fd-thresh", type=float, default=None, show_default="0.5", help="FD threshold (mm) for scrubbing.")
@click.option("--min-time", type=float, default=None, show_default="100",
              help="Drop runs with less retained time (s) after censoring.")
@click.option("--lower-bpf", type=float, default=None, show_default="0.01", help="High-pass (Hz); 0 disables.")
@click.option("--upper-bpf", type=float, default=None, show_default="0.1", help="Low-pass (Hz); 0 disables.")
@click.option("--target-tr", type=float, default=None, show_default="2.0",
              help="TR of the model input (s), 0.1-10; the released model was trained at 2.0.")
@click.option("--min-coverage", type=float, default=None, show_default="0.5",
              help="Regions with a smaller fraction of voxels in the brain mask become n/a.")
@click.option("--model", type=str, default=None, show_default="official",
              help="'official' (HuggingFace weights), 'none' (time series only), or a checkpoint / model folder.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, show_default="auto")
@click.option("--batch-size", type=int, default=None, help="Crops per forward pass (participant) or pre-training batch.")
@click.option("--save-tokens", is_flag=True, default=None, help="Also write per-network token embeddings.")
@click.option("--force-bandpass", is_flag=True, default=None,
              help="Band-pass even a series whose sidecar says it is filtered already (e.g. XCP-D outputs).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Data cache (atlases, model weights); default $BIDS_SEMANTOKS_DATA or ~/.cache/bids_semantoks.")
# group level
@click.option("--target", multiple=True, cls=_Greedy, help="[group] Phenotype column to predict (repeatable).")
@click.option("--target-type", multiple=True, cls=_Greedy, help="[group] COL=classification|regression.")
@click.option("--confounds", multiple=True, cls=_Greedy, help="[group] Phenotype column regressed out inside the folds.")
@click.option("--features", multiple=True, cls=_Greedy, type=click.Choice(["semantoks", "fc"]), help="[group] Feature sets.")
@click.option("--fc-kind", type=click.Choice(["correlation", "tangent"]), default=None, help="[group] Connectome.")
@click.option("--probe-protocol", type=click.Choice(["subject_mean", "crops"]), default=None,
              help="[group] Subject-mean embedding, or every crop a sample (the authors' protocol).")
@click.option("--cv-folds", type=int, default=None, help="[group] Outer folds.")
@click.option("--cv-repeats", type=int, default=None, help="[group] Outer repeats.")
@click.option("--cv-groups", type=str, default=None, help="[group] Leave-one-group-out on this column (e.g. site).")
@click.option("--n-permutations", type=int, default=None, help="[group] Label permutations for a p-value.")
@click.option("--phenotypes", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="[group] TSV/CSV keyed by participant_id.")
@click.option("--derivatives", multiple=True, cls=_Greedy, help="[group] NAME=PATH of other datasets, e.g. raw=/data/bids.")
@click.option("--model-label", type=str, default=None, help="[group] Which embeddings to use (desc- label).")
@click.option("--random-seed", type=int, default=None, help="Seed of cross-validation and pre-training.")
# pretrain level
@click.option("--epochs", type=int, default=None, help="[pretrain] Epochs.")
@click.option("--lr", type=float, default=None,
              help="[pretrain] Base learning rate per 256 samples: the peak LR is LR x batch size / 256 "
                   "(default 7e-4, the paper's: 1.4e-3 at batch 512).")
@click.option("--model-size", type=click.Choice(["tiny", "small", "base"]), default=None, help="[pretrain] Preset.")
@click.option("--train-fraction", type=float, default=None, help="[pretrain] Seeded fraction of subjects.")
@click.option("--model-name", type=str, default=None, help="[pretrain] Name of OUTPUT_DIR/models/<name>.")
@click.option("--resume", is_flag=True, default=None, help="[pretrain] Continue from the last checkpoint.")
# execution
@click.option("--config-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="TOML/YAML/JSON settings; command-line options take precedence.")
@click.option("-w", "--work-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Working directory (pybids database, locks, failure records); default OUTPUT_DIR/work; never inside BIDS_DIR.")
@click.option("--bids-database-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="pybids database folder; default under the work directory.")
@click.option("--nprocs", "--n-cpus", "--n_cpus", "nprocs", type=int, default=None, help="Parallel processes.")
@click.option("--omp-nthreads", type=int, default=None,
              help="Threads per process (BLAS, OpenMP, torch); default $OMP_NUM_THREADS, else CPUs / --nprocs.")
@click.option("-v", "--verbose", count=True, help="More logging (-v, -vv).")
@click.option("--overwrite", is_flag=True, default=None, help="Recompute outputs that already exist.")
@click.option("--notrack", is_flag=True, default=None, help="Accepted for compatibility; nothing is ever sent anywhere.")
@click.version_option(__version__, "--version", prog_name="bids_semantoks")
def cli(bids_dir, output_dir, analysis_level, **opts):
    """Brain-Semantoks embeddings, probes and pre-training from fMRIPrep derivatives.

    BIDS_DIR is fMRIPrep's output folder (or an XCP-D-style time-series dataset with
    --input-type timeseries); OUTPUT_DIR receives a BIDS derivatives dataset.
    """
    from bids_semantoks.config import build_settings, read_filter_json

    _setup_logging(opts["verbose"])
    filter_file = opts["bids_filter_file"]
    participant = {
        "participant_label": _labels(opts["participant_label"]),
        "session_label": _labels(opts["session_label"]),
        "task_id": _labels(opts["task_id"]),
        "bids_filters": read_filter_json(filter_file) if filter_file else None,
        **{k: opts[k] for k in ("space", "input_type", "atlas", "denoise_strategy", "fd_thresh", "min_time",
                                "lower_bpf", "upper_bpf", "target_tr", "min_coverage", "model", "device",
                                "save_tokens", "force_bandpass")},
        "batch_size": opts["batch_size"] if analysis_level == "participant" else None,
    }
    run = {k: opts[k] for k in ("work_dir", "bids_database_dir", "data_dir", "nprocs", "omp_nthreads",
                                "overwrite", "notrack")}
    run["verbose"] = opts["verbose"] or None
    group = {
        "targets": list(opts["target"]) or None,
        "target_types": _key_values(opts["target_type"], "--target-type") or None,
        "confounds": list(opts["confounds"]) or None,
        "features": list(opts["features"]) or None,
        "fc_kind": opts["fc_kind"],
        "semantoks_protocol": opts["probe_protocol"],
        "cv_folds": opts["cv_folds"],
        "cv_repeats": opts["cv_repeats"],
        "cv_groups": opts["cv_groups"],
        "n_permutations": opts["n_permutations"],
        "phenotypes": opts["phenotypes"],
        "raw_dir": _key_values(opts["derivatives"], "--derivatives").get("raw"),
        "model_label": opts["model_label"],
        "seed": opts["random_seed"],
    }
    pretrain = {
        "epochs": opts["epochs"],
        "base_lr": opts["lr"],  # --lr is the spec's base LR per 256 samples (peak = lr x batch / 256)
        "model_size": opts["model_size"],
        "train_fraction": opts["train_fraction"], "name": opts["model_name"], "resume": opts["resume"],
        "device": opts["device"],
        "seed": opts["random_seed"],
        "batch_size": opts["batch_size"] if analysis_level == "pretrain" else None,
    }
    sections = {"participant": participant, "run": run, "group": group, "pretrain": pretrain}
    flags = {f"{section}.{key}": f"{FLAGS.get(f'{section}.{key}', '--' + key.replace('_', '-'))} {_shown(value)}".strip()
             for section, values in sections.items() for key, value in values.items() if value is not None}
    flags.update({"participant.bids_filters": f"--bids-filter-file {filter_file}",
                  "group.raw_dir": f"--derivatives raw={group['raw_dir']}"})
    settings = build_settings(
        bids_dir, output_dir, analysis_level,
        {name: {k: v for k, v in values.items() if v is not None} for name, values in sections.items()},
        config_file=opts["config_file"], flags=flags,
    )
    # before numpy/torch are imported: they size their thread pools once, when they load
    limit_threads(settings.run.omp_nthreads)
    if filter_file:
        settings.participant.bids_filters = _pybids_filters(settings.participant.bids_filters)
    from bids_semantoks import levels

    levels.run(settings)


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is True else str(value)


def _setup_logging(verbose: int) -> None:
    from bids_semantoks.console import setup_logging

    setup_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and map errors to documented exit codes."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    try:
        cli.main(args=argv, prog_name="bids_semantoks", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EX_USAGE)
    except click.exceptions.Abort:
        sys.exit(130)
    except BidsAppError as exc:
        click.echo(f"bids_semantoks: error: {exc}", err=True)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: one line plus where to look
        LOGGER.debug("unexpected error", exc_info=True)
        click.echo(f"bids_semantoks: unexpected error: {type(exc).__name__}: {exc} "
                   "(rerun with -vv for the traceback and report it)", err=True)
        if os.environ.get("BIDS_SEMANTOKS_TRACEBACK"):
            raise
        sys.exit(EX_FAILURE)
    sys.exit(EX_OK)
