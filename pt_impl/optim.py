"""Optimizer of the PyTorch twin: SGD with momentum, weight decay on conv/dense weights only.

Mirrors `ms_impl/optim.py`: the decay rule lives in `parity/core/param_groups.py`,
and the per-step learning rates come from the same array through a LambdaLR,
so a step updates the two twins identically:
    v <- momentum * v + (grad + wd * w);  w <- w - lr * v
"""
from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np
import torch

from parity.core.param_groups import takes_weight_decay


def build_optimizer(
    named_params: Iterable[Tuple[str, torch.nn.Parameter]],
    lr_per_step: np.ndarray,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
) -> Tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over `named_params` (e.g. `model.named_parameters()`) and its per-step scheduler."""
    named_params = [(n, p) for n, p in named_params if p.requires_grad]
    decay = [p for n, p in named_params if takes_weight_decay(n, p.ndim)]
    no_decay = [p for n, p in named_params if not takes_weight_decay(n, p.ndim)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    lr_per_step = np.asarray(lr_per_step, dtype=np.float64)
    # LambdaLR multiplies the base LR (1.0 here) by the factor of the current step.
    optimizer = torch.optim.SGD(groups, lr=1.0, momentum=momentum, dampening=0.0, nesterov=False)
    last = len(lr_per_step) - 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(lr_per_step[min(step, last)]))
    return optimizer, scheduler
