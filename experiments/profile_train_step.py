"""Where one training step of the MindSpore twin spends its time on CPU: MindSpore's profiler, op totals.

    flock /tmp/heavy.lock python experiments/profile_train_step.py OUT_DIR [--batch 32] [--image-size 224] \
        [--freeze-bn] [--no-fold] [--steps 5]

GRAPH mode, 2 threads (ours and MindSpore's), fast_conv=auto, 1000 classes; two
warm-up steps, `--steps` timed steps (median and range in img/s), then `ms.Profiler`
around one step. `--freeze-bn`: BatchNorm on its moving statistics (the fine-tuning
recipe's freeze_bn), folded into our convolutions unless `--no-fold`. Prints the op time per kind
(forward/backward, op type; our Custom ops split into BatchNorm, stem,
depthwise and pointwise) from `FRAMEWORK/cpu_op_detail_info_0.csv` under OUT_DIR.
Used for issue 13 (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import collections
import csv
import glob
import os
import sys
import time


def summarize(out_dir: str) -> None:
    files = glob.glob(os.path.join(out_dir, "*", "FRAMEWORK", "cpu_op_detail_info_0.csv"))
    if not files:
        sys.exit(f"no profiler output under {out_dir}")
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    with open(files[0], newline="") as handle:
        for row in csv.DictReader(handle):
            name, kind = row["full_op_name"], row["op_type"]
            if kind == "Custom":
                stem = any(f"/features-SequentialCell/0-{block}/features-SequentialCell/0-" in name
                           for block in ("ConvBNReLU", "FusedConvBNReLU"))  # the kernels' block: a subclass
                kind = "Custom BatchNorm" if "BatchNorm" in name else ("Custom stem" if stem else (
                    "Custom pointwise" if "FastConv1x1" in name else "Custom depthwise"))
            key = ("backward " if name.startswith("Gradients") else "forward ") + kind
            totals[key] += float(row["op_total_time(ms)"])
            counts[key] += 1
    total = sum(totals.values())
    print(f"sum of op times {total:.0f} ms")
    for key, value in totals.most_common():
        print(f"{value:9.1f} ms {100 * value / total:5.1f}%  x{counts[key]:<4d} {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--freeze-bn", action="store_true", help="BatchNorm on its moving statistics, as freeze_bn")
    parser.add_argument("--no-fold", action="store_true", help="with --freeze-bn: keep BatchNorm as a pass of its own")
    parser.add_argument("--steps", type=int, default=5, help="timed steps before the profiled one")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    os.environ["OMP_NUM_THREADS"] = os.environ["MBV2_KERNEL_THREADS"] = "2"
    import numpy as np
    import mindspore as ms
    from mindspore import nn

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, runtime_num_threads=2)
    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.mobilenetv2 import MobileNetV2
    from ms_impl.optim import build_optimizer

    from ms_impl.mobilenetv2 import ConvBNReLU, InvertedResidual

    net = MobileNetV2(num_classes=1000, fast_conv="auto")
    for _, cell in net.cells_and_names():
        if args.freeze_bn and isinstance(cell, nn.BatchNorm2d):
            cell.use_batch_statistics = False
        if args.no_fold and isinstance(cell, (ConvBNReLU, InvertedResidual)):
            cell.fold_bn = False
    step = nn.TrainOneStepCell(nn.WithLossCell(net, smoothed_cross_entropy(0.1)),
                               build_optimizer(net.trainable_params(), np.full(100, 0.01, np.float32)))
    step.set_train(True)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((args.batch, 3, args.image_size, args.image_size), dtype=np.float32))
    y = ms.Tensor(rng.integers(0, 1000, args.batch).astype(np.int32))
    for _ in range(2):
        step(x, y).asnumpy()
    rates = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(x, y).asnumpy()
        rates.append(args.batch / (time.perf_counter() - start))
    if rates:
        print(f"{args.steps} steps: {np.median(rates):.1f} img/s ({min(rates):.1f}-{max(rates):.1f}), "
              f"freeze_bn {args.freeze_bn}, fold {not args.no_fold}")
    profiler = ms.Profiler(output_path=args.out_dir)
    start = time.perf_counter()
    step(x, y).asnumpy()
    print(f"profiled step {time.perf_counter() - start:.2f} s, load average {os.getloadavg()[0]:.1f}")
    profiler.stop()
    profiler.analyse()
    summarize(args.out_dir)


if __name__ == "__main__":
    main()
