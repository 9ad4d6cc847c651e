"""Entry point of the pre-training level: runs in, model folder out.

:func:`run_pretrain` is what the CLI calls (and what ``torchrun`` runs on every process).
It checks the inputs once, selects the seeded subject subset (``train_fraction``),
packs the runs on the device, builds the encoder from the size preset and the atlas
grouping, trains, and returns ``OUTPUT_DIR/models/<name>/``, a folder that
``bids_semantoks.model.load_encoder`` reads and ``participant --model`` accepts.

Scaling recipe (paper, "more pre-training data helped every task"): pre-train one
model per fraction and seed, then probe each::

    for f in 0.001 0.01 0.1 0.25 0.5 1.0; do for s in 0 1 2; do
      bids_semantoks BIDS OUT pretrain --train-fraction $f --seed $s --name frac${f}_seed${s}
    done; done

The subset is ``ceil(f * n_subjects)`` subjects drawn with ``seed`` (at least one
batch); keep ``--epochs`` fixed across fractions as the paper does (fewer steps for
smaller fractions), or hold the number of steps fixed by raising ``--epochs`` as
``1 / f`` if the question is data diversity at equal compute. Which of the two the
paper used is not stated; write it down with the results.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_semantoks.errors import DataError, UsageError
from bids_semantoks.pretrain.data import PretrainData, RunSeries, select_subjects
from bids_semantoks.pretrain.distributed import init_distributed
from bids_semantoks.pretrain.meta_arch import SelfDistillation
from bids_semantoks.pretrain.options import PretrainOptions
from bids_semantoks.pretrain.train import train

__all__ = ["run_pretrain", "build_encoder_config"]

logger = logging.getLogger(__name__)


def build_encoder_config(options: PretrainOptions, network_names: Sequence[str], channel_networks: Sequence[int]):
    """EncoderConfig of ``options.model_size`` for this atlas, with ``model_overrides`` and the run name."""
    from bids_semantoks.model import EncoderConfig, model_preset

    base = model_preset(options.model_size, list(network_names), [int(c) for c in channel_networks])
    fields = base.model_dump()
    fields.update(options.model_overrides)
    fields["name"] = options.name
    try:
        return EncoderConfig(**fields)
    except Exception as exc:
        raise UsageError(f"invalid model_overrides {options.model_overrides}: {exc}".replace("\n", "; ")) from exc


def run_pretrain(
    options: PretrainOptions,
    runs: list[RunSeries],
    output_dir: Path,
    *,
    network_names: list[str],
    channel_networks: list[int],
    channel_names: list[str],
    atlas_label: str,
    _stop_after_epochs: int | None = None,
) -> Path:
    """Pre-train a Brain-Semantoks encoder by self-distillation.

    Parameters
    ----------
    options : PretrainOptions
        Settings (see :mod:`bids_semantoks.pretrain.options`).
    runs : list of RunSeries
        Model-ready runs (TR 2 s, z-scored per region, ``[T, C]``; NaN = missing region,
        used as 0), e.g. from :func:`~bids_semantoks.pretrain.data.load_runs_from_derivatives`.
        Under ``torchrun`` every process passes the same list.
    output_dir : Path
        OUTPUT_DIR; the model goes to ``OUTPUT_DIR/models/<options.name>/``.
    network_names : list of str
        Network names in token order (``AtlasTable.networks``).
    channel_networks : list of int
        Network id of each channel (``AtlasTable.network_index``), length C.
    channel_names : list of str
        Region names in channel order, stored with the model.
    atlas_label : str
        Atlas label (``atlas-<label>``), stored with the model.

    Returns
    -------
    Path
        The model folder (``model.safetensors`` + ``config.json``, and ``training/``).
    """
    from bids_semantoks.model import Encoder, ProjectionHead, save_encoder

    if not runs:
        raise DataError("no runs to pre-train on; check the selected participants and atlas")
    n_channels = {r.data.shape[1] for r in runs}
    if len(n_channels) != 1:
        raise DataError(f"runs have different region counts {sorted(n_channels)}; use one atlas for all runs")
    (c,) = n_channels
    if not (len(channel_networks) == len(channel_names) == c):
        raise DataError(
            f"atlas {atlas_label!r} has {len(channel_names)} regions / {len(channel_networks)} network ids "
            f"but the time series have {c} columns; use the atlas the series were extracted with"
        )

    info = init_distributed(options.device)
    subjects = sorted({r.subject for r in runs})
    keep = set(select_subjects(subjects, options.train_fraction, options.seed, minimum=options.batch_size))
    selected = [r for r in runs if r.subject in keep]
    if info.is_main:
        logger.info(
            "pre-training %r on %d of %d subjects (%d runs), %d channels, device %s, %d process(es)",
            options.name, len(keep), len(subjects), len(selected), c, info.device, info.world_size,
        )
    dtype = torch.float16 if options.data_dtype == "float16" else torch.float32
    data = PretrainData(selected, dtype=dtype).to(info.device)

    config = build_encoder_config(options, network_names, channel_networks)
    if config.n_timepoints != 100:
        raise UsageError(f"crop length patch_len*n_patches = {config.n_timepoints}; pre-training uses 100 TRs")
    torch.manual_seed(options.seed)
    np.random.seed(options.seed % 2**32)
    encoder = Encoder(config)
    head = ProjectionHead(config.dim, options.head_hidden, options.head_out)
    model = SelfDistillation(encoder, head)

    folder = Path(output_dir) / "models" / options.name
    metadata: dict[str, Any] = {
        "atlas_label": atlas_label,
        "channel_names": list(channel_names),
        "network_names": list(network_names),
        "trained_with": "bids_semantoks pretrain (self-distillation, teacher encoder)",
        "n_subjects": len(keep),
        "train_fraction": options.train_fraction,
        "seed": options.seed,
        "pretrain_options": options.model_dump(mode="json"),
    }
    train(model, data, options, folder, info, save_model=save_encoder, metadata=metadata,
          stop_after_epochs=_stop_after_epochs)
    return folder
