"""Exit codes and the one exception type every level raises for user-facing errors.

Exit codes follow the BIDS Apps execution draft (and BSD ``sysexits``):

====  =========================================================
code  meaning
====  =========================================================
0     success
1     unexpected failure (a bug: please report it with the log)
18    the filters (labels, ``--bids-filter-file``) selected nothing
64    usage error (bad option, bad option combination)
65    bad data (corrupt/inconsistent input files)
66    a required input is missing
73    the output (or work) folder cannot be created or written
====  =========================================================
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1
EX_NOINPUT_SELECTED = 18
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73


class BidsAppError(Exception):
    """An error the user can fix, shown as one line and mapped to an exit code.

    Parameters
    ----------
    message : str
        One line naming the file (or option) at fault and the fix.
    code : int
        Exit code (see module docstring).
    """

    code = EX_FAILURE

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(BidsAppError):
    code = EX_USAGE


class DataError(BidsAppError):
    code = EX_DATAERR


class MissingInputError(BidsAppError):
    code = EX_NOINPUT


class NothingSelectedError(BidsAppError):
    code = EX_NOINPUT_SELECTED


class OutputError(BidsAppError):
    code = EX_CANTCREAT
