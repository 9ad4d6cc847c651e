"""What a run reports: per-step log, per-epoch collapse watch, loss curve, progress bar.

- ``training_log.tsv``: one row per step with every loss term, the gradient norm before
  clipping, LR, weight decay, teacher momentum, TTR weight and whether the step was
  masked; terms not computed on a step (token loss on unmasked steps, TTR after the
  curriculum) are ``n/a``.
- ``epoch_log.tsv``: per epoch the mean losses, ``cls_alignment`` (mean cross-view
  student-teacher cosine of the [CLS] projections: near 0 means the rate term is
  spreading views of the same scan apart, i.e. nothing invariant is being learned),
  throughput and the collapse watch on
  the teacher's [CLS] of the last step: ``cls_std`` (SD over samples of the encoder
  [CLS], averaged over features), ``proj_std`` (same on the L2-normalised projections;
  ~1/sqrt(p) when spread out, 0 when collapsed) and ``proj_erank`` (effective rank,
  exp of the entropy of the normalised singular values of the centred projections).
  A warning is logged when ``proj_erank`` falls below ``collapse_erank`` or
  ``proj_std`` below 1e-3.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["STEP_COLUMNS", "embedding_stats", "format_rows", "plot_loss_curve", "make_progress"]

logger = logging.getLogger(__name__)

#: Columns of training_log.tsv (step bookkeeping, then the loss terms, then schedules).
STEP_COLUMNS = (
    "step", "epoch", "masked",
    "loss", "loss_cls", "cls_alignment", "cls_rate", "loss_tok", "loss_ttr", "ttr_alignment", "ttr_rate",
    "grad_norm", "lr", "weight_decay", "momentum", "ttr_weight",
)


def _fmt(v: float) -> str:
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return "n/a" if not math.isfinite(v) else f"{v:.6g}"


def format_rows(rows: list[dict]) -> str:
    return "".join("\t".join(_fmt(r[c]) for c in STEP_COLUMNS) + "\n" for r in rows)


@torch.no_grad()
def embedding_stats(cls_embedding: torch.Tensor, projection: torch.Tensor) -> dict[str, float]:
    """Collapse watch on one batch: ``cls_std``, ``proj_std``, ``proj_erank`` (see module doc)."""
    e = cls_embedding.float()
    z = projection.float()
    zc = z - z.mean(0, keepdim=True)
    s = torch.linalg.svdvals(zc)
    prob = s / s.sum().clamp_min(1e-12)
    entropy = -(prob * torch.log(prob.clamp_min(1e-12))).sum()
    return {
        "cls_std": e.std(0).mean().item() if e.shape[0] > 1 else float("nan"),
        "proj_std": z.std(0).mean().item() if z.shape[0] > 1 else float("nan"),
        "proj_erank": math.exp(entropy.item()),
    }


def warn_if_collapsed(stats: dict[str, float], epoch: int, min_erank: float) -> bool:
    collapsed = stats["proj_erank"] < min_erank or stats["proj_std"] < 1e-3
    if collapsed:
        logger.warning(
            "epoch %d: teacher [CLS] projections look collapsed (effective rank %.2f, SD %.2g); "
            "consider a lower LR, a larger batch or more data",
            epoch, stats["proj_erank"], stats["proj_std"],
        )
    return collapsed


def plot_loss_curve(log_tsv: Path, out_png: Path) -> None:
    """Loss terms (top) and schedules (bottom) against the step; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from bids_semantoks.pretrain.checkpoint import _atomic

    df = pd.read_csv(log_tsv, sep="\t", na_values=["n/a"])
    if df.empty:
        return
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for col in ("loss", "loss_cls", "loss_tok", "loss_ttr"):
        sel = df[col].notna()
        if sel.any():
            axes[0].plot(df.loc[sel, "step"], df.loc[sel, col], label=col, lw=1,
                         marker="." if sel.sum() < 50 else None)
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right", fontsize=8)
    for col in ("lr", "weight_decay", "momentum", "ttr_weight"):
        vals = df[col].to_numpy(float)
        span = np.nanmax(np.abs(vals)) or 1.0
        axes[1].plot(df["step"], vals / span, label=f"{col} (/{span:.3g})", lw=1)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("schedule (scaled)")
    axes[1].legend(loc="center right", fontsize=8)
    fig.tight_layout()
    _atomic(out_png, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


def make_progress(enabled: bool):
    """A rich progress bar on a terminal (else ``None``: one log line per epoch instead)."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )
