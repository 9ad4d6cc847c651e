"""Per-step schedules of a pre-training run, computed once from the settings.

All schedules are arrays with one value per optimisation step ``s = 0 .. S-1``
(``S = epochs * steps_per_epoch``), so the curriculum is visible in one place and a
resumed run reads exactly the values an uninterrupted run would have used.

Cosine from ``a`` to ``b`` over ``n`` steps (end points reached exactly)::

    c(i) = b + (a - b) * (1 + cos(pi * i / (n - 1))) / 2,   i = 0 .. n-1

- learning rate: linear warm-up ``lr(s) = peak * s / W`` for ``s < W`` (W = warm-up
  steps), then a cosine from ``peak`` to ``min_lr`` over the remaining steps;
- weight decay: cosine from ``weight_decay_start`` (0.05) to ``weight_decay_end`` (0.3);
- teacher momentum: cosine from ``momentum_start`` (0.99) to ``momentum_end`` (1.0);
- TTR weight: cosine from ``ttr_weight_start`` (0.5) at step 0 to 0 at step
  ``E = ceil(ttr_end_fraction * S)`` (end of epoch 5 of 100), then 0; so a
  non-zero fraction always gives at least one step with TTR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bids_semantoks.pretrain.options import PretrainOptions

__all__ = ["cosine", "warmup_cosine", "ttr_weight_schedule", "Schedules"]


def cosine(start: float, end: float, n_steps: int) -> np.ndarray:
    """Cosine from ``start`` (first step) to ``end`` (last step), ``n_steps`` values (float64)."""
    if n_steps <= 0:
        return np.zeros(0)
    if n_steps == 1:
        return np.array([float(start)])
    i = np.arange(n_steps)
    return end + (start - end) * 0.5 * (1.0 + np.cos(np.pi * i / (n_steps - 1)))


def warmup_cosine(peak: float, final: float, n_steps: int, warmup_steps: int) -> np.ndarray:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps`` steps, then cosine to ``final``.

    Step 0 has LR 0 when ``warmup_steps > 0`` (DINO convention); the first step after the
    warm-up has the peak; the last step has ``final``.
    """
    warmup_steps = int(min(max(warmup_steps, 0), n_steps))
    warm = peak * np.arange(warmup_steps) / max(warmup_steps, 1)
    return np.concatenate([warm, cosine(peak, final, n_steps - warmup_steps)])


def ttr_weight_schedule(start: float, n_steps: int, end_step: int) -> np.ndarray:
    """TTR curriculum weight: cosine from ``start`` at step 0 to 0 at ``end_step``, then 0."""
    out = np.zeros(n_steps)
    if end_step > 0:
        ramp = cosine(start, 0.0, end_step + 1)[:n_steps]
        out[: len(ramp)] = ramp
    return out


@dataclass(frozen=True)
class Schedules:
    """All per-step schedules of a run (float64 arrays of length ``n_steps``)."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    ttr_weight: np.ndarray
    steps_per_epoch: int

    @property
    def n_steps(self) -> int:
        return len(self.lr)

    @classmethod
    def from_options(cls, options: PretrainOptions, steps_per_epoch: int) -> "Schedules":
        """Build the schedules of ``options`` for ``steps_per_epoch`` optimisation steps per epoch."""
        n = options.epochs * steps_per_epoch
        warmup = int(round(options.warmup_epochs * steps_per_epoch))
        ttr_end = int(math.ceil(options.ttr_end_fraction * n - 1e-9))
        return cls(
            lr=warmup_cosine(options.peak_lr, options.min_lr, n, warmup),
            weight_decay=cosine(options.weight_decay_start, options.weight_decay_end, n),
            momentum=cosine(options.momentum_start, options.momentum_end, n),
            ttr_weight=ttr_weight_schedule(options.ttr_weight_start, n, ttr_end),
            steps_per_epoch=steps_per_epoch,
        )

    def at(self, step: int) -> dict[str, float]:
        """Values of every schedule at ``step`` (for logging)."""
        return {
            "lr": float(self.lr[step]),
            "weight_decay": float(self.weight_decay[step]),
            "momentum": float(self.momentum[step]),
            "ttr_weight": float(self.ttr_weight[step]),
        }
