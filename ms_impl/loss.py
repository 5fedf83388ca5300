"""Training loss of the MindSpore twin: cross entropy with label smoothing.

The formula is stated once in `parity/core/loss.py` (PyTorch's form: s / C on every
class). MindSpore 2.x's `nn.CrossEntropyLoss(label_smoothing=s)` implements it.
"""
from __future__ import annotations

from mindspore import nn


def smoothed_cross_entropy(label_smoothing: float = 0.0) -> nn.Cell:
    """Mean cross entropy over the batch; labels are int32 class indices."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return nn.CrossEntropyLoss(reduction="mean", label_smoothing=label_smoothing)
