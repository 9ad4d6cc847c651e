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
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "STEP_COLUMNS", "EPOCH_COLUMNS", "embedding_stats", "format_rows", "plot_loss_curve", "make_progress",
    "prepare_logs", "StepLog", "write_epoch_row",
]

logger = logging.getLogger(__name__)

#: Columns of training_log.tsv (step bookkeeping, then the loss terms, then schedules).
STEP_COLUMNS = (
    "step", "epoch", "masked",
    "loss", "loss_cls", "cls_alignment", "cls_rate", "loss_tok", "loss_ttr", "ttr_alignment", "ttr_rate",
    "grad_norm", "lr", "weight_decay", "momentum", "ttr_weight",
)
#: Columns of epoch_log.tsv.
EPOCH_COLUMNS = (
    "epoch", "steps", "loss", "loss_cls", "cls_alignment", "loss_tok", "loss_ttr",
    "cls_std", "proj_std", "proj_erank", "seconds", "subjects_per_s",
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


def prepare_logs(step_log: Path, epoch_log: Path, *, start_step: int, start_epoch: int) -> None:
    """Start both logs with their header; on a resume keep the rows before the checkpoint.

    Steps and epochs logged after the last checkpoint by a killed run are dropped, so the
    resumed run's logs equal an uninterrupted run's (no duplicated rows).
    """
    from bids_semantoks.pretrain.checkpoint import atomic_write_text

    for path, columns, first in ((step_log, STEP_COLUMNS, start_step), (epoch_log, EPOCH_COLUMNS, start_epoch)):
        kept = []
        if first > 0 and path.is_file():
            kept = [ln for ln in path.read_text().splitlines(True)[1:] if int(ln.split("\t", 1)[0]) < first]
        atomic_write_text("\t".join(columns) + "\n" + "".join(kept), path)


def write_epoch_row(path: Path, values: dict[str, Any]) -> None:
    """Append one row (``values`` keyed by :data:`EPOCH_COLUMNS`) to epoch_log.tsv."""
    with open(path, "a") as fh:
        fh.write("\t".join(_fmt(values[c]) for c in EPOCH_COLUMNS) + "\n")


class StepLog:
    """Per-step terms of one process: buffered on the device, flushed every ``log_every`` steps.

    A flush averages the buffered terms over the processes (one all-reduce, one device sync),
    appends the rows to training_log.tsv (main process) and updates the progress bar.

    Parameters
    ----------
    path : Path
        training_log.tsv.
    log_every : int
    batch_size : int
        Global batch, for the subjects/s of the progress bar.
    schedule_at : callable
        ``schedule_at(step) -> dict`` of the schedule columns (``Schedules.at``).
    reduce : callable
        Mean over the processes of a tensor (``distributed.all_mean``).
    write : bool
        Whether this process writes the file (the main process).
    progress : rich Progress or None
    """

    terms = STEP_COLUMNS[3:12]

    def __init__(self, path: Path, *, log_every: int, batch_size: int, schedule_at: Callable[[int], dict],
                 reduce: Callable[[torch.Tensor], torch.Tensor], write: bool, progress=None):
        self.path, self.log_every, self.batch_size = path, log_every, batch_size
        self.schedule_at, self.reduce, self.write, self.progress = schedule_at, reduce, write, progress

    def start_epoch(self, epoch: int, n_epochs: int, steps: int) -> None:
        self.epoch, self._pending, self._epoch_terms = epoch, [], []
        self._task = None
        if self.progress is not None:
            self._task = self.progress.add_task("", total=steps, epoch=f"{epoch + 1}/{n_epochs}", info="")
        self._t_flush, self._n_flush = time.perf_counter(), 0

    def add(self, step: int, masked: bool, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor,
            *, completed: int, flush: bool = False) -> None:
        """Buffer one step (no device sync); flush every ``log_every`` steps or when ``flush``."""
        loss = losses["loss"]
        values = [losses[k] for k in self.terms[:-1]] + [grad_norm.to(loss.dtype)]
        self._pending.append((step, masked, torch.stack(values).detach()))
        self._n_flush += 1
        if len(self._pending) >= self.log_every or flush:
            self._flush(completed)

    def _flush(self, completed: int) -> None:
        values = self.reduce(torch.stack([t for _, _, t in self._pending])).cpu().numpy()
        self._epoch_terms.append(values)
        rows = []
        for (s, was_masked, _), v in zip(self._pending, values):
            row = dict(zip(self.terms, v.tolist()))
            row.update(step=s, epoch=self.epoch, masked=int(was_masked), **self.schedule_at(s))
            rows.append(row)
        self._pending = []
        now = time.perf_counter()
        speed = self._n_flush * self.batch_size / max(now - self._t_flush, 1e-9)
        self._t_flush, self._n_flush = now, 0
        if self.write:
            with open(self.path, "a") as fh:
                fh.write(format_rows(rows))
        if self.progress is not None:
            last = rows[-1]
            self.progress.update(
                self._task, completed=completed,
                info=f"loss {last['loss']:.3f} cls {last['loss_cls']:.3f} "
                     f"tok {last['loss_tok']:.3f} ttr {last['loss_ttr']:.3f} | {speed:.0f} subj/s",
            )

    def epoch_means(self) -> dict[str, float]:
        """Mean of every term over the epoch's steps (NaN-aware: terms not computed are skipped)."""
        with warnings.catch_warnings():  # all-NaN columns (no masked step) are fine
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(np.concatenate(self._epoch_terms), axis=0)
        return {k: float(v) for k, v in zip(self.terms, means)}
