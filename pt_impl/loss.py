"""Training loss of the PyTorch twin: cross entropy with label smoothing.

The formula is stated once in `parity/core/loss.py` (PyTorch's form: s / C on every
class). PyTorch's `nn.CrossEntropyLoss(label_smoothing=s)` implements it,
class weights included (the trainer's `class_balance: weights`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


def smoothed_cross_entropy(label_smoothing: float = 0.0, class_weights: Optional[Sequence[float]] = None) -> nn.Module:
    """Mean cross entropy over the batch; labels are int64 class indices.

    With `class_weights` (one per class), the weighted mean of `parity/core/loss.py`.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, reduction="mean", label_smoothing=label_smoothing)
