"""A tiny data-parallel job for tests/test_distributed.py, run alone or under msrun.

    python tiny_data_parallel.py OUT_DIR [--steps K] [--global_batch G]
    msrun --worker_num=2 ... tiny_data_parallel.py OUT_DIR ...

Trains a 0.35x MobileNetV2 on fixed random 32x32 images with BatchNorm frozen
(eval-mode BN: moving statistics, not batch statistics) and no dropout, so K
steps at global batch G give the same weights whether one process or W ranks
run them. Each rank writes `rank<r>_frozen.npz` (weights after those K steps)
and `rank<r>.json` (global eval counts, replica digests). Then each rank sets
its BatchNorm moving statistics to rank-dependent values (as per-rank batch
statistics would make them) and `average_batchnorm_statistics` must make the
replicas identical again, holding the mean. Finally rank 1 perturbs one
weight, and `check_replicas_identical` must report the mismatch on every rank.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import numpy as np

NUM_CLASSES = 26
NUM_TRAIN = 48
NUM_VAL = 13  # odd on purpose: the two ranks evaluate 7 and 6 images


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--global_batch", type=int, default=8)
    parser.add_argument("--distributed", default="auto")
    args = parser.parse_args()

    import mindspore as ms
    from mindspore import nn

    from ms_impl import distributed as dist
    from ms_impl.errors import UsageError

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ctx = dist.init_distributed(args.distributed)  # the scheduler process ends in here
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if args.global_batch % ctx.world_size:
        print(f"error: --global_batch {args.global_batch} is not a multiple of {ctx.world_size} workers", file=sys.stderr)
        return 2
    per_worker = args.global_batch // ctx.world_size

    from ms_impl.mobilenetv2 import MobileNetV2

    ms.set_seed(7)
    network = MobileNetV2(NUM_CLASSES, width_mult=0.35, dropout=0.0)
    params = {p.name: p for p in network.get_parameters()}
    start_digest = dist.check_replicas_identical(params, ctx, "initial weights")

    rng = np.random.default_rng(0)
    train_x = rng.standard_normal((NUM_TRAIN, 3, 32, 32)).astype(np.float32)
    train_y = rng.integers(0, NUM_CLASSES, NUM_TRAIN).astype(np.int32)
    val_x = rng.standard_normal((NUM_VAL, 3, 32, 32)).astype(np.float32)
    val_y = rng.integers(0, NUM_CLASSES, NUM_VAL).astype(np.int32)

    optimizer = nn.Momentum(network.trainable_params(), learning_rate=0.05, momentum=0.9)
    step = nn.TrainOneStepCell(nn.WithLossCell(network, nn.CrossEntropyLoss()), optimizer)
    step.set_train(True)

    def train(num_steps: int) -> None:
        order = dist.shard_train_order(np.random.default_rng(3).permutation(NUM_TRAIN), ctx.num_shards, ctx.shard_id)
        for i in range(num_steps):
            batch = order[i * per_worker:(i + 1) * per_worker]
            step(ms.Tensor(train_x[batch]), ms.Tensor(train_y[batch]))

    for _, cell in network.cells_and_names():  # freeze BN before the step compiles (graph mode bakes it in)
        if isinstance(cell, nn.BatchNorm2d):
            cell.set_train(False)
    train(args.steps)
    frozen = {name: p.asnumpy() for name, p in params.items()}
    frozen_digest = dist.check_replicas_identical(params, ctx, "after frozen-BN steps")

    network.set_train(False)
    mine = dist.shard_eval_indices(NUM_VAL, ctx.num_shards, ctx.shard_id)
    logits = network(ms.Tensor(val_x[mine])).asnumpy()
    correct = int((logits.argmax(axis=1) == val_y[mine]).sum())
    shifted = logits - logits.max(axis=1, keepdims=True)
    losses = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(mine)), val_y[mine]]
    counts = dist.all_reduce_sum(np.array([correct, len(mine)]), ctx)
    loss_sum = float(dist.all_reduce_sum(np.array([losses.sum()]), ctx)[0])

    for name, p in params.items():
        if name.endswith("moving_mean"):
            p.set_data(ms.Tensor(np.full(p.shape, ctx.rank + 1.0, np.float32)))
    dist.average_batchnorm_statistics(network, ctx)
    averaged_means = sorted({float(v) for name, p in params.items() if name.endswith("moving_mean") for v in p.asnumpy().ravel()})
    averaged_digest = dist.check_replicas_identical(params, ctx, "after averaging BN statistics")

    mismatch_reported = False
    if ctx.distributed:
        perturbed = dict(frozen)
        if ctx.rank == 1:
            perturbed["dense.bias"] = perturbed["dense.bias"] + np.float32(1e-3)
        try:
            dist.check_replicas_identical(perturbed, ctx, "perturbed copy")
        except UsageError as e:
            mismatch_reported = True
            print(f"expected mismatch: {e}", flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(args.out_dir / f"rank{ctx.rank}_frozen.npz", **frozen)
    (args.out_dir / f"rank{ctx.rank}.json").write_text(json.dumps({
        "rank": ctx.rank, "world_size": ctx.world_size, "per_worker_batch": per_worker,
        "eval_images_this_rank": len(mine), "eval_correct": int(counts[0]), "eval_total": int(counts[1]),
        "eval_loss_sum": loss_sum, "start_digest": start_digest, "frozen_digest": frozen_digest,
        "averaged_moving_means": averaged_means, "averaged_digest": averaged_digest,
        "mismatch_reported": mismatch_reported,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
