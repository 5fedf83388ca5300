"""Ctrl+C in the command-line tools: one `error:` line and exit 130, wherever it lands.

Three things stood in the way:
- MindSpore 2.10's runtime installs C-level SIGINT handlers of its own (its
  backend threads on the first graph run, the executor around every step);
  when one of its threads receives the SIGINT, it sends the process a SIGTERM
  instead, so a Ctrl+C in the middle of an epoch ended as SIGTERM, exit 143.
- A Ctrl+C during the tool's own imports printed a KeyboardInterrupt traceback.
- A Ctrl+C that cut `import mindspore` short left a half-imported package that
  the interpreter's shutdown re-enters: "Fatal Python error", SIGABRT, after
  the tool's one line.

So a tool process calls `watch_sigint(__name__, "mbv2-<tool>")` before any import
that starts a thread. When the module is the process's entry point, SIGINT is
blocked in that thread (threads inherit the mask, so none of MindSpore's or
OpenBLAS's threads can receive it) and one watcher thread takes it with
`sigwait`. Until the tool's `main` calls `hand_over()` (nothing read or written
yet) the watcher prints one line and ends the process with 130; after that it
hands the signal to the main thread's Python handler (`_thread.interrupt_main`):
a KeyboardInterrupt the tool turns into its one line (atomic writes remove their
temporary files on the way), or the trainer's stop flag. The tool then returns
`after_ctrl_c()`, which ends the process without the interpreter's shutdown.

A KeyboardInterrupt raised while MindSpore compiles a graph makes it print a
compile-failure report and write `rank_0/om/analyze_fail.ir` into the current
folder; calls that may compile run inside `deferred()`, which holds a Ctrl+C
until the call returns.

Imported as a library (tests, notebooks), nothing changes: the process keeps its
own signal handling and `after_ctrl_c()` just returns the exit code.
"""
from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

__all__ = ["watch_sigint", "hand_over", "deferred", "after_ctrl_c", "EXIT_SIGINT"]

EXIT_SIGINT = 128 + signal.SIGINT

_watching = False
_handed_over = threading.Event()
_state = threading.Lock()
_deferring = 0  # how many deferred() blocks the main thread is in
_pending = False  # a Ctrl+C arrived inside one


def watch_sigint(module_name: str, script_name: str) -> bool:
    """Route SIGINT through the watcher when this module is the process's entry point
    (`python tool.py`, `python -m package.tool`, or the installed `script_name`); True if it does."""
    global _watching
    entry = module_name == "__main__" or Path(sys.argv[0]).name == script_name
    if _watching or not entry or threading.current_thread() is not threading.main_thread():
        return _watching
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    threading.Thread(target=_forward_sigint, name="sigint-watcher", daemon=True).start()
    _watching = True
    return True


def hand_over() -> None:
    """From now on a Ctrl+C reaches the main thread's Python handler (the tool's own clean-up)."""
    _handed_over.set()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a Ctrl+C that arrives inside this block (a MindSpore call that may compile a graph) until it ends."""
    global _deferring, _pending
    with _state:
        _deferring += 1
    try:
        yield
    finally:
        with _state:
            _deferring -= 1
            fire, _pending = (_pending, False) if _deferring == 0 else (False, _pending)
        if fire:
            _thread.interrupt_main(signal.SIGINT)


def after_ctrl_c(code: int = EXIT_SIGINT) -> int:
    """The exit code after a Ctrl+C, once the tool has printed its line and settled its files. In a
    watched tool process: leave now, without the interpreter shutdown that a half-done import can abort."""
    if _watching:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _forward_sigint() -> None:
    global _pending
    while True:
        signal.sigwait({signal.SIGINT})
        if not _handed_over.is_set():
            print("error: interrupted (SIGINT) while starting; nothing was read or written", file=sys.stderr, flush=True)
            os._exit(EXIT_SIGINT)
        with _state:
            if _deferring:
                _pending = True
                continue
        _thread.interrupt_main(signal.SIGINT)  # runs the Python handler for SIGINT in the main thread
