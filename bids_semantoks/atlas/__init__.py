"""Atlases: region tables with network labels, and the cached atlas manager."""

from bids_semantoks.atlas.table import DEFAULT_NETWORK_ORDER, AtlasTable

__all__ = ["AtlasTable", "DEFAULT_NETWORK_ORDER"]
