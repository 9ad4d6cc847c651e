"""One entry point for every model source: ``"official"``, an authors' ``.pth``, or our folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bids_semantoks.errors import BidsAppError
from bids_semantoks.model.checkpoint import ModelNotAvailable, load_authors_encoder
from bids_semantoks.model.encoder import Encoder
from bids_semantoks.model.hub import fetch_official
from bids_semantoks.model.store import load_folder

__all__ = ["load_encoder", "default_network_map"]


def default_network_map(data_dir: str | Path | None = None) -> np.ndarray:
    """Network id of each of the 457 channels of the default atlas (token order).

    Read from the default atlas table shipped as package data
    (``bids_semantoks.atlas.registry.get_default_table``): no atlas cache, no network.

    Raises
    ------
    ModelNotAvailable
        The default atlas table cannot be obtained.
    """
    try:
        from bids_semantoks.atlas.registry import get_default_table

        return np.asarray(get_default_table(data_dir=data_dir).network_index, dtype=np.int64)
    except (ImportError, BidsAppError) as exc:
        raise ModelNotAvailable(
            f"the default atlas table (network of each channel) is not available ({exc}); "
            "pass network_map= explicitly or fetch the default atlas"
        ) from None


def load_encoder(
    path_or_name: str | Path,
    *,
    network_map: np.ndarray | None = None,
    data_dir: str | Path | None = None,
    network_names: list[str] | None = None,
) -> Encoder:
    """Load a teacher encoder in eval mode.

    Parameters
    ----------
    path_or_name : str or Path
        ``"official"`` (the released checkpoint, downloaded once into
        ``<data_dir>/models``), a ``.pth`` in the authors' layout, or a folder with
        ``model.safetensors`` + ``config.json`` (:func:`save_encoder`).
    network_map : ndarray of int, shape (C,), optional
        Network id of each channel, needed by the authors' layout (which does not store
        it); default: the default 457-region atlas. Ignored for our folders, which
        carry their own (callers compare ``encoder.config.channel_networks``).
    data_dir : str or Path, optional
        Data folder for ``"official"`` and the default atlas.
    network_names : list of str, optional
        Network names for the authors' layout (default: the default atlas's names
        when there are 9 networks).

    Returns
    -------
    Encoder

    Raises
    ------
    ModelNotAvailable
        Missing file or folder, or no network map.
    DataError
        Unreadable, unsafe or inconsistent file.

    Examples
    --------
    >>> enc = load_encoder("official")  # doctest: +SKIP
    >>> enc.config.dim  # doctest: +SKIP
    768
    """
    if str(path_or_name) == "official":
        path = fetch_official(data_dir)
    else:
        path = Path(path_or_name).expanduser()
        if path.is_dir():
            return load_folder(path)
        if not path.exists():
            raise ModelNotAvailable(f"{path}: model not found; pass 'official', an authors' .pth or a model folder")
    if network_map is None:
        network_map = default_network_map(data_dir)
    return load_authors_encoder(path, np.asarray(network_map), network_names=network_names)
