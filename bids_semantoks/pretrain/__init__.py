"""Pre-training level: self-distillation of a Brain-Semantoks encoder (MODEL_SPEC section 5).

Modules, in the order of the flow: ``options`` (settings, presets), ``data`` (runs,
packing), ``augment`` (views, augmentations, masks), ``meta_arch`` (student/teacher,
EMA), ``losses``, ``schedules``, ``train`` (loop, checkpoints, DDP), ``run`` (entry point).
"""

from bids_semantoks.pretrain.data import RunSeries, load_runs_from_derivatives, prepare_timeseries
from bids_semantoks.pretrain.options import PRESETS, PretrainOptions, load_options
from bids_semantoks.pretrain.run import run_pretrain

__all__ = [
    "PRESETS",
    "PretrainOptions",
    "RunSeries",
    "load_options",
    "load_runs_from_derivatives",
    "prepare_timeseries",
    "run_pretrain",
]
