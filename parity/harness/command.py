"""The one way the harness's command-line tools run: parse, run, turn failures into exit codes.

Exit codes: argparse's (2 for a usage error, 0 for --help), `run`'s own, 2 with one
`error:` line for a ConversionError (bad input or an unusable destination), 130 for
Ctrl+C (the writers are atomic, so nothing half-written is left behind).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from parity.core import interrupts
from parity.core.converter import ConversionError
from parity.core.options import framework_log_level

__all__ = ["run_command"]


def run_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
                argv: Optional[Sequence[str]] = None) -> int:
    framework_log_level(argv)  # before mindspore is first imported
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    interrupts.hand_over()
    try:
        return run(args)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (SIGINT); no partial file was left", file=sys.stderr)
        return interrupts.after_ctrl_c()
