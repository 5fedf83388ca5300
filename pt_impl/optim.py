"""Optimizer of the PyTorch twin: SGD with momentum, weight decay on conv/dense weights only.

Mirrors `ms_impl/optim.py`: the decay rule lives in `parity/core/param_groups.py`,
and the per-step learning rates come from the same array through a LambdaLR,
so a step updates the two twins identically:
    v <- momentum * v + (grad + wd * w);  w <- w - lr * v
`lr_scale` gives parameters their own multiple of the step's learning rate.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from parity.core.param_groups import takes_weight_decay


def build_optimizer(
    named_params: Iterable[Tuple[str, torch.nn.Parameter]],
    lr_per_step: np.ndarray,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
    lr_scale: Optional[Callable[[str], float]] = None,
) -> Tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over `named_params` (e.g. `model.named_parameters()`) and its per-step scheduler.

    `lr_scale(name)`: the factor on that parameter's learning rate (default 1 for all).
    """
    groups: Dict[Tuple[float, bool], List[torch.nn.Parameter]] = {}
    for name, p in named_params:
        if p.requires_grad:
            scale = 1.0 if lr_scale is None else float(lr_scale(name))
            groups.setdefault((scale, takes_weight_decay(name, p.ndim)), []).append(p)
    # LambdaLR multiplies each group's base LR (its scale here) by the factor of the current step.
    param_groups = [{"params": members, "lr": scale, "weight_decay": weight_decay if decays else 0.0}
                    for (scale, decays), members in groups.items()]
    lr_per_step = np.asarray(lr_per_step, dtype=np.float64)
    optimizer = torch.optim.SGD(param_groups, lr=1.0, momentum=momentum, dampening=0.0, nesterov=False)
    last = len(lr_per_step) - 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: float(lr_per_step[min(step, last)]))
    return optimizer, scheduler
