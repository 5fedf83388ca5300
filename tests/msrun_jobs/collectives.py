"""The collective helpers of ms_impl/trainer/distributed.py under a real msrun job (tests/test_distributed.py).

    msrun --worker_num=2 ... collectives.py OUT_DIR

PYNATIVE mode and no training (nothing to compile, so the job takes seconds).
Each rank writes OUT_DIR/rank<r>.json with what it observed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import numpy as np

NUM_VAL = 13  # odd: the two ranks evaluate 7 and 6 images


def main() -> int:
    out_dir = Path(sys.argv[1])
    import mindspore as ms

    from ms_impl.trainer import distributed as dist
    from ms_impl.trainer import sharding
    from ms_impl.trainer.errors import UsageError

    ctx = dist.init_distributed("on", device="CPU")  # the scheduler process ends in here
    ms.set_context(mode=ms.PYNATIVE_MODE)
    seen = {"rank": ctx.rank, "world_size": ctx.world_size}

    # exact integer sums far beyond float32's 2**24, and a float sum
    seen["int_sum"] = dist.all_reduce_sum(np.array([2**33 + 12345 * ctx.rank, 1]), ctx).tolist()
    seen["float_sum"] = float(dist.all_reduce_sum(np.array([0.25 + ctx.rank]), ctx)[0])
    # eval shards: every sample counted once
    mine = sharding.shard_eval_indices(NUM_VAL, ctx.num_shards, ctx.shard_id)
    seen["eval_images_this_rank"] = len(mine)
    seen["eval_images_total"] = int(dist.all_reduce_sum(np.array([len(mine)]), ctx)[0])
    seen["eval_index_sum"] = int(dist.all_reduce_sum(np.array([int(mine.sum())]), ctx)[0])

    from ms_impl.mobilenetv2 import MobileNetV2

    ms.set_seed(3)
    network = MobileNetV2(26, width_mult=0.35, dropout=0.0)
    state = dist.replicated_state(network)
    seen["digest_at_start"] = dist.check_replicas_identical(state, ctx, "start")
    # per-rank BatchNorm statistics, as each rank's own batches would leave them
    for name, p in state.items():
        if name.endswith("moving_mean"):
            p.set_data(ms.Tensor(np.full(p.shape, ctx.rank + 1.0, np.float32)))
    dist.average_batchnorm_statistics(network, ctx)
    seen["averaged_moving_means"] = sorted({float(v) for n, p in state.items() if n.endswith("moving_mean")
                                            for v in p.asnumpy().ravel()})
    seen["digest_after_average"] = dist.check_replicas_identical(state, ctx, "after averaging")

    perturbed = {name: p.asnumpy() for name, p in state.items()}
    if ctx.rank == 1:
        perturbed["dense.bias"] = perturbed["dense.bias"] + np.float32(1e-3)
    try:
        dist.check_replicas_identical(perturbed, ctx, "perturbed copy")
        seen["mismatch"] = ""
    except UsageError as e:
        seen["mismatch"] = str(e)

    try:
        error = UsageError("rank 1 cannot read its data") if ctx.rank == 1 else None
        dist.raise_if_any_rank_failed(error, ctx, "setup")
        seen["setup_failure"] = ""
    except UsageError as e:
        seen["setup_failure"] = str(e)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{ctx.rank}.json").write_text(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
