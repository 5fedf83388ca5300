"""Ctrl+C for the trainer: SIGINT reaches Python as SIGINT, whatever MindSpore's threads install.

MindSpore 2.10's runtime installs C-level SIGINT handlers of its own (its
backend threads on the first graph run, the executor around every step);
when one of its threads receives the SIGINT, that handler sends the process
a SIGTERM instead. So a Ctrl+C in the middle of an epoch used to end with
"interrupted by SIGTERM" and exit 143.

`watch_sigint()` blocks SIGINT in the calling thread before any other thread
exists (threads inherit the mask, so none of MindSpore's or OpenBLAS's
threads can receive it), and starts one watcher thread that takes it with
`sigwait` and hands it to the main thread as a Python-level SIGINT
(`_thread.interrupt_main`). Python's handler then runs as usual:
KeyboardInterrupt during setup, the trainer's stop flag during training.

Until the trainer calls `hand_over()` (its imports are still running, nothing
has been read or written), a Ctrl+C ends the process at once with one line
and exit 130: a KeyboardInterrupt inside a module import would print a
traceback instead.

Only for a process that is the trainer (train.py run as a script): a
library user's process keeps its own signal handling.
"""
from __future__ import annotations

import _thread
import os
import signal
import sys
import threading

__all__ = ["watch_sigint", "hand_over"]

_started = False
_handed_over = threading.Event()


def watch_sigint() -> None:
    """Route SIGINT through a watcher thread; call first thing, before imports that start threads."""
    global _started
    if _started or threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    threading.Thread(target=_forward_sigint, name="sigint-watcher", daemon=True).start()
    _started = True


def hand_over() -> None:
    """From now on a Ctrl+C goes to the main thread's Python handler (the trainer's own clean-up)."""
    _handed_over.set()


def _forward_sigint() -> None:
    while True:
        signal.sigwait({signal.SIGINT})
        if not _handed_over.is_set():
            print("error: interrupted (SIGINT) while starting; nothing was read or written", file=sys.stderr, flush=True)
            os._exit(128 + signal.SIGINT)
        _thread.interrupt_main(signal.SIGINT)  # runs the Python handler for SIGINT in the main thread
