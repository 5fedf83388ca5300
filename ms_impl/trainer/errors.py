"""The one error type the CLIs turn into `error: <message>` and exit status 2.

Raised for bad input a user can fix (config, arguments, data folders, checkpoint
files, unusable device); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UsageError(Exception):
    """Bad input: the message names the file or option and the problem, on one line."""
