"""Typed descriptions of the participant level's work: what to compute, from what, into where.

A :class:`Context` holds what every run shares (atlas, model, settings); a :class:`SubjectJob`
holds the runs of one subject (and session) with their output paths and the keys that decide
whether an output is up to date; the work unit handed to a process is a list of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_semantoks.bids.layout import RunInputs

#: Files up to this size are hashed whole; larger ones (BOLD images) by size, mtime, head and tail.
_FULL_HASH_BYTES = 1 << 20
_EDGE_BYTES = 1 << 16


@dataclass(frozen=True)
class AtlasInfo:
    """The atlas of this run of the app."""

    label: str
    names: tuple[str, ...]
    indices: tuple[int, ...]
    networks: tuple[str, ...]
    channel_networks: tuple[int, ...]
    dseg: str | None
    dseg_sha: str | None
    sources: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (what the extraction step reads)."""
        return {"label": self.label, "names": list(self.names), "indices": list(self.indices),
                "networks": list(self.networks), "channel_networks": list(self.channel_networks),
                "dseg": self.dseg, "dseg_sha": self.dseg_sha, "sources": list(self.sources)}


@dataclass(frozen=True)
class ModelInfo:
    """The encoder that embeds the runs (``--model``), checked against the atlas."""

    label: str
    path: str
    source: str
    sha256: str
    is_demo: bool
    device: str
    data_dir: str | None

    def identity(self) -> dict[str, str]:
        """What the embeddings depend on (not where the file lies or which device runs it)."""
        return {"label": self.label, "sha256": self.sha256, "source": self.source}


@dataclass(frozen=True)
class Context:
    """What every run of one invocation shares."""

    atlas: AtlasInfo
    model: ModelInfo | None
    settings: dict[str, Any]  # ParticipantSettings as JSON, with the effective denoising strategy
    bids_dir: Path
    output_dir: Path
    omp_nthreads: int
    overwrite: bool
    verbose: int


@dataclass
class RunJob:
    """One BOLD run (or time-series file): its inputs, outputs and up-to-date keys.

    ``extraction_key`` covers the extraction settings, the atlas, the software version and the
    identity (size, mtime, content hash) of every input file; ``embedding_key`` adds the model.
    They are written as ``SettingsHash`` into the outputs' sidecars.
    """

    run: RunInputs
    timeseries_path: Path
    embedding_path: Path | None
    extraction_key: str = ""
    embedding_key: str | None = None

    @property
    def name(self) -> str:
        """The run's entities, space and resolution (unique per run), e.g. ``sub-01_task-rest_space-X_res-2``."""
        return self.timeseries_path.name.rsplit("_atlas-", 1)[0]

    def step_dict(self, ctx: Context) -> dict[str, Any]:
        """The JSON-able job the extraction step reads."""
        run = self.run
        return {
            "name": self.name,
            "run": {"entities": run.entities, "bold": str(run.bold), "tr": run.tr,
                    "confounds": str(run.confounds) if run.confounds else None,
                    "mask": str(run.mask) if run.mask else None, "space": run.space, "res": run.res,
                    "metadata": run.metadata},
            "atlas": ctx.atlas.as_dict(),
            "settings": ctx.settings,
            "settings_hash": self.extraction_key,
            "bids_dir": str(ctx.bids_dir),
            "output_dir": str(ctx.output_dir),
            "omp_nthreads": ctx.omp_nthreads,
            "timeseries_path": str(self.timeseries_path.relative_to(ctx.output_dir)),
        }


@dataclass
class SubjectJob:
    """The runs of one subject (and session), processed together in one work unit."""

    subject: str
    session: str | None
    runs: list[RunJob] = field(default_factory=list)
    mean_path: Path | None = None

    @property
    def label(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    def log_dir(self, output_dir: Path) -> Path:
        return Path(output_dir, f"sub-{self.subject}", "log")


@dataclass
class RunResult:
    """What became of one run; ``status`` is done, current, dropped or failed."""

    name: str
    subject: str
    status: str
    message: str = ""
    code: int = 0
    detail: str = ""  # traceback of a failure (crash file; console with -vv)


def digest(obj: Any) -> str:
    """Short sha256 of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_identity(path: Path | None, root: Path) -> list | None:
    """``[relative path, size, mtime_ns, sha256]`` of an input file; the hash covers the whole file
    when it is small, else its first and last 64 KiB (with size and mtime: a cheap identity).

    Raises
    ------
    FileNotFoundError
        A missing file or a broken symbolic link (an un-fetched DataLad/git-annex file).
    """
    if path is None:
        return None
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if st.st_size <= _FULL_HASH_BYTES:
            h.update(fh.read())
        else:
            h.update(fh.read(_EDGE_BYTES))
            fh.seek(-_EDGE_BYTES, os.SEEK_END)
            h.update(fh.read(_EDGE_BYTES))
    try:
        rel = str(path.relative_to(root))
    except ValueError:
        rel = str(path)
    return [rel, st.st_size, st.st_mtime_ns, h.hexdigest()[:16]]
