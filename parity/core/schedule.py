"""Learning-rate schedule shared by the twins: linear warmup, then cosine decay.

The formula of mindspore-ai/models `lr_generator.get_lr` (lr_decay_mode
'cosine'), one value per training step. For global step i (0-based), with
W = warmup_epochs * steps_per_epoch and T = total_epochs * steps_per_epoch:

    i <  W:  lr = lr_init + (lr_max - lr_init) * i / W
    i >= W:  lr = lr_end + (lr_max - lr_end) * (1 + cos(pi * (i - W) / (T - W))) / 2
    lr = max(lr, 0)

so the first step runs at lr_init and the last one just above lr_end.

The MindSpore trainer feeds the whole array to the optimizer; the PyTorch side
gets the same values from a LambdaLR (`lr_at_step` divided by the base LR).
"""
from __future__ import annotations

import math

import numpy as np


def lr_at_step(
    step: int, *, lr_init: float, lr_max: float, lr_end: float, warmup_steps: float, total_steps: int
) -> float:
    """The learning rate of 0-based global step `step`."""
    if step < warmup_steps:
        lr = lr_init + (lr_max - lr_init) * step / warmup_steps
    elif total_steps <= warmup_steps:
        lr = lr_end
    else:
        lr = lr_end + (lr_max - lr_end) * (1.0 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps))) / 2.0
    return max(lr, 0.0)


def warmup_cosine_lr(
    *,
    lr_init: float,
    lr_max: float,
    lr_end: float,
    warmup_epochs: float,
    total_epochs: int,
    steps_per_epoch: int,
) -> np.ndarray:
    """Per-step learning rates (float32, length total_epochs * steps_per_epoch)."""
    if steps_per_epoch <= 0 or total_epochs <= 0:
        raise ValueError(f"need positive steps_per_epoch and total_epochs, got {steps_per_epoch}, {total_epochs}")
    if warmup_epochs < 0 or warmup_epochs > total_epochs:
        raise ValueError(f"warmup_epochs must be in [0, total_epochs={total_epochs}], got {warmup_epochs}")
    total_steps = total_epochs * steps_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    values = [
        lr_at_step(i, lr_init=lr_init, lr_max=lr_max, lr_end=lr_end, warmup_steps=warmup_steps, total_steps=total_steps)
        for i in range(total_steps)
    ]
    return np.asarray(values, dtype=np.float32)
