"""Optimizer of the MindSpore twin: Momentum, weight decay on conv/dense weights only.

The decay rule lives in `parity/core/param_groups.py`; `pt_impl/optim.py` builds the
same optimizer in PyTorch (SGD with momentum, dampening 0, same groups), so a
step updates the two twins identically:
    v <- momentum * v + (grad + wd * w);  w <- w - lr * v
`lr_scale` gives parameters their own multiple of the step's learning rate
(fine-tuning: the backbone at 0.1 x the head's).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mindspore import Tensor, nn

from parity.core.param_groups import takes_weight_decay


def build_optimizer(
    params: Sequence,
    lr_per_step: np.ndarray,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
    lr_scale: Optional[Callable[[object], float]] = None,
) -> nn.Momentum:
    """Momentum over `params` (e.g. `net.trainable_params()`), one learning rate per global step.

    `lr_scale(param)`: the factor on that parameter's learning rate (default 1 for all).
    """
    lr = np.asarray(lr_per_step, dtype=np.float32)
    groups: Dict[Tuple[float, bool], List] = {}
    for p in params:
        scale = 1.0 if lr_scale is None else float(lr_scale(p))
        groups.setdefault((scale, takes_weight_decay(p.name, len(p.shape))), []).append(p)
    param_groups = []
    for (scale, decays), members in groups.items():
        group = {"params": members, "weight_decay": weight_decay if decays else 0.0}
        if scale != 1.0:
            group["lr"] = Tensor((lr * np.float32(scale)).astype(np.float32))
        param_groups.append(group)
    return nn.Momentum(param_groups, learning_rate=Tensor(lr), momentum=momentum)
