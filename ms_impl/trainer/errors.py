"""The trainer's bad-input error, which the CLIs turn into `error: <message>` and exit status 2.

Raised for bad input a user can fix (config, arguments, data folders, checkpoint
files, unusable device); anything else is a bug and keeps its traceback. It is a
`parity.core.errors.UserError`, the base of every tool's bad-input errors, which
`parity.core.cli.run_cli` reports.
"""
from __future__ import annotations

from parity.core.errors import UserError


class UsageError(UserError):
    """Bad input: the message names the file or option and the problem, on one line."""
