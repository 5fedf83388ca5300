"""Which parameters get weight decay: the rule both twins' optimizers follow.

Weight decay applies to convolution and dense/linear weights only, never to
BatchNorm gamma/beta (or weight/bias) nor to biases: decaying a BN scale
towards zero changes the function, not just its complexity.
"""
from __future__ import annotations


def takes_weight_decay(name: str, ndim: int) -> bool:
    """True for conv kernels (4-D) and dense weights (2-D); BN tensors and biases are 1-D."""
    return name.endswith("weight") and ndim >= 2
