"""Settings of the group level (linear probes of embeddings and connectomes).

The one definition is :class:`bids_semantoks.config.GroupOptions`, the ``group`` section of
the nested :class:`~bids_semantoks.config.Settings` (validated when the settings are built,
``[group]`` in a config file); it is re-exported here for the probe modules and the API.
"""

from __future__ import annotations

from bids_semantoks.config import FeatureName, GroupOptions, TargetType

__all__ = ["FeatureName", "GroupOptions", "TargetType"]
