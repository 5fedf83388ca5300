"""Which samples each data-parallel rank reads: pure index arithmetic (numpy only, no MindSpore).

Kept apart from `distributed.py` (the msrun launcher and collectives) so the
dataset code can shard without importing the communication layer.
"""
from __future__ import annotations

import numpy as np

__all__ = ["shard_train_order", "shard_eval_indices"]


def shard_train_order(order: np.ndarray, num_shards: int = 1, shard_id: int = 0) -> np.ndarray:
    """Shard `shard_id`'s part of an epoch's sample order: positions shard_id, shard_id + W, ... (W = num_shards).

    The order is first cut to a multiple of W so every rank runs the same
    number of steps (collectives would wait forever otherwise). Batch i of
    rank r then holds samples i*B*W + r + k*W (k < B): the W per-rank batches
    of a step together are exactly batch i of a single process with batch B*W.
    """
    if num_shards == 1:
        return order
    usable = len(order) - len(order) % num_shards
    return order[:usable][shard_id::num_shards]


def shard_eval_indices(num_samples: int, num_shards: int = 1, shard_id: int = 0) -> np.ndarray:
    """Sample indices shard `shard_id` evaluates: disjoint across shards, together every sample exactly once.

    (mindspore.dataset's own `num_shards` pads shards to equal length by
    repeating samples, which would count some images twice in the accuracy.)
    """
    return np.arange(shard_id, num_samples, num_shards)
