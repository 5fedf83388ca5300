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

Only for a process that is the trainer (train.py run as a script): a
library user's process keeps its own signal handling.
"""
from __future__ import annotations

import _thread
import signal
import threading

__all__ = ["watch_sigint"]

_started = False


def watch_sigint() -> None:
    """Route SIGINT through a watcher thread; call first thing, before imports that start threads."""
    global _started
    if _started or threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    threading.Thread(target=_forward_sigint, name="sigint-watcher", daemon=True).start()
    _started = True


def _forward_sigint() -> None:
    while True:
        signal.sigwait({signal.SIGINT})
        _thread.interrupt_main(signal.SIGINT)  # runs the Python handler for SIGINT in the main thread
