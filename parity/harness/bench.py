"""`python -m parity bench`: the MindSpore twin against the PyTorch twin, side by side, in one process.

Times a training step (forward + backward + Momentum update, smoothed cross
entropy) and an eval forward of both twins on the same random batch. Steps
of the two twins alternate, so load from other processes on a shared machine
hits both alike; the figures are medians over `--steps` steps after
`--warmup` steps (graph compilation, allocator warm-up). Reports img/s of
each and the ratio MS/PT, then a per-layer-type breakdown: one representative
layer of each type (stem, depthwise stride 1 and 2, pointwise, BatchNorm,
ReLU6) timed alone in both frameworks, forward and forward+backward, so the
next bottleneck shows.

Timings belong in benchmarks like this one, never in tests. Compare ratios,
not absolute img/s, between runs on a shared machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ms_impl import weights as ms_weights
from parity.core import converter as convert
from pt_impl import weights as pt_weights
from parity.core import spec as mbv2_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m parity bench", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="threads for both frameworks (0: their defaults)")
    parser.add_argument("--fast-conv", choices=("auto", "on", "off"), default="auto",
                        help="MindSpore twin's 3x3 kernels (ms_impl/fast_conv.py)")
    parser.add_argument("--mode", choices=("graph", "pynative"), default="graph", help="MindSpore execution mode")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--skip-breakdown", action="store_true", help="only the whole-network figures")
    parser.add_argument("--weights", default="",
                        help="checkpoint (any layout parity.core.converter reads) loaded into both twins; "
                             "default: the PyTorch twin's init with BatchNorm statistics of the batch")
    return parser


def _median_seconds(run: Callable[[], None], steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _alternate(ms_run: Callable[[], None], pt_run: Callable[[], None], warmup: int, steps: int) -> Tuple[float, float]:
    """Median seconds of each, their steps interleaved (MS, PT, MS, PT, ...)."""
    for _ in range(warmup):
        ms_run()
        pt_run()
    ms_times: List[float] = []
    pt_times: List[float] = []
    for _ in range(steps):
        ms_times.append(_median_seconds(ms_run, 1))
        pt_times.append(_median_seconds(pt_run, 1))
    return statistics.median(ms_times), statistics.median(pt_times)


def _set_weights(pt_net, args: argparse.Namespace, images: np.ndarray) -> None:
    """`--weights` into the PyTorch twin, or its init with BatchNorm running statistics set to
    the statistics of `images` (as a trained network's would be: eval mode is then well scaled)."""
    import torch

    if args.weights:
        ckpt = convert.read_checkpoint(args.weights)
        tensors = convert.convert(ckpt, "torchvision", drop_head=ckpt.num_classes != args.num_classes).tensors
        pt_weights.load_into(pt_net, tensors, strict=False)
        return
    batch_norms = [m for m in pt_net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.momentum = 1.0  # running statistics := this batch's
    pt_net.train()
    with torch.no_grad():
        pt_net(torch.from_numpy(images))
    for bn in batch_norms:
        bn.momentum = mbv2_spec.BN_MOMENTUM_TORCH


def _whole_network(args: argparse.Namespace) -> List[Tuple[str, float, float]]:
    import mindspore as ms
    import torch
    from mindspore import nn as ms_nn

    from ms_impl.loss import smoothed_cross_entropy as ms_loss
    from ms_impl.mobilenetv2 import MobileNetV2 as MsNet
    from ms_impl.optim import build_optimizer as ms_optimizer
    from pt_impl.loss import smoothed_cross_entropy as pt_loss
    from pt_impl.mobilenetv2 import MobileNetV2 as PtNet
    from pt_impl.optim import build_optimizer as pt_optimizer

    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, args.image_size, args.image_size), dtype=np.float32)
    labels = rng.integers(0, args.num_classes, size=args.batch)
    lr = np.full(args.warmup * 2 + args.steps * 2 + 8, 0.01, dtype=np.float32)

    # Both twins carry the same, realistic weights: PyTorch's oneDNN kernels run several times
    # slower on some weight/activation values than on others, so twins with their own random
    # inits, or weights drifted apart by training, would not be compared on equal terms.
    pt_net = PtNet(num_classes=args.num_classes, width_mult=args.width)
    _set_weights(pt_net, args, images)
    ms_net = MsNet(num_classes=args.num_classes, width_mult=args.width, fast_conv=args.fast_conv)
    source = convert.checkpoint_from_state(pt_weights.state_of(pt_net), "torchvision", source="PyTorch twin")
    ms_weights.load_into(ms_net, convert.convert(source, "ms-official").tensors, strict=True)
    ms_x, ms_y = ms.Tensor(images), ms.Tensor(labels.astype(np.int32))
    pt_x, pt_y = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

    # Eval first, while the weights are identical.
    ms_net.set_train(False)
    pt_net.eval()

    def ms_eval() -> None:
        ms_net(ms_x).asnumpy()

    def pt_eval() -> None:
        with torch.inference_mode():
            pt_net(pt_x).numpy()

    evaluation = _alternate(ms_eval, pt_eval, args.warmup, args.steps)

    ms_net.set_train(True)
    ms_step = ms_nn.TrainOneStepCell(ms_nn.WithLossCell(ms_net, ms_loss(0.1)),
                                     ms_optimizer(ms_net.trainable_params(), lr))
    ms_step.set_train(True)
    pt_opt, _ = pt_optimizer(pt_net.named_parameters(), lr)
    pt_criterion = pt_loss(0.1)

    def ms_train() -> None:
        ms_step(ms_x, ms_y).asnumpy()

    def pt_train() -> None:
        pt_opt.zero_grad(set_to_none=True)
        loss = pt_criterion(pt_net(pt_x), pt_y)
        loss.backward()
        pt_opt.step()
        loss.item()

    pt_net.train()
    train = _alternate(ms_train, pt_train, args.warmup, args.steps)
    return [("train step", *train), ("eval forward", *evaluation)]


def _layer_cases(args: argparse.Namespace) -> List[Tuple[str, dict]]:
    """Representative layers of the twin at this width and image size: (label, layer description)."""
    spec = mbv2_spec.build_spec(args.width)
    stem = spec.stem
    s = args.image_size
    # Block 2 (first stride-2 depthwise, at 1/2 resolution) and block 3 (stride 1, at 1/4).
    dw2, dw1 = spec.blocks[1].depthwise, spec.blocks[2].depthwise
    expand = spec.blocks[1].expand
    mid = expand.out_channels
    half = (s - 1) // 2 + 1
    return [
        (f"stem 3x3 s2 {stem.in_channels}->{stem.out_channels} @{s}",
         dict(kind="conv", cin=stem.in_channels, cout=stem.out_channels, k=3, stride=2, groups=1, size=s)),
        (f"depthwise 3x3 s2 {dw2.in_channels} @{half}",
         dict(kind="conv", cin=dw2.in_channels, cout=dw2.in_channels, k=3, stride=2, groups=dw2.in_channels,
              size=half)),
        (f"depthwise 3x3 s1 {dw1.in_channels} @{(half - 1) // 2 + 1}",
         dict(kind="conv", cin=dw1.in_channels, cout=dw1.in_channels, k=3, stride=1, groups=dw1.in_channels,
              size=(half - 1) // 2 + 1)),
        (f"pointwise 1x1 {expand.in_channels}->{mid} @{half}",
         dict(kind="conv", cin=expand.in_channels, cout=mid, k=1, stride=1, groups=1, size=half)),
        (f"BatchNorm {mid} @{half} (train)", dict(kind="bn", cin=mid, size=half)),
        (f"ReLU6 {mid} @{half}", dict(kind="relu6", cin=mid, size=half)),
    ]


def _ms_layer(case: dict, fast_conv: str):
    from mindspore import nn

    from ms_impl.fast_conv import conv2d
    from ms_impl.mobilenetv2 import batch_norm

    if case["kind"] == "conv":
        return conv2d(case["cin"], case["cout"], case["k"], case["stride"], case["groups"], "HeNormal", fast_conv)
    if case["kind"] == "bn":
        return batch_norm(case["cin"])
    return nn.ReLU6()


def _ms_sum_of_output(layer):
    """A Cell computing layer(x).sum(): what the breakdown differentiates (graph mode compiles Cells)."""
    from mindspore import nn

    class SumOfOutput(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def construct(self, x):
            return self.layer(x).sum()

    return SumOfOutput()


def _pt_layer(case: dict):
    from torch import nn

    if case["kind"] == "conv":
        return nn.Conv2d(case["cin"], case["cout"], case["k"], case["stride"], padding=(case["k"] - 1) // 2,
                         groups=case["groups"], bias=False)
    if case["kind"] == "bn":
        return nn.BatchNorm2d(case["cin"])
    return nn.ReLU6()


def _breakdown(args: argparse.Namespace) -> List[Tuple[str, float, float, float, float]]:
    import mindspore as ms
    import torch

    rows = []
    rng = np.random.default_rng(1)
    for label, case in _layer_cases(args):
        x = rng.standard_normal((args.batch, case["cin"], case["size"], case["size"]), dtype=np.float32)
        ms_layer, pt_layer = _ms_layer(case, args.fast_conv), _pt_layer(case)
        ms_layer.set_train(True)
        pt_layer.train()
        ms_x = ms.Tensor(x)
        pt_x = torch.from_numpy(x).requires_grad_(True)
        weights = ms_layer.trainable_params()
        ms_grad = ms.value_and_grad(_ms_sum_of_output(ms_layer), grad_position=0,
                                    weights=weights if weights else None)

        def ms_fwd() -> None:
            ms_layer(ms_x).asnumpy()

        def ms_bwd() -> None:
            _, grads = ms_grad(ms_x)
            (grads[0] if isinstance(grads, tuple) else grads).asnumpy()

        def pt_fwd() -> None:
            with torch.no_grad():
                pt_layer(pt_x).numpy()

        def pt_bwd() -> None:
            pt_layer.zero_grad(set_to_none=True)
            pt_x.grad = None
            pt_layer(pt_x).sum().backward()
            pt_x.grad.numpy()

        warm, steps = max(1, args.warmup), max(1, min(args.steps, 5))
        fwd = _alternate(ms_fwd, pt_fwd, warm, steps)
        bwd = _alternate(ms_bwd, pt_bwd, warm, steps)
        rows.append((label, fwd[0] * 1e3, fwd[1] * 1e3, bwd[0] * 1e3, bwd[1] * 1e3))
    return rows


def _configure_threads(threads: int) -> None:
    if threads <= 0:
        return
    # Before mindspore/torch spin up their pools: oneDNN and OpenMP read these at start.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MBV2_KERNEL_THREADS"] = str(threads)
    import mindspore as ms
    import torch

    torch.set_num_threads(threads)
    ms.set_context(runtime_num_threads=threads)


def _load_average() -> str:
    # Other processes on a shared machine skew absolute figures (and, less, the ratios): say how busy it was.
    try:
        return "%.1f" % os.getloadavg()[0]
    except OSError:
        return "n/a"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch < 1 or args.image_size < 32 or args.steps < 1 or args.warmup < 0 or args.width <= 0:
        print("bench: --batch >= 1, --image-size >= 32, --steps >= 1, --warmup >= 0, --width > 0 required",
              file=sys.stderr)
        return 2
    os.environ.setdefault("GLOG_v", "3")
    _configure_threads(args.threads)
    import mindspore as ms
    import torch

    from ms_impl.fast_conv import resolve_fast_conv

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    kernels = resolve_fast_conv(args.fast_conv)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# parity bench, {stamp}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"mindspore {ms.__version__} ({args.mode}), torch {torch.__version__}, threads {args.threads or 'default'}, "
          f"load average {_load_average()}")
    print(f"# batch {args.batch}, {args.image_size}x{args.image_size}, width {args.width}, "
          f"median of {args.steps} after {args.warmup} warm-up; fast_conv={args.fast_conv} "
          f"(kernels {'on' if kernels else 'off'})")
    print()
    print("| measurement | MindSpore img/s | PyTorch img/s | MS/PT |")
    print("|---|---|---|---|")
    for label, ms_s, pt_s in _whole_network(args):
        print(f"| {label} | {args.batch / ms_s:.3g} | {args.batch / pt_s:.3g} | {pt_s / ms_s:.2f}x |", flush=True)
    if not args.skip_breakdown:
        print()
        print("| layer (batch %d) | MS fwd ms | PT fwd ms | MS fwd+bwd ms | PT fwd+bwd ms |" % args.batch)
        print("|---|---|---|---|---|")
        for label, mf, pf, mb, pb in _breakdown(args):
            print(f"| {label} | {mf:.1f} | {pf:.1f} | {mb:.1f} | {pb:.1f} |", flush=True)
    print(f"\n# load average at the end: {_load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
