"""The pretrain level, top to bottom: check folders -> options -> atlas -> model-ready series
(the participant level's outputs; extracted first, said so on the console, when there are
none) -> self-distillation -> ``OUTPUT_DIR/models/<name>``."""

from __future__ import annotations

import logging

from bids_semantoks.bids import layout as bids_layout
from bids_semantoks.config import Settings
from bids_semantoks.console import note
from bids_semantoks.errors import MissingInputError, NothingSelectedError
from bids_semantoks.workflows.common import check_output_dir, resolve_atlas
from bids_semantoks.workflows.jobs import AtlasInfo

LOGGER = logging.getLogger("bids_semantoks")


def run_pretrain(settings: Settings) -> None:
    """Pre-train a model on the model-ready series of the selected subjects."""
    from bids_semantoks.pretrain import run_pretrain as _run_pretrain

    st = settings.participant
    bids_layout.check_dataset(settings.bids_dir, settings.output_dir, st.input_type)
    check_output_dir(settings.output_dir)
    pretrain_options = settings.pretrain  # typed and validated when the settings were built
    _, atlas = resolve_atlas(settings)
    runs = collect_model_ready_runs(settings, atlas)
    folder = _run_pretrain(pretrain_options, runs, settings.output_dir, network_names=list(atlas.networks),
                           channel_networks=list(atlas.channel_networks), channel_names=list(atlas.names),
                           atlas_label=atlas.label)
    note("model written to %s; use it with: participant --model %s", folder, folder)


def collect_model_ready_runs(settings: Settings, atlas: AtlasInfo) -> list:
    """Model-ready series for pre-training: the participant outputs in OUTPUT_DIR.

    When there are none, the participant level runs first with ``--model none`` (time series
    only, same selection and settings) and says so; its outputs stay in OUTPUT_DIR.
    """
    from bids_semantoks.pretrain.data import load_runs_from_derivatives
    from bids_semantoks.workflows.participant import run_participant

    def load():  # participant outputs are already at the model TR and z-scored: read them as they are
        return load_runs_from_derivatives(settings.output_dir, [atlas.label],
                                          settings.participant.participant_label or None,
                                          prepare=lambda data, tr: data.astype("float32"))

    try:
        return load()
    except NothingSelectedError:
        note("pretrain: no participant outputs in %s; running the participant level first (--model none, "
             "same selection and settings) to extract the time series", settings.output_dir)
    model_none = settings.model_copy(deep=True)
    model_none.participant.model = "none"
    run_participant(model_none)
    try:
        return load()
    except NothingSelectedError:
        raise MissingInputError(
            f"{settings.output_dir}: no model-ready time series to pre-train on; check the selection"
        ) from None
