"""Select the MindSpore device (MindSpore 2.x: `mindspore.set_device`) and execution mode.

Called before any data work, so a missing GPU or Ascend stack fails in a second
with one line naming the device and MindSpore's own reason.
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Iterator

from ms_impl.trainer.errors import UsageError
from parity.core.files import one_line

MODES = {"graph": "GRAPH_MODE", "pynative": "PYNATIVE_MODE"}


@contextlib.contextmanager
def _mindspore_logger_quiet() -> Iterator[None]:
    """Mute MindSpore's Python logger: a failed device load logs multi-line errors we condense into one."""
    from mindspore import log as ms_log

    logger = ms_log._get_logger()  # MindSpore has no public setter for its logger level
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def set_device(device: str, mode: str = "graph", device_id: int | None = None, selected_already: bool = False) -> None:
    """Run on `device` ('CPU', 'GPU', 'Ascend') in `mode` ('graph', 'pynative'), or raise UsageError.

    `selected_already`: `mindspore.set_device` was called before (a distributed
    job sets it before `communication.init()`, after which it cannot be set again).
    """
    import numpy as np
    import mindspore as ms

    if mode not in MODES:
        raise UsageError(f"--mode: expected graph or pynative, got {mode!r}")
    try:
        with _mindspore_logger_quiet():
            if not selected_already:
                ms.set_device(device, device_id)
            ms.set_context(mode=getattr(ms, MODES[mode]))
            # set_device only records the choice; a first small op loads the backend for real.
            (ms.Tensor(np.ones(2, np.float32)) + 1).asnumpy()
    except (RuntimeError, ValueError, TypeError) as e:
        raise unusable_device(device, e) from None


def unusable_device(device: str, exc: BaseException) -> UsageError:
    """One complete line for a device MindSpore cannot use; it names the devices this MindSpore build supports."""
    supported = re.search(r"only supports one of the \[([^\]]*)\]", str(exc))
    devices = re.findall(r"'(\w+)'", supported.group(1)) if supported else []
    if devices:
        return UsageError(f"device {device} is not usable: this MindSpore installation runs on {' and '.join(devices)} "
                          f"only; pass --device {devices[0]} (or install a MindSpore build for {device})")
    return UsageError(f"device {device} is not usable: {one_line(exc, limit=1000, with_type=False)}")
