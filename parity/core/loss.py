"""Cross entropy with label smoothing: the formula both twins use.

For C classes, smoothing s, true class y and logits z (log-softmax p = log_softmax(z)):

    target_k = (1 - s) * [k == y] + s / C          (PyTorch and mindcv; spreads s over ALL classes)
    loss     = mean over the batch of  -sum_k target_k * p_k

The official MindSpore model zoo's `CrossEntropySmooth` puts s / (C - 1) on the
wrong classes and 1 - s on the true one instead; the twins do not use that form
so that their losses match to float precision.

With class weights w (the trainer's `class_balance: weights`), as PyTorch and
MindSpore weigh it: each image's loss is
`-(1 - s) * w_y * p_y - (s / C) * sum_k w_k * p_k`, and the batch mean divides
by sum of w_y over the batch instead of the batch size. Both twins call their
framework's `CrossEntropyLoss(label_smoothing=s)`, which implements the formula
above; `smoothed_cross_entropy` is the framework-free reference the parity
suite checks them against.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def smoothed_targets(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    targets = np.full((len(labels), num_classes), smoothing / num_classes, dtype=np.float64)
    targets[np.arange(len(labels)), labels] += 1.0 - smoothing
    return targets


def smoothed_cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float,
                           class_weights: Optional[Sequence[float]] = None) -> float:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    if class_weights is None:
        targets = smoothed_targets(labels, logits.shape[1], smoothing)
        return float(-(targets * log_probs).sum(axis=1).mean())
    weights = np.asarray(class_weights, dtype=np.float64)
    true_class = -(1.0 - smoothing) * weights[labels] * log_probs[np.arange(len(labels)), labels]
    spread = -(smoothing / logits.shape[1]) * (weights[None, :] * log_probs).sum(axis=1)
    return float((true_class + spread).sum() / weights[labels].sum())
