"""Atlases: region tables with network labels, and the cached atlas manager."""

from bids_semantoks.atlas.registry import (
    DEFAULT_ATLAS_LABEL,
    SUPPORTED_SPACES,
    ResolvedAtlas,
    get_default_atlas,
    get_default_table,
    get_user_atlas,
    resolve_atlas_dir,
)
from bids_semantoks.atlas.table import DEFAULT_NETWORK_ORDER, AtlasTable

__all__ = [
    "AtlasTable",
    "DEFAULT_ATLAS_LABEL",
    "DEFAULT_NETWORK_ORDER",
    "ResolvedAtlas",
    "SUPPORTED_SPACES",
    "get_default_atlas",
    "get_default_table",
    "get_user_atlas",
    "resolve_atlas_dir",
]
