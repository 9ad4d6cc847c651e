"""Atlas tables: region names and their network ("semantic token") labels.

The network grouping of the model is data, not code: it is read from the
``network_label`` column of a BIDS ``_dseg.tsv``. Networks are numbered in the
order in which they first appear in the table, which for the default atlas is
Vis, SomMot, DorsAttn, SalVentAttn, Limbic, Cont, Default, Subcortex, Cerebellum
(the model's token order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_semantoks.errors import DataError, MissingInputError

#: Token order of the released model (MODEL_SPEC section 2).
DEFAULT_NETWORK_ORDER = (
    "Vis",
    "SomMot",
    "DorsAttn",
    "SalVentAttn",
    "Limbic",
    "Cont",
    "Default",
    "Subcortex",
    "Cerebellum",
)


@dataclass(frozen=True)
class AtlasTable:
    """Region table of an atlas.

    Attributes
    ----------
    label : str
        Atlas label used in output names (``atlas-<label>``).
    indices : tuple of int
        Integer label of each region in the ``_dseg.nii.gz`` image.
    names : tuple of str
        Region names (time-series column headers), in channel order.
    network_labels : tuple of str
        Network label of each region, in channel order.
    """

    label: str
    indices: tuple[int, ...]
    names: tuple[str, ...]
    network_labels: tuple[str, ...]

    @property
    def n_regions(self) -> int:
        return len(self.names)

    @property
    def networks(self) -> tuple[str, ...]:
        """Network names in token order (first appearance, or the model's order)."""
        seen = list(dict.fromkeys(self.network_labels))
        if set(seen) == set(DEFAULT_NETWORK_ORDER):
            return DEFAULT_NETWORK_ORDER
        return tuple(seen)

    @property
    def network_index(self) -> np.ndarray:
        """Network id (0..N-1) of every region, shape (n_regions,)."""
        lookup = {n: i for i, n in enumerate(self.networks)}
        return np.array([lookup[n] for n in self.network_labels], dtype=np.int64)

    @property
    def network_sizes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in np.bincount(self.network_index, minlength=len(self.networks)))

    @classmethod
    def from_tsv(cls, path: str | Path, label: str | None = None) -> "AtlasTable":
        """Read a BIDS ``_dseg.tsv`` with ``index``, ``name`` and ``network_label``.

        Parameters
        ----------
        path : str or Path
            The ``_dseg.tsv`` file.
        label : str, optional
            Atlas label; by default the ``atlas-`` entity of the file name, or its stem.
        """
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(
                f"{path}: atlas table not found; pass the path of an existing _dseg.tsv to --atlas"
            )
        try:
            df = pd.read_csv(path, sep="\t", dtype={"index": str, "name": str, "network_label": str})
        except Exception as exc:  # pandas raises many types
            raise DataError(f"{path}: cannot read atlas table ({exc}); it must be a tab-separated file") from exc
        missing = {"index", "name", "network_label"} - set(df.columns)
        if missing:
            raise DataError(
                f"{path}: atlas table lacks column(s) {sorted(missing)}; "
                "add 'index', 'name' and 'network_label' columns"
            )
        if df["network_label"].isna().any() or df["name"].isna().any():
            bad = df.index[df["network_label"].isna() | df["name"].isna()][0]
            raise DataError(f"{path}: row {bad + 2} has an empty name or network_label; fill it in")
        index = pd.to_numeric(df["index"], errors="coerce")
        bad = df.index[~(index.notna() & (index == index.round()) & (index > 0))]
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"{path}: index {df['index'].iloc[row]!r} on line {row + 2} is not a positive integer "
                "(0 is the background of a _dseg image); give every region its integer label in the image"
            )
        df["index"] = index.astype(np.int64)
        if df["index"].duplicated().any() or df["name"].duplicated().any():
            raise DataError(f"{path}: duplicated index or name values; every region needs a unique index and name")
        if label is None:
            label = _entity(path.name, "atlas") or path.name.split("_dseg")[0]
        return cls(
            label=label,
            indices=tuple(int(i) for i in df["index"]),
            names=tuple(df["name"]),
            network_labels=tuple(df["network_label"]),
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"index": self.indices, "name": self.names, "network_label": self.network_labels}
        )


def _entity(filename: str, key: str) -> str | None:
    for part in filename.split("_"):
        if part.startswith(f"{key}-"):
            return part[len(key) + 1 :]
    return None
