"""Dispatch to the level named on the command line; each level reads top to bottom in its module.

``participant``: :mod:`bids_semantoks.workflows.participant`;
``group``: :mod:`bids_semantoks.workflows.group`;
``pretrain``: :mod:`bids_semantoks.workflows.pretrain`.
"""

from __future__ import annotations

from bids_semantoks.config import Settings


def run(settings: Settings) -> None:
    """Run the level named in ``settings``; raise BidsAppError subclasses on user errors."""
    if settings.analysis_level == "participant":
        from bids_semantoks.workflows.participant import run_participant as level
    elif settings.analysis_level == "group":
        from bids_semantoks.workflows.group import run_group as level
    else:
        from bids_semantoks.workflows.pretrain import run_pretrain as level
    level(settings)
