"""The one base class of the errors a user can fix; `parity.core.cli.run_cli` turns them into one line.

Every tool's bad-input error derives from `UserError` (the trainer's
`UsageError`, the converter's `ConversionError`, `WriteError`, ...), so one
`except UserError` in `run_cli` reports them all the same way; anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input a user can fix; the message names the file or option and the problem, on one line.

    `exit_code` is the tool's exit status for it (2, the usage-error status, unless a subclass says otherwise).
    """

    exit_code = EXIT_USER_ERROR
