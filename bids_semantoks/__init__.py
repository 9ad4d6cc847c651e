"""bids_semantoks: a BIDS App for the Brain-Semantoks fMRI foundation model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bids_semantoks")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"
