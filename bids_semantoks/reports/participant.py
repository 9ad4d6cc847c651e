"""The participant QC page, ``OUTPUT_DIR/sub-<label>.html`` (as fMRIPrep and XCP-D write it).

Built only from what is on disk after a subject was processed: the time-series and
embedding TSVs and their JSON sidecars under ``OUTPUT_DIR/sub-<label>/``, the
confounds file named in a sidecar's ``Sources`` (``bids:input:<path>``, resolved
against BIDS_DIR or the output dataset's ``DatasetLinks.input``), and the atlas table
for the network of each region. So the page can be (re)written at any time, by the
participant level or by hand, and does not depend on how the level ran.

Per run: framewise displacement with the censored volumes shaded, a carpet plot of
the regional series with the embedding's crops above it, region and network coverage
(what became n/a, which networks were masked) and the embedding's summary.

Censoring: when the time-series sidecar lists the removed volumes
(``CensoredVolumes``: 0-based indices of the acquisition volumes removed before
cleaning) the page shades exactly those; otherwise it estimates them as
``framewise_displacement > FDThreshold`` and says so.

Anything missing or unreadable becomes a note on the page: only a bug raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from bids_semantoks import __version__
from bids_semantoks.bids import outputs
from bids_semantoks.reports import figures

TEMPLATE = "participant_report.html.j2"
#: Sidecar key (time series) with the exact 0-based indices of the volumes removed before cleaning.
CENSORED_KEY = "CensoredVolumes"
_SUBJECT_MEAN = re.compile(r"^sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?_atlas-")
_NO_INPUT = " (input dataset unknown)"
_READ_ERRORS = (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError)


def report_path(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<label>.html``."""
    return Path(output_dir) / f"sub-{_label(subject)}.html"


def write_participant_report(output_dir: Path, subject: str, bids_dir: Path | None = None) -> Path:
    """Write (or leave unchanged) the QC page of one participant.

    Parameters
    ----------
    output_dir : Path
        OUTPUT_DIR of the participant level.
    subject : str
        Participant label, with or without ``sub-``.
    bids_dir : Path, optional
        The input dataset, to read the confounds files named in the sidecars' ``Sources``.
        Default: ``DatasetLinks.input`` of ``OUTPUT_DIR/dataset_description.json``.

    Returns
    -------
    Path
        ``OUTPUT_DIR/sub-<label>.html``; written atomically, and not rewritten when an
        identical page is already there (reruns leave it byte- and mtime-identical).

    Notes
    -----
    Missing or unreadable files (no embedding, no confounds, no runs, a damaged sidecar)
    become notes on the page; the function raises only on bugs, and
    :class:`~bids_semantoks.errors.OutputError` when the page cannot be written.
    """
    output_dir = Path(output_dir)
    label = _label(subject)
    page = build_context(output_dir, label, bids_dir)
    html = render(page)
    path = report_path(output_dir, label)
    outputs.write_text_if_changed(path, html)
    return path


def write_participant_reports(output_dir: Path, subjects: list[str], bids_dir: Path | None = None) -> list[Path]:
    """Write the QC page of each subject; a page that fails is one warning line, never an error.

    The participant level calls this last: a report must not fail a level whose outputs are
    written. ``KeyboardInterrupt`` still stops it.

    Returns
    -------
    list of Path
        The pages written (or already up to date).
    """
    import logging

    logger = logging.getLogger("bids_semantoks")
    done = []
    for subject in subjects:
        try:
            done.append(write_participant_report(output_dir, subject, bids_dir))
        except Exception as exc:  # noqa: BLE001 - a QC page never fails the level
            if isinstance(exc, OSError) and exc.strerror:
                detail = f"{exc.strerror}: {report_path(output_dir, subject)}"
            else:
                detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            logger.warning("sub-%s: QC page not written (%s)", _label(subject), detail)
    return done


def render(context: dict[str, Any]) -> str:
    """Render the page; non-ASCII characters become entities (the bytes do not depend on the locale)."""
    import jinja2

    source = files("bids_semantoks").joinpath("data", "templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.from_string(source).render(**context).encode("ascii", "xmlcharrefreplace").decode("ascii")


# -- gathering -------------------------------------------------------------------------
@dataclass
class _Run:
    """One time-series file and everything shown about it."""

    title: str
    session: str | None
    files: list[str]
    facts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fd_figure: str | None = None
    fd_text: str = ""
    carpet: str | None = None
    carpet_text: str = ""
    coverage_figure: str | None = None
    networks: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    low_coverage: list[str] = field(default_factory=list)
    embedding: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def build_context(output_dir: Path, label: str, bids_dir: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain data (figures as data URIs)."""
    output_dir = Path(output_dir)
    subject_dir = output_dir / f"sub-{label}"
    notes: list[str] = []
    bids_root = _bids_root(output_dir, bids_dir)
    settings = _read_json(subject_dir / "log" / "bids_semantoks_participant.json")[0] or {}
    funcs = _func_dirs(subject_dir)
    series = sorted(p for d in funcs for p in d.glob("*_timeseries.tsv") if not p.name.startswith("."))
    embeddings = sorted(p for d in funcs for p in d.glob("*_embedding.tsv") if not p.name.startswith("."))
    means = [p for p in embeddings if _SUBJECT_MEAN.match(p.name)]
    by_source = _embeddings_by_source(output_dir, [p for p in embeddings if p not in means])
    atlas_cache: dict[tuple, tuple[list[str], list[str]] | None] = {}
    runs = []
    for ts in series:
        emb = by_source.get(ts.resolve())
        runs.append(_run_section(output_dir, ts, emb, bids_root, settings, atlas_cache))
    if bids_root is None and any(_NO_INPUT in r.fd_text for r in runs):
        notes.append("The input dataset was not found (no BIDS_DIR given and no readable DatasetLinks.input in "
                     "dataset_description.json): framewise displacement cannot be shown.")
    if not subject_dir.is_dir():
        notes.append(f"sub-{label}/ does not exist in OUTPUT_DIR: this participant has not been processed.")
    elif not series:
        notes.append(f"No time series under sub-{label}/: every run was dropped, skipped or failed "
                     f"(see sub-{label}/log/ and the console log).")
    sessions = []
    for ses in sorted({r.session or "" for r in runs}):
        sessions.append({"label": ses, "runs": [r for r in runs if (r.session or "") == ses]})
    return {
        "title": f"sub-{label}",
        "subject": label,
        "version": __version__,
        "notes": notes,
        "overview": [r.summary for r in runs],
        "sessions": sessions,
        "means": [_mean_section(output_dir, p) for p in means],
        "settings": _settings_rows(settings),
        "group_report": (output_dir / "group" / "report.html").is_file(),
        "colors": {"na": figures.NA_COLOR, "censor": figures.CENSOR_COLOR},
    }


def _label(subject: str) -> str:
    subject = str(subject)
    return subject[4:] if subject.startswith("sub-") else subject


def _func_dirs(subject_dir: Path) -> list[Path]:
    dirs = [subject_dir / "func"] + sorted(subject_dir.glob("ses-*/func"))
    return [d for d in dirs if d.is_dir()]


def _rel(output_dir: Path, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(output_dir).resolve()))
    except ValueError:
        return str(path)


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(content, None), or (None, one-line reason)."""
    if not path.is_file():
        return None, f"{path.name}: missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"{path.name}: unreadable ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, f"{path.name}: not a JSON object"
    return data, None


def _read_tsv(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False), None
    except _READ_ERRORS as exc:
        return None, f"{path.name}: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"


def _bids_root(output_dir: Path, bids_dir: Path | None) -> Path | None:
    if bids_dir is not None:
        return Path(bids_dir)
    desc = _read_json(output_dir / "dataset_description.json")[0] or {}
    links = desc.get("DatasetLinks")
    uri = links.get("input") if isinstance(links, dict) else None
    if isinstance(uri, str) and uri:
        parsed = urlparse(uri)
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
        if path.is_dir():
            return path
    return None


def _resolve_source(uri: str, bids_root: Path | None, output_dir: Path) -> Path | None:
    if uri.startswith("bids:input:"):
        return bids_root / uri[len("bids:input:"):] if bids_root is not None else None
    if uri.startswith("bids::"):
        return output_dir / uri[len("bids::"):]
    return Path(uri)


def _embeddings_by_source(output_dir: Path, paths: list[Path]) -> dict[Path, Path]:
    """Run embedding of each time-series file: by the embedding sidecar's ``Sources``, else by name."""
    found: dict[Path, Path] = {}
    for emb in paths:
        meta = _read_json(outputs.sidecar_of(emb))[0] or {}
        sources = [s for s in _list(meta.get("Sources")) if isinstance(s, str) and s.endswith("_timeseries.tsv")]
        if sources:
            target = _resolve_source(sources[0], None, output_dir)
        else:  # same name up to _desc-: the first time series of that stem
            stem = emb.name.split("_desc-")[0]
            same = sorted(emb.parent.glob(f"{stem}_desc-*_timeseries.tsv"))
            target = same[0] if same else None
        if target is not None:
            found.setdefault(target.resolve(), emb)
    return found


def _network_table(names: list[str], atlas_label: str | None, settings: dict[str, Any],
                   cache: dict) -> tuple[list[str], list[str]] | None:
    """(network of each region, network order) from the atlas table, or None when unknown."""
    key = (tuple(names), atlas_label)
    if key in cache:
        return cache[key]
    from bids_semantoks.atlas import AtlasTable
    from bids_semantoks.atlas.registry import DEFAULT_ATLAS_LABEL, get_default_table
    from bids_semantoks.errors import BidsAppError

    part = settings.get("participant") or {}
    run = settings.get("run") or {}
    tables = []
    atlas = part.get("atlas")
    try:
        if isinstance(atlas, str) and atlas not in ("", "default") and Path(atlas).is_file():
            tables.append(AtlasTable.from_tsv(Path(atlas)))
        if atlas_label in (None, DEFAULT_ATLAS_LABEL) or atlas in (None, "default"):
            tables.append(get_default_table(data_dir=run.get("data_dir"), download=False))
    except (BidsAppError, OSError, ValueError, KeyError):
        pass
    result = None
    for table in tables:
        if list(table.names) == list(names):
            result = (list(table.network_labels), list(table.networks))
            break
    cache[key] = result
    return result


def _fmt(value: Any, spec: str = "g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else format(float(value), spec)
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "none"
    return str(value)


def _run_section(output_dir: Path, ts: Path, emb: Path | None, bids_root: Path | None, settings: dict[str, Any],
                 atlas_cache: dict) -> _Run:
    session = next((p[4:] for p in ts.parent.parent.parts[-1:] if p.startswith("ses-")), None)
    title = ts.name[: -len("_timeseries.tsv")]
    run = _Run(title=title, session=session, files=[_rel(output_dir, ts)])
    meta, err = _read_json(outputs.sidecar_of(ts))
    if meta is None:
        run.notes.append(f"Time-series sidecar {err}: facts, coverage and FD are not shown.")
        meta = {}
    frame, err = _read_tsv(ts)
    if frame is None:
        run.notes.append(f"Time series {err}.")
    data = _numeric(frame) if frame is not None else np.zeros((0, 0))
    coverage = meta.get("Coverage") if isinstance(meta.get("Coverage"), dict) else None
    names = [str(c) for c in frame.columns] if frame is not None else [str(n) for n in (coverage or {})]
    if data.size:
        missing = ~np.isfinite(data).any(axis=0)
    else:  # the table is unreadable or empty: what the sidecar says became n/a
        listed = {str(n) for n in _list(meta.get("MissingRegions")) + _list(meta.get("LowCoverageRegions"))}
        missing = np.array([n in listed for n in names], bool) if frame is None else np.ones(len(names), bool)
    if frame is not None and len(frame) == 0:
        run.notes.append("The time series has no rows.")
    tr = _num(meta.get("RepetitionTime"))
    tr_in = _num(meta.get("OriginalRepetitionTime"))
    net = _network_table(names, meta.get("Atlas"), settings, atlas_cache) if names else None
    if net is None:
        region_networks, network_order = ["all regions"] * len(names), ["all regions"]
        if names:
            run.notes.append("The atlas table of these regions was not found (atlas cache or --atlas file): "
                             "regions are not grouped by network.")
    else:
        region_networks, network_order = net
    emb_meta, emb_frame = None, None
    if emb is not None:
        run.files.append(_rel(output_dir, emb))
        emb_meta, err = _read_json(outputs.sidecar_of(emb))
        if emb_meta is None:
            run.notes.append(f"Embedding sidecar {err}.")
        emb_frame, err = _read_tsv(emb)
        if emb_frame is None:
            run.notes.append(f"Embedding {err}.")
    masked_networks = [str(n) for n in _list((emb_meta or {}).get("MaskedNetworks"))]

    # facts
    run.facts = [
        ("atlas", _fmt(meta.get("Atlas"))),
        ("denoising strategy", _fmt(meta.get("DenoiseStrategy"))),
        ("acquisition TR / model TR", f"{_unit(tr_in, 's')} / {_unit(tr, 's')}"),
        ("volumes in / censored", f"{_fmt(meta.get('NumberOfVolumes'))} / {_fmt(meta.get('VolumesCensored'))}"),
        ("samples written (at the model TR)", _fmt(meta.get("NumberOfSamples", len(data)))),
        ("mean FD", _unit(_num(meta.get("MeanFD")), "mm", spec=".3f")),
        ("high-pass / low-pass", f"{_unit(_num(meta.get('HighPass')), 'Hz', 'off')} / "
                                 f"{_unit(_num(meta.get('LowPass')), 'Hz', 'off')}"),
        ("confounds regressed", str(len(_list(meta.get("ConfoundsUsed"))))),
        ("regions n/a", f"{int(missing.sum())} of {len(names)}"),
    ]

    # framewise displacement
    _fd_section(run, meta, output_dir, bids_root, tr_in)

    # carpet, with the crops of the embedding
    crops: list[tuple[float, float]] = []
    onsets = [o for o in _list((emb_meta or {}).get("CropOnsets")) if _num(o) is not None]
    crop_len = int(_num((emb_meta or {}).get("CropLength")) or 100)
    if tr and onsets:
        crops = [(float(o) / tr, float(o) / tr + crop_len) for o in onsets]
    if data.size:
        run.carpet = figures.carpet_figure(data, region_networks, network_order, tr, crops)
        run.carpet_text = (f"{data.shape[1]} regions (rows, grouped by network) x {data.shape[0]} samples, "
                           "z-scored; censored samples are not in the file, so neighbouring columns can be "
                           "apart in acquisition time.")
        if crops:
            run.carpet_text += f" Green bars: the {len(crops)} crop(s) of {crop_len} samples embedded."

    # coverage
    cov_values = [(_num(coverage.get(n)) if coverage else None) for n in names]
    if coverage and names:
        run.coverage_figure = figures.coverage_figure(cov_values, region_networks, network_order, missing,
                                                      _num(meta.get("CoverageThreshold")))
    run.missing = [n for n, m in zip(names, missing) if m]
    run.low_coverage = [str(n) for n in _list(meta.get("LowCoverageRegions"))]
    for name in network_order:
        idx = [j for j, n in enumerate(region_networks) if n == name]
        covs = [cov_values[j] for j in idx if cov_values[j] is not None]
        n_missing = int(sum(missing[j] for j in idx))
        run.networks.append({
            "name": name, "regions": len(idx), "missing": n_missing,
            "low": sum(names[j] in run.low_coverage for j in idx),
            "coverage": f"{np.median(covs):.2f}" if covs else "n/a",
            "masked": name in masked_networks,
            "all_missing": bool(idx) and n_missing == len(idx),
        })

    # embedding
    if emb is not None:
        run.embedding = _embedding_section(emb_meta or {}, emb_frame, tr, crop_len)
    run.summary = {
        "session": session or "", "title": title, "samples": _fmt(meta.get("NumberOfSamples", len(data))),
        "censored": _fmt(meta.get("VolumesCensored")), "mean_fd": _fmt(_num(meta.get("MeanFD")), ".3f"),
        "missing": f"{int(missing.sum())} / {len(names)}", "masked": _fmt(masked_networks) if emb else "",
        "crops": (str(len(run.embedding["crops"]) or len(onsets)) if run.embedding is not None
                  else "no embedding"),
        "anchor": _anchor(title),
        "flag": bool(run.notes) or bool(masked_networks) or (len(names) > 0 and missing.all()),
    }
    return run


def _unit(value: float | None, unit: str, none: str = "n/a", spec: str = "g") -> str:
    return none if value is None else f"{format(value, spec)} {unit}"


def _short(sha: Any) -> str:
    return f"{sha[:16]}..." if isinstance(sha, str) and len(sha) > 16 else _fmt(sha)


def _anchor(title: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]", "", title)


def _numeric(frame: pd.DataFrame) -> np.ndarray:
    """The table as floats; text that is not a number (a damaged file) becomes NaN."""
    return frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def _list(value: Any) -> list:
    """A sidecar list, or [] when the key is absent or holds something else."""
    return list(value) if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _fd_section(run: _Run, meta: dict[str, Any], output_dir: Path, bids_root: Path | None, tr: float | None) -> None:
    sources = [s for s in _list(meta.get("Sources")) if isinstance(s, str)]
    conf_uri = next((s for s in sources if "desc-confounds" in s or s.endswith("_regressors.tsv")), None)
    if conf_uri is None:
        run.fd_text = ("No confounds file in the sidecar's Sources (time-series input, or a run without "
                       "confounds): framewise displacement is not available.")
        return
    path = _resolve_source(conf_uri, bids_root, output_dir)
    if path is None or not path.is_file():
        run.fd_text = f"Confounds file {conf_uri} not found{'' if bids_root else _NO_INPUT}."
        return
    conf, err = _read_tsv(path)
    if conf is None or "framewise_displacement" not in conf.columns:
        run.fd_text = f"{conf_uri}: {err or 'no framewise_displacement column'}."
        return
    fd = pd.to_numeric(conf["framewise_displacement"], errors="coerce").to_numpy(dtype=float)
    threshold = _num(meta.get("FDThreshold"))
    n_censored = _num(meta.get("VolumesCensored"))
    exact = meta.get(CENSORED_KEY)
    censored = None
    if isinstance(exact, list) and all(type(i) is int and 0 <= i < len(fd) for i in exact):
        censored = np.zeros(len(fd), bool)
        censored[exact] = True
        label = "censored"
        how = f"{int(censored.sum())} censored volume(s) shaded, as listed in the sidecar ({CENSORED_KEY})."
    elif threshold is not None:
        censored = fd > threshold
        label = f"FD > {threshold:g} mm"
        how = (f"{int(censored.sum())} volume(s) with FD above the threshold shaded; the sidecar reports "
               f"{_fmt(n_censored)} censored in all (the exact mask also counts DVARS outliers, "
               "non-steady-state volumes and segments too short to keep).")
    else:
        label = "censored"
        how = (f"No FD threshold for strategy '{_fmt(meta.get('DenoiseStrategy'))}'; "
               f"{_fmt(n_censored)} volume(s) censored in all.")
    n_vol = _num(meta.get("NumberOfVolumes"))
    if n_vol is not None and len(fd) != int(n_vol):
        run.notes.append(f"{conf_uri} has {len(fd)} rows but the sidecar reports {int(n_vol)} volumes: "
                         "the confounds file changed since this run was processed.")
    run.fd_figure = figures.fd_figure(fd, tr, censored, threshold, label)
    finite = fd[np.isfinite(fd)]
    run.fd_text = (f"From {conf_uri}: mean {finite.mean():.3f} mm, max {finite.max():.3f} mm. {how}"
                   if finite.size else f"From {conf_uri}: no finite value. {how}")


def _embedding_section(meta: dict[str, Any], frame: pd.DataFrame | None, tr: float | None,
                       crop_len: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "facts": [
            ("model", _fmt(meta.get("Model"))),
            ("checkpoint sha256", _short(meta.get("ModelSha256"))),
            ("dimension", _fmt(meta.get("EmbeddingDimension"))),
            ("crop length", f"{crop_len} samples" + (f" ({crop_len * tr:g} s)" if tr else "")),
            ("zero-padded", _fmt(meta.get("ZeroPadded"))),
            ("masked networks", _fmt(_list(meta.get("MaskedNetworks")))),
            ("zero-filled regions", str(len(_list(meta.get("ZeroFilledRegions"))))),
            ("device / precision", f"{_fmt(meta.get('Device'))} / {_fmt(meta.get('Precision'))}"),
        ],
        "demo": bool(meta.get("ModelIsRandomDemo")),
        "warnings": [str(w) for w in _list(meta.get("Warnings"))],
        "zero_filled": [str(r) for r in _list(meta.get("ZeroFilledRegions"))],
        "crops": [], "similarity": None,
    }
    if frame is None or frame.empty:
        return out
    avg = _numeric(frame[[c for c in frame.columns if str(c).startswith("avg_")]])
    cls = _numeric(frame[[c for c in frame.columns if str(c).startswith("cls_")]])
    onsets = pd.to_numeric(frame["onset"], errors="coerce").tolist() if "onset" in frame else [None] * len(frame)
    for k in range(len(frame)):
        onset = _num(onsets[k])
        out["crops"].append({
            "crop": k, "onset": _fmt(onset),
            "span": (f"{onset / tr:g} - {onset / tr + crop_len - 1:g}" if (onset is not None and tr) else "n/a"),
            "avg": f"{np.linalg.norm(avg[k]):.3g}" if avg.size else "n/a",
            "cls": f"{np.linalg.norm(cls[k]):.3g}" if cls.size else "n/a",
            "finite": bool(np.isfinite(avg[k]).all() and np.isfinite(cls[k]).all()),
        })
    feats = np.hstack([avg, cls])
    if len(frame) > 1 and feats.size and np.isfinite(feats).all():
        out["similarity"] = figures.similarity_figure(feats)
    return out


def _mean_section(output_dir: Path, path: Path) -> dict[str, Any]:
    meta, err = _read_json(outputs.sidecar_of(path))
    meta = meta or {}
    return {"file": _rel(output_dir, path), "note": err or "",
            "facts": [("model", _fmt(meta.get("Model"))), ("runs", _fmt(meta.get("NumberOfRuns"))),
                      ("crops", _fmt(meta.get("NumberOfCrops"))),
                      ("masked networks (any run)", _fmt(_list(meta.get("MaskedNetworks")))),
                      ("random demo model", _fmt(bool(meta.get("ModelIsRandomDemo"))))]}


#: Selection settings: they say which subjects a run processed, not how (a rerun of a subset
#: must not change this subject's page).
_SELECTION = ("participant_label", "session_label", "task_id")


def _settings_rows(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings that shape the results (the ``participant`` section, less the selection).

    Execution settings (``run``: threads, work folder, ``--overwrite``...) are left out: they do
    not change the outputs, so they must not change the page either.
    """
    values = settings.get("participant")
    if not isinstance(values, dict):
        return []
    return [(f"participant.{k}", json.dumps(v)) for k, v in values.items() if k not in _SELECTION]
