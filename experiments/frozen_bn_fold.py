"""Training steps with frozen BatchNorm, folded into our convolutions or not, interleaved in one process.

    flock /tmp/heavy.lock python experiments/frozen_bn_fold.py [--batch 32] [--image-size 224] [--steps 20] \
        [--against unfolded|separate]

GRAPH mode, 2 threads, fast_conv=auto, 1000 classes, BatchNorm on its moving statistics
(the fine-tuning recipe's freeze_bn). Two copies of the same network: one folds every
BatchNorm into the convolution before it (the default), the other keeps it as a pass of
its own (`fold_bn = False`); with `--against separate`, the other folds too but runs each
block's expand and depthwise layers on their own kernels (`expand_into_depthwise = False`:
the expand layer's bias and ReLU6 in its own pass). Their steps alternate (A, B, A, B, ...), so load hits both
alike; prints the median and range of img/s of each, and their losses after the steps
(the same weights and data, no dropout: unfolded, they agree to rounding; `separate` computes
the same values bit for bit, so its losses are identical). Used for issue 13 (docs/design.md, section 7).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--against", choices=("unfolded", "separate"), default="unfolded",
                        help="the second network: BatchNorm not folded, or folded with separate expand/depthwise kernels")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    os.environ["OMP_NUM_THREADS"] = os.environ["MBV2_KERNEL_THREADS"] = "2"
    import numpy as np
    import mindspore as ms
    from mindspore import nn

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=2)
    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.mobilenetv2 import ConvBNReLU, InvertedResidual, MobileNetV2
    from ms_impl.optim import build_optimizer

    ms.set_seed(0)
    reference = MobileNetV2(num_classes=1000, dropout=0.0, fast_conv="auto")
    weights = {p.name: p.asnumpy() for p in reference.get_parameters()}
    steps = {}
    for name in ("folded", args.against):
        net = MobileNetV2(num_classes=1000, dropout=0.0, fast_conv="auto")
        ms.load_param_into_net(net, {k: ms.Parameter(v, name=k) for k, v in weights.items()})
        for _, cell in net.cells_and_names():
            if isinstance(cell, nn.BatchNorm2d):
                cell.use_batch_statistics = False
            if name == "unfolded" and isinstance(cell, (ConvBNReLU, InvertedResidual)):
                cell.fold_bn = False
            if name == "separate" and isinstance(cell, InvertedResidual):
                cell.expand_into_depthwise = False
        step = nn.TrainOneStepCell(nn.WithLossCell(net, smoothed_cross_entropy(0.1)),
                                   build_optimizer(net.trainable_params(), np.full(1000, 0.01, np.float32)))
        step.set_train(True)
        steps[name] = step
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((args.batch, 3, args.image_size, args.image_size), dtype=np.float32))
    y = ms.Tensor(rng.integers(0, 1000, args.batch).astype(np.int32))
    for step in steps.values():
        for _ in range(2):
            step(x, y).asnumpy()
    rates = {name: [] for name in steps}
    losses = {}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            losses[name] = float(step(x, y).asnumpy())
            rates[name].append(args.batch / (time.perf_counter() - start))
    print(f"last losses identical: {len(set(losses.values())) == 1}")
    for name, values in rates.items():
        print(f"{name}: {statistics.median(values):.1f} img/s ({min(values):.1f}-{max(values):.1f}) over {args.steps} "
              f"interleaved steps, last loss {losses[name]:.5f}")


if __name__ == "__main__":
    main()
