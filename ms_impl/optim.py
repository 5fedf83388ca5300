"""Optimizer of the MindSpore twin: Momentum, weight decay on conv/dense weights only.

The decay rule lives in `parity/core/param_groups.py`; `pt_impl/optim.py` builds the
same optimizer in PyTorch (SGD with momentum, dampening 0, same groups), so a
step updates the two twins identically:
    v <- momentum * v + (grad + wd * w);  w <- w - lr * v
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from mindspore import Tensor, nn

from parity.core.param_groups import takes_weight_decay


def build_optimizer(
    params: Sequence,
    lr_per_step: np.ndarray,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
) -> nn.Momentum:
    """Momentum over `params` (e.g. `net.trainable_params()`), one learning rate per global step."""
    params = list(params)
    decay = [p for p in params if takes_weight_decay(p.name, len(p.shape))]
    no_decay = [p for p in params if not takes_weight_decay(p.name, len(p.shape))]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return nn.Momentum(groups, learning_rate=Tensor(np.asarray(lr_per_step, dtype=np.float32)), momentum=momentum)
