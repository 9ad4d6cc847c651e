"""Denoising strategies, listed once as data presets (``bids_semantoks/data/denoise/*.json``).

Each preset (as giga_connectome keeps them) names the nilearn
``load_confounds_strategy`` strategy it applies, whether it censors volumes, whether the
series is detrended, and which fMRIPrep BOLD it needs: ``bold_desc`` (``preproc``, or
``smoothAROMAnonaggr`` for ICA-AROMA) and, when only one template space has that file,
``space``. The CLI choices, the settings' validation and discovery all read them from here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from bids_semantoks.errors import UsageError

__all__ = ["strategy_names", "load_strategy"]

_REQUIRED = ("name", "description", "nilearn_strategy", "censoring", "detrend", "bold_desc", "space")


@lru_cache(maxsize=1)
def _presets() -> dict[str, dict[str, Any]]:
    folder = resources.files("bids_semantoks.data").joinpath("denoise")
    presets = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        preset = json.loads(entry.read_text())
        missing = [k for k in _REQUIRED if k not in preset]
        if missing or preset["name"] != entry.name[: -len(".json")]:  # a packaging bug, not a user error
            raise RuntimeError(f"denoising preset {entry.name} is malformed (missing {missing})")
        presets[preset["name"]] = preset
    return presets


def strategy_names() -> tuple[str, ...]:
    """Names of the denoising strategies, the default (``simple``) first."""
    names = sorted(_presets())
    return tuple(["simple"] + [n for n in names if n != "simple"])


def load_strategy(name: str) -> dict[str, Any]:
    """The preset of one strategy (a copy).

    Raises
    ------
    UsageError
        Unknown strategy (the message lists the known ones).
    """
    presets = _presets()
    if name not in presets:
        raise UsageError(f"--denoise-strategy {name!r} is unknown; choose one of {', '.join(strategy_names())}")
    return json.loads(json.dumps(presets[name]))
