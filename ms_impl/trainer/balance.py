"""Class balance of the training set: `class_balance: none | weights | sampler` (numpy only).

- `weights`: the loss weighs each class by its inverse frequency,
  w_c = N / (C x n_c) (N training images, C classes, n_c of class c), so
  every class contributes as if the set were balanced; the mean weight per
  image is 1.
- `sampler`: each epoch draws N samples with every class equally often
  (N / C each, the remainder spread over random classes); within a class the
  images are cycled in a shuffled order, so a small class repeats its images
  and a large one shows a different subset each epoch. The draw is a function
  of the generator handed in, i.e. of (seed, epoch) in the trainer, so a
  resumed epoch replays exactly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["CLASS_BALANCE_MODES", "class_counts", "inverse_frequency_weights", "balanced_order", "describe"]

CLASS_BALANCE_MODES = ("none", "weights", "sampler")


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 loss weight per class, N / (C x n_c); ValueError when a class has no image."""
    counts = class_counts(labels, num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(f"class index(es) {empty.tolist()} have no training image: no inverse frequency")
    return (len(labels) / (num_classes * counts)).astype(np.float32)


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """len(labels) sample indices, each class present drawn equally often (+-1), in shuffled order."""
    labels = np.asarray(labels)
    present = np.unique(labels)
    quota = np.full(len(present), len(labels) // len(present))
    quota[rng.choice(len(present), len(labels) % len(present), replace=False)] += 1
    chosen = []
    for label, count in zip(present, quota):
        members = np.flatnonzero(labels == label)
        rounds = -(-count // len(members))  # ceil: enough shuffled passes over the class
        chosen.append(np.concatenate([rng.permutation(members) for _ in range(rounds)])[:count])
    return rng.permutation(np.concatenate(chosen))


def describe(mode: str, labels: np.ndarray, class_names: Sequence[str], weights: Optional[np.ndarray] = None) -> str:
    """One log line: the mode and what it does to this training set."""
    counts = class_counts(labels, len(class_names))
    smallest, largest = int(np.argmin(counts)), int(np.argmax(counts))
    spread = (f"train images per class {counts[smallest]} ({class_names[smallest]}) .. "
              f"{counts[largest]} ({class_names[largest]})")
    if mode == "weights" and weights is not None:
        return (f"class balance: weights (inverse class frequency) {weights.min():.3g} .. {weights.max():.3g}; {spread}")
    if mode == "sampler":
        return f"class balance: sampler (every class ~{len(labels) / len(class_names):.1f} draws per epoch); {spread}"
    return f"class balance: none; {spread}"
