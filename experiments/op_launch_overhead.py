"""What one more kernel op costs inside a MindSpore graph, apart from its work: chains of 1 and N ops.

    flock /tmp/heavy.lock python experiments/op_launch_overhead.py [--ops 21] [--rounds 30] [--planes 2,56]

A GRAPH-mode cell calls our 1x1 kernel (`pw_forward_s1`, through `ops.Custom` as the twin's layers do) N times
in a chain on a batch of 32 x 8 channels, the weights an identity; the same cell with one call is the baseline.
(median time with N ops - with 1 op) / (N - 1) is what each further op adds: on 2 x 2 planes that is the op's
launch (MindSpore's dispatch, our entry point's checks, waking the kernels' threads) with next to no work; on
56 x 56 planes the 1x1 product's own memory traffic (3.2 MB in and out) is added. This bounds what a single op
for the whole network could save over the eval forward's ~25 kernel ops.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def chain_ms(ms, nn, ops, library: str, calls: int, x, w, rounds: int) -> float:
    class Chain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.op = ops.Custom(f"{library}:pw_forward_s1", out_shape=lambda xs, ws: (xs[0], ws[0], xs[2], xs[3]),
                                 out_dtype=lambda xt, wt: xt, func_type="aot")

        def construct(self, x, w):
            for _ in range(calls):
                x = self.op(x, w)
            return x

    net = Chain()
    net(x, w).asnumpy()  # compile
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        net(x, w).asnumpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=21, help="ops in the long chain (at least 2)")
    parser.add_argument("--rounds", type=int, default=30, help="timed calls of each chain")
    parser.add_argument("--planes", default="2,56", help="plane sizes, comma-separated")
    args = parser.parse_args()
    if args.ops < 2 or args.rounds < 1:
        parser.error("--ops must be at least 2 and --rounds at least 1")
    import mindspore as ms
    from mindspore import nn, ops

    from ms_impl.fast_conv import kernel_library, kernel_threads, resolve_fast_conv

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    resolve_fast_conv("on")
    library = str(kernel_library())
    print(f"# kernels: {kernel_threads()} threads; batch 32 x 8 channels; median of {args.rounds} calls")
    rng = np.random.default_rng(0)
    w = ms.Tensor(np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1))
    for size in (int(s) for s in args.planes.split(",")):
        x = ms.Tensor(rng.random((32, 8, size, size), dtype=np.float32))
        one = chain_ms(ms, nn, ops, library, 1, x, w, args.rounds)
        many = chain_ms(ms, nn, ops, library, args.ops, x, w, args.rounds)
        print(f"plane {size}x{size}: 1 op {one:.3f} ms, {args.ops} ops {many:.3f} ms -> "
              f"{(many - one) / (args.ops - 1) * 1e3:.0f} us per further op")


if __name__ == "__main__":
    main()
