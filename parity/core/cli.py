"""The one way a command-line tool runs its body: what a user sees when it fails or is interrupted.

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)
        return run_cli(lambda: _run(args))

- a `UserError` (bad input, an unwritable destination): one line `error: <message>` on
  stderr, exit status 2 (or the error's own `exit_code`), no traceback;
- an `OSError` about a path itself (too long, a loop of links; `files.is_path_error`),
  wherever a system call first meets it: one line naming the path, exit 2;
- Ctrl+C (KeyboardInterrupt): one line, then `interrupts.after_ctrl_c()`, exit 130; the
  writers are atomic, so nothing half-written is left behind. A body that handles its
  own Ctrl+C and returns 130 leaves the same way;
- anything else is a bug and keeps its traceback.

`run_cli` also hands Ctrl+C over to the main thread (`interrupts.hand_over`) before the body
starts: from then on the tool settles its files itself.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

from parity.core import interrupts
from parity.core.errors import EXIT_USER_ERROR, UserError
from parity.core.files import is_path_error, path_error_line

__all__ = ["run_cli", "UserError", "INTERRUPTED"]

INTERRUPTED = "error: interrupted (SIGINT); no partial file was left"


def run_cli(body: Callable[[], Optional[int]], interrupted: str = INTERRUPTED) -> int:
    """Run a tool's `body` (its work after the options are parsed) and return its exit status.

    `interrupted` is the line printed for a Ctrl+C the body does not handle itself.
    """
    interrupts.hand_over()
    try:
        code = int(body() or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if not is_path_error(exc):
            raise
        print(f"error: {path_error_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return interrupts.after_ctrl_c()
    return interrupts.after_ctrl_c(code) if code == interrupts.EXIT_SIGINT else code
