"""How much of the twin's eval forward is our kernels, and how much MindSpore around them.

Runs, in one process and alternating, (a) the MindSpore twin's eval forward (GRAPH mode, `fast_conv`
on) and (b) the same kernel entry points it calls, in the same order and on the same shapes, straight
from Python through ctypes (`call_entry_point`, as MindSpore's AOT runtime calls them): the stem's BatchNorm
fold and the stem, the 17 blocks in one pass each that folds its own BatchNorms (the residual add in the
projection's epilogue in the 10 that have one), the last 1x1 layer's fold and the layer, and the pooling;
the dense layer as a numpy product. The difference is what the framework adds per forward: graph launch, op dispatch, output
allocation. Prints img/s of both (median and range over the rounds), then the kernels' time per kind of
call (median over the rounds of each kind's sum per forward).

    python experiments/eval_kernels_alone.py --rounds 15
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time

import numpy as np


def kernel_calls(spec, batch: int, size: int, classes: int, rng: np.random.Generator):
    """[(entry point, arrays)] of one eval forward, outputs included; the dense weights."""
    calls = []
    constants = np.array([1e-5, 0.1], np.float32)

    def raw(out_channels: int, weight_shape):
        """A layer's weight, gamma, beta, moving mean and variance, and constants: what a kernel that folds takes."""
        weight = (rng.standard_normal(weight_shape) * 0.1).astype(np.float32)
        bn = [rng.uniform(0.5, 1.5, out_channels).astype(np.float32) for _ in range(4)]
        return [weight, *bn, constants]

    def fold(out_channels: int, weight_shape):
        folded, bias = np.zeros(weight_shape, np.float32), np.zeros(out_channels, np.float32)
        calls.append(("bn_fold", raw(out_channels, weight_shape) + [folded, bias]))
        return folded, bias

    def out_size(h: int, stride: int) -> int:
        return (h - 1) // stride + 1

    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    stem = spec.stem
    w, b = fold(stem.out_channels, (stem.out_channels, 3, 3, 3))
    h = out_size(size, stem.stride)
    y = np.zeros((batch, stem.out_channels, h, h), np.float32)
    calls.append((f"dense_forward_bias_relu6_s{stem.stride}", [x, w, b, y]))
    for block in spec.blocks:
        hidden, ho = block.hidden_channels, out_size(h, block.stride)
        out = np.zeros((batch, block.out_channels, ho, ho), np.float32)
        # the whole block in one pass that folds its own BatchNorms, the residual added in the projection's epilogue
        layers = [] if block.expand is None else raw(hidden, (hidden, block.in_channels, 1, 1))
        layers += raw(hidden, (hidden, 1, 3, 3))
        layers += raw(block.out_channels, (block.out_channels, hidden, 1, 1))
        prefix = "dw_block_forward_bn" if block.expand is None else "block_forward_bn"
        name = f"{prefix}_residual_s1" if block.use_residual else f"{prefix}_s{block.stride}"
        calls.append((name, [y, *layers, out]))
        y, h = out, ho
    last = spec.last
    w, b = fold(last.out_channels, (last.out_channels, last.in_channels, 1, 1))
    features = np.zeros((batch, last.out_channels, h, h), np.float32)
    calls.append(("pw_forward_bias_relu6_s1", [y, w, b, features]))
    pooled = np.zeros((batch, last.out_channels), np.float32)
    calls.append(("global_average_pool", [features, pooled]))
    dense = (rng.standard_normal((classes, last.out_channels)) * 0.01).astype(np.float32)
    return calls, pooled, dense


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args(argv)

    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    from ms_impl.fast_conv import call_entry_point, kernel_library
    from ms_impl.mobilenetv2 import MobileNetV2
    from parity.core.spec import build_spec

    rng = np.random.default_rng(0)
    net = MobileNetV2(num_classes=args.num_classes, fast_conv="on")
    net.set_train(False)
    x = ms.Tensor(rng.standard_normal((args.batch, 3, args.image_size, args.image_size)).astype(np.float32))
    library = ctypes.CDLL(str(kernel_library()))  # the copy MindSpore loaded: one thread pool
    calls, pooled, dense = kernel_calls(build_spec(1.0), args.batch, args.image_size, args.num_classes, rng)

    by_kind = {}

    def kernels_alone() -> None:
        spent = {}
        for name, arrays in calls:
            start = time.perf_counter()
            status, _ = call_entry_point(library, name, arrays)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            if status:
                raise SystemExit(f"{name} returned {status}")
        start = time.perf_counter()
        pooled @ dense.T
        spent["dense (numpy)"] = time.perf_counter() - start
        for name, seconds in spent.items():
            by_kind.setdefault(name, []).append(seconds)

    for _ in range(2):
        net(x).asnumpy()
        kernels_alone()
    by_kind.clear()
    times = {"MindSpore twin, eval forward": [], "its kernels alone (ctypes)": []}
    for _ in range(args.rounds):
        for name, run in zip(times, (lambda: net(x).asnumpy(), kernels_alone)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    print(f"# batch {args.batch}, {args.image_size} px, {args.rounds} rounds alternating, {len(calls)} kernel calls")
    for name, values in times.items():
        rates = [args.batch / t for t in values]
        print(f"{name}: {statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) img/s, "
              f"{1e3 * statistics.median(values):.1f} ms per forward")
    counts = {}
    for name, _ in calls:
        counts[name] = counts.get(name, 0) + 1
    print("kernel calls per forward, ms: median (range) of their sum")
    for name, values in sorted(by_kind.items(), key=lambda item: -statistics.median(item[1])):
        print(f"  {name} x{counts.get(name, 1)}: {1e3 * statistics.median(values):.1f} "
              f"({1e3 * min(values):.1f}-{1e3 * max(values):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
