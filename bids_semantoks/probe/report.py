"""The group report: one self-contained HTML page (figures as base64 PNG).

Figures are drawn with matplotlib (Agg); the page is rendered from the jinja2
template ``bids_semantoks/data/templates/group_report.html.j2``. Nothing is
loaded from the network, so the page reads offline.
"""

from __future__ import annotations

import base64
import io
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from bids_semantoks.probe.metrics import METRICS, PRIMARY

TEMPLATE = "group_report.html.j2"
COLORS = {"semantoks": "#1f77b4", "fc": "#ff7f0e"}
LABELS = {"semantoks": "Semantoks", "fc": "FC"}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def bars_figure(run) -> str:
    """Mean ± sd over folds of every metric, one bar per feature set."""
    plt = _pyplot()
    metrics = METRICS[run.target.task]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for i, res in enumerate(run.results):
            mean, std = res.summary[metric]
            ax.bar(i, mean, yerr=0 if np.isnan(std) else std, capsize=4,
                   color=COLORS.get(res.features, "grey"), label=LABELS.get(res.features, res.features))
        ax.set_xticks(range(len(run.results)), [LABELS.get(r.features, r.features) for r in run.results])
        ax.set_title(metric.replace("_", " "))
        if metric in ("balanced_accuracy", "roc_auc"):
            chance = 1.0 / max(len(run.target.classes), 2) if metric == "balanced_accuracy" else 0.5
            ax.axhline(chance, color="k", ls="--", lw=0.8)
            ax.set_ylim(0, 1)
        if metric in ("r2", "pearson_r"):
            ax.axhline(0, color="k", lw=0.8)
    fig.suptitle(f"{run.target.name}: mean ± sd over {len(run.results[0].folds)} folds")
    fig.tight_layout()
    return _png(fig)


def outcome_figure(run) -> str:
    """Confusion matrices (classification) or predicted-vs-true scatter (regression)."""
    plt = _pyplot()
    n = len(run.results)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n, 3.4))
    for ax, res in zip(np.atleast_1d(axes), run.results):
        name = LABELS.get(res.features, res.features)
        if res.task == "classification":
            classes = res.classes
            counts = np.zeros((len(classes), len(classes)))
            for f in res.folds:
                for t, p in zip(res.y[f.test], f.y_pred):
                    counts[classes.index(t), classes.index(p)] += 1
            rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
            ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
            for i in range(len(classes)):
                for j in range(len(classes)):
                    ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center",
                            color="white" if rates[i, j] > 0.6 else "black")
            ax.set_xticks(range(len(classes)), classes)
            ax.set_yticks(range(len(classes)), classes)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{name} (row-normalised, all folds)")
        else:
            pred = pd.DataFrame({"i": np.concatenate([f.test for f in res.folds]),
                                 "p": np.concatenate([f.y_pred for f in res.folds])}).groupby("i")["p"].mean()
            truth = res.y[pred.index.to_numpy()]
            ax.scatter(truth, pred.to_numpy(), s=10, alpha=0.6, color=COLORS.get(res.features, "grey"))
            lo, hi = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlabel(f"true {res.target}")
            ax.set_ylabel("predicted (mean over repeats)")
            ax.set_title(name)
    fig.tight_layout()
    return _png(fig)


def map_figure(matrix: np.ndarray, labels: list[str], phenotypes: pd.DataFrame, targets: list[str],
               title: str) -> str:
    """First two principal components of the features, coloured by each target."""
    plt = _pyplot()
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    coords = PCA(n_components=2, random_state=0).fit_transform(StandardScaler().fit_transform(matrix))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.6))
    for ax, target in zip(np.atleast_1d(axes), targets):
        values = phenotypes.reindex(labels)[target]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() > 0.9 * values.replace("", np.nan).notna().sum() and numeric.nunique() > 5:
            sc = ax.scatter(coords[:, 0], coords[:, 1], c=numeric, s=10, cmap="viridis")
            fig.colorbar(sc, ax=ax, shrink=0.8)
        else:
            for k, level in enumerate(sorted(values.fillna("n/a").unique())):
                sel = (values.fillna("n/a") == level).to_numpy()
                ax.scatter(coords[sel, 0], coords[sel, 1], s=10, label=level, color=f"C{k % 10}")
            ax.legend(fontsize=7, markerscale=1.5)
        ax.set_title(f"coloured by {target}")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def _cohort_rows(runs, phenotypes, group_column):
    rows = []
    for run in runs:
        if run.target.task == "classification":
            summary = ", ".join(f"{c}: {int(np.sum(run.y == c))}" for c in run.target.classes)
        else:
            y = run.y.astype(float)
            summary = f"mean {y.mean():.3g} (sd {y.std(ddof=1):.3g}), range {y.min():.3g}–{y.max():.3g}"
        groups = ""
        if group_column:
            counts = phenotypes.reindex(run.labels)[group_column].value_counts().sort_index()
            groups = ", ".join(f"{k}: {v}" for k, v in counts.items())
        rows.append({"target": run.target.name, "task": run.target.task,
                     "inferred": "inferred" if run.target.inferred else "given",
                     "n": len(run.labels), "summary": summary, "groups": groups, "cv": run.cv_description})
    return rows


def _paired_rows(runs):
    rows = []
    for run in runs:
        by = {r.features: r for r in run.results}
        if "semantoks" in by and "fc" in by:
            metric = PRIMARY[run.target.task]
            diff = by["semantoks"].primary_per_fold() - by["fc"].primary_per_fold()
            diff = diff[np.isfinite(diff)]
            rows.append({"target": run.target.name, "metric": metric, "mean": f"{diff.mean():+.3f}",
                         "std": f"{diff.std(ddof=1):.3f}" if diff.size > 1 else "n/a",
                         "wins": f"{int((diff > 0).sum())} of {diff.size}"})
    return rows


def participant_pages(output_dir: Path) -> list[dict[str, str]]:
    """The participant QC pages (``OUTPUT_DIR/sub-<label>.html``), linked from ``group/report.html``."""
    import re

    pattern = re.compile(r"^sub-([A-Za-z0-9]+)\.html$")
    found = sorted(p.name for p in Path(output_dir).glob("sub-*.html") if pattern.match(p.name) and p.is_file())
    return [{"label": name[: -len(".html")], "href": f"../{name}"} for name in found]


def render(context: dict) -> str:
    """Render the template with ``context``."""
    import jinja2

    source = files("bids_semantoks").joinpath("data", "templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
    return env.from_string(source).render(**context)


def write_report(path: Path, *, runs, sets, phenotypes: pd.DataFrame, skipped: pd.DataFrame, sidecar: dict,
                 emb_table=None) -> Path:
    """Draw the figures and write the self-contained report.

    Parameters
    ----------
    path : Path
        ``report.html`` to write.
    runs : list of TargetRun
    sets : dict
        Feature sets by name (for the 2-D map).
    phenotypes : pandas.DataFrame
        Merged phenotype table (colours of the map, cohort table).
    skipped : pandas.DataFrame
        ``participant_id, scope, reason``.
    sidecar : dict
        The JSON sidecar (settings shown at the end).
    emb_table : pandas.DataFrame or None
        Subject mean embeddings (the map uses them when present).
    """
    opts = sidecar["GroupOptions"]
    targets = [r.target.name for r in runs]
    if emb_table is not None and not emb_table.empty:
        matrix = emb_table.drop(columns="n_crops").to_numpy(dtype=float)
        labels = list(emb_table.index)
        map_title = f"Semantoks embeddings (PCA of {matrix.shape[1]} features, {len(labels)} participants)"
    else:
        fs = sets["fc"]
        matrix, labels = fs.subject_matrix(), fs.labels
        map_title = f"No embeddings: FC instead (PCA of {matrix.shape[1]} edges, {len(labels)} participants)"
    metric_rows = []
    for run in runs:
        for res in run.results:
            for metric in METRICS[res.task]:
                mean, std = res.summary[metric]
                metric_rows.append({"target": res.target, "features": LABELS.get(res.features, res.features),
                                    "metric": metric, "mean": f"{mean:.3f}",
                                    "std": "n/a" if np.isnan(std) else f"{std:.3f}",
                                    "p": f"{res.p_value:.3g}" if (metric == PRIMARY[res.task]
                                                                 and np.isfinite(res.p_value)) else ""})
    reasons = (skipped.groupby(["scope", "reason"]).size().reset_index(name="n")
               .to_dict(orient="records") if not skipped.empty else [])
    context = {
        "title": "bids_semantoks group report",
        "targets": [{"name": run.target.name, "bars": bars_figure(run), "outcome": outcome_figure(run)}
                    for run in runs],
        "cohort": _cohort_rows(runs, phenotypes, opts.get("cv_groups")),
        "metrics": metric_rows,
        "paired": _paired_rows(runs),
        "map": map_figure(matrix, labels, phenotypes, targets, map_title),
        "skipped_summary": reasons,
        "skipped": skipped.to_dict(orient="records"),
        "settings": [(k, str(v)) for k, v in opts.items()],
        "meta": {k: sidecar.get(k) for k in ("Atlas", "ModelLabel", "InputType", "ElapsedSeconds")},
        "versions": sidecar.get("SoftwareVersions", {}),
        "fc": sidecar.get("FC") or {},
        "notes": sidecar.get("Notes", []),
        "features": [LABELS.get(f, f) for f in sidecar.get("Features", [])],
        "qc_pages": participant_pages(Path(path).parent.parent),
    }
    path = Path(path)
    path.write_text(render(context), encoding="utf-8")
    return path
