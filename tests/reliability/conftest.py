"""Fixtures of the reliability suite (helpers in reliability_helpers.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from reliability_helpers import TINY, Result, tree_state

from tests.conftest import DSEG, run_cli


# -- datasets -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _tiny_template(tmp_path_factory, default_networks) -> Path:
    """Two subjects written once per session; tests get copies."""
    from bids_semantoks.demo import make_dataset

    root = tmp_path_factory.mktemp("template") / "fmriprep"
    return make_dataset(root, DSEG["MNI152NLin2009cAsym"], default_networks, subjects=("01", "02"), **TINY)


@pytest.fixture
def tiny_bids(_tiny_template, tmp_path) -> Path:
    """A fresh, writable copy of the two-subject tiny fMRIPrep dataset."""
    dst = tmp_path / "fmriprep"
    shutil.copytree(_tiny_template, dst)
    return dst


@pytest.fixture
def cli(capsys, request):
    """Run the CLI in-process; return a :class:`Result` with the exit code and the error line.

    BIDS_DIR (the first argument) is hashed before and after: it must be unchanged.
    """

    def _run(*args) -> Result:
        capsys.readouterr()
        bids = Path(str(args[0]))
        before = tree_state(bids) if bids.is_dir() else None
        _drop_stream_handlers()  # the CLI's logging.basicConfig binds this test's stderr
        try:
            code = run_cli(*args)
        finally:
            _drop_stream_handlers()
        err = capsys.readouterr().err
        if before is not None:  # every CLI run of the suite: BIDS_DIR is never touched
            assert tree_state(bids) == before, f"BIDS_DIR {bids} changed"
        result = Result(code, err)
        record = os.environ.get("BIDS_SEMANTOKS_RELIABILITY_MESSAGES")
        if record:  # collect what users see, for docs/reliability.md
            with open(record, "a") as fh:
                fh.write(json.dumps({"test": request.node.nodeid, "code": code, "errors": result.errors}) + "\n")
        return result

    return _run




def _drop_stream_handlers() -> None:
    """Point every plain stream handler (ours from basicConfig, nipype's) at this test's stderr."""
    import sys

    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # not pytest's own (subclass) handlers
                handler.stream = sys.stderr  # (setStream would flush the closed one)
