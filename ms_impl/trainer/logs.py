"""The trainer's log: the console (one line per record, msrun rank prefixes), the run's train.log (one warning
and console only when it cannot be written), and the setup's lines held until train.log may be created."""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Optional

from parity.core.files import WriteError, one_line


class RunLogHandler(logging.FileHandler):
    """train.log; when it cannot be written (disk full) one warning, then the console only: never a traceback per line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            print(f"warning: {self.baseFilename}: cannot write the log ({one_line(sys.exc_info()[1])}); "
                  "console only from now on", file=sys.stderr)


def close_run_log() -> None:
    """Detach the train.log of an earlier run in this process (tests run the trainer in-process)."""
    root = logging.getLogger("ms_impl")
    for handler in [h for h in root.handlers if isinstance(h, RunLogHandler)]:
        root.removeHandler(handler)
        handler.close()


def buffer_setup_log() -> logging.handlers.MemoryHandler:
    """Hold the setup's log lines until train.log may be created (after every input was validated)."""
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    logging.getLogger("ms_impl").addHandler(buffer)
    return buffer


class ConsoleHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of each record (it may be replaced after setup)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(log_file: Optional[Path] = None, console_prefix: str = "") -> None:
    """Console handler (once), and `log_file` as the one file handler: a previous run's file is closed."""
    root = logging.getLogger("ms_impl")
    root.setLevel(logging.INFO)
    root.propagate = False
    console = next((h for h in root.handlers if isinstance(h, ConsoleHandler)), None)
    if console is None:
        console = ConsoleHandler()
        root.addHandler(console)
    if console_prefix:  # msrun tails every worker's log to one console
        console.setFormatter(logging.Formatter(console_prefix + "%(message)s"))
    elif not console.formatter:
        console.setFormatter(logging.Formatter("%(message)s"))
    if log_file is not None:
        try:
            handler = RunLogHandler(log_file, encoding="utf-8")
        except OSError as e:
            raise WriteError(f"{log_file}: cannot write ({e.strerror or e})") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        close_run_log()
        for buffer in [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
            buffer.setTarget(handler)  # the setup's lines first
            buffer.flush()
            root.removeHandler(buffer)
        root.addHandler(handler)
