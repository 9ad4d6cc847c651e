"""What a person sees on the console: one line per run, a summary, warnings; details on request.

Verbosity (``-v`` counts): 0 shows :data:`NOTE` lines (one per run, the summary), warnings and
errors; 1 adds INFO (discovery, decisions); 2 adds DEBUG and tracebacks (otherwise kept in the
crash files under ``OUTPUT_DIR/sub-<label>/log/``). Python warnings of libraries are shown
from ``-v`` on.
"""

from __future__ import annotations

import logging
import sys

#: Between INFO and WARNING: the lines shown at the default verbosity.
NOTE = 25
logging.addLevelName(NOTE, "NOTE")
LOGGER = logging.getLogger("bids_semantoks")


class _Formatter(logging.Formatter):
    """``HH:MM:SS message``; the level name only for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{self.formatTime(record, self.datefmt)} {record.levelname} {text}"
        return f"{self.formatTime(record, self.datefmt)} {text}"


def level_of(verbose: int) -> int:
    """The logging level of ``-v`` repeated ``verbose`` times."""
    return NOTE if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG


def setup_logging(verbose: int) -> None:
    """One handler on stderr for the app and the libraries it uses, at the level of ``-v``."""
    level = level_of(verbose)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_bids_semantoks", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._bids_semantoks = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter("%(message)s", datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    LOGGER.setLevel(level)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose >= 1 else logging.ERROR)
    for noisy in ("matplotlib", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)


def note(msg: str, *args) -> None:
    """A line shown at the default verbosity."""
    LOGGER.log(NOTE, msg, *args)
