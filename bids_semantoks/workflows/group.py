"""The group level, top to bottom: check BIDS_DIR -> options -> probes (``bids_semantoks.probe``)."""

from __future__ import annotations

from pathlib import Path

from bids_semantoks.bids import layout as bids_layout
from bids_semantoks.config import Settings
from bids_semantoks.errors import BidsAppError


def run_group(settings: Settings) -> None:
    """Embeddings/time series + phenotypes -> probes -> tables and report; raise on failure."""
    from bids_semantoks.probe import run_group as _run_group

    st = settings.participant
    bids_layout.check_dataset(settings.bids_dir, settings.output_dir, "timeseries")
    group_options = settings.group  # typed and validated when the settings were built
    atlas_tsv = None if st.atlas == "default" else Path(st.atlas)
    code = _run_group(group_options, settings.bids_dir, settings.output_dir, input_type=st.input_type,
                      atlas_tsv=atlas_tsv, participant_labels=st.participant_label or None)
    if code:  # probe.run_group returns its exit code (its one-line error is already logged)
        raise BidsAppError("group level failed; see the log above", code=code)
