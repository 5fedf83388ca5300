"""`python -m parity bench`: the MindSpore twin against PyTorch at its best and ONNX Runtime, in one process.

Peers, all with the same weights and the same random batch:

- PyTorch twin, NCHW eager (PyTorch's default);
- PyTorch twin, channels_last eager (the one-line switch a CPU user makes);
- PyTorch twin, channels_last + `torch.compile` (inductor; its compile time is
  reported separately, and the peer is skipped with the reason where it fails);
- ONNX Runtime (eval only) on the project's ONNX export of the same weights
  (`ms_impl/export.py`, MindSpore twin with its own convolutions); needs the
  optional `onnxruntime` package, skipped with the reason without it;
- the MindSpore twin (`--fast-conv`, `--mode`), and the same twin on
  MindSpore's own kernels (`fast_conv` off: the "before" of our kernels, same
  run; left out when the twin itself runs with them off).

Times a training step (forward + backward + Momentum update, smoothed cross
entropy) and an eval forward. Steps of all peers are interleaved (A, B, C, A,
B, C, ...), so load from other processes on a shared machine hits all alike.
Each figure is the median over `--steps` steps after `--warmup` steps, with
the range (slowest-fastest step) beside it; the first call of each peer
(graph compilation, `torch.compile`) is reported on its own. Then the
MindSpore twin's ratio to the best PyTorch peer and to ONNX Runtime, and a
per-layer-type breakdown: one representative layer of each type timed alone,
forward and forward+backward, in MindSpore and in PyTorch NCHW and
channels_last, so the next bottleneck shows.

Timings belong in benchmarks like this one, never in tests. Compare ratios,
not absolute img/s, between runs on a shared machine.
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ms_impl import weights as ms_weights
from parity.core import converter as convert
from parity.core import spec as mbv2_spec
from parity.core.files import one_line
from pt_impl import weights as pt_weights

PT_NCHW, PT_CHANNELS_LAST, PT_COMPILED = "PyTorch NCHW eager", "PyTorch channels_last eager", \
    "PyTorch channels_last + torch.compile"
ORT = "ONNX Runtime (project's ONNX export)"
MS_TWIN = "MindSpore twin"
MS_UNFOLDED = "MindSpore twin, eval BN not folded"  # eval as before the folding: what it gains, same run
# The twin on MindSpore's own CPU kernels: where it stood before ms_impl/fast_conv.py, measured in the same run.
MS_OWN_KERNELS = "MindSpore twin, MindSpore's own kernels (fast_conv off)"
PYTORCH_PEERS = (PT_NCHW, PT_CHANNELS_LAST, PT_COMPILED)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m parity bench", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--image-size", type=int, default=224, help="input height and width")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median and range)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one is reported)")
    parser.add_argument("--threads", type=int, default=0, help="threads for every peer (0: their defaults)")
    parser.add_argument("--fast-conv", choices=("auto", "on", "off"), default="auto",
                        help="MindSpore twin's 3x3 kernels (ms_impl/fast_conv.py)")
    parser.add_argument("--mode", choices=("graph", "pynative"), default="graph", help="MindSpore execution mode")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the head")
    parser.add_argument("--skip-breakdown", action="store_true", help="only the whole-network figures")
    parser.add_argument("--skip-compile", action="store_true",
                        help="leave out the torch.compile peer (its compile takes minutes on a small machine)")
    parser.add_argument("--skip-train", action="store_true", help="only the eval forward of the whole network")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled peer (inductor: PyTorch's best on CPU)")
    parser.add_argument("--data-path", default="",
                        help="also time the trainer's training data pipeline alone (decode, augment, batch; "
                             "one epoch of <data-path>/train at --image-size and --batch, configs/garbage26_cpu.yaml "
                             "workers): the img/s it can feed a training step")
    parser.add_argument("--kernels-baseline", default="",
                        help="instead of the networks: time our kernel entry points alone (called as MindSpore "
                             "calls them), this library against a baseline build of them, e.g. an older "
                             "conv3x3.cc built with the flags of ms_impl/fast_conv.py; steps interleaved")
    parser.add_argument("--weights", default="",
                        help="checkpoint (any layout parity.core.converter reads) loaded into every peer; "
                             "default: the PyTorch twin's init with BatchNorm statistics of the batch")
    return parser


@dataclass
class Timing:
    """One peer's timings of one measurement (seconds per step)."""

    first_call: float = 0.0
    steps: List[float] = field(default_factory=list)
    skipped: str = ""  # the reason, when the peer could not run

    def rate(self, batch: int) -> float:
        return batch / statistics.median(self.steps)

    def cell(self, batch: int) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        return f"{self.rate(batch):.3g} ({batch / max(self.steps):.3g}-{batch / min(self.steps):.3g})"


def _interleave(runs: Dict[str, Callable[[], None]], warmup: int, steps: int) -> Dict[str, Timing]:
    """Times every run, their steps interleaved; a run that raises is skipped with its reason."""
    timings = {name: Timing() for name in runs}
    active = dict(runs)
    for round_index in range(max(1, warmup) + steps):
        for name, run in list(active.items()):
            start = time.perf_counter()
            try:
                run()
            except Exception as exc:  # a peer that cannot run here (compiler, export, runtime) is reported, not fatal
                timings[name].skipped = one_line(exc)
                del active[name]
                continue
            elapsed = time.perf_counter() - start
            if round_index == 0:
                timings[name].first_call = elapsed
            elif round_index >= max(1, warmup):
                timings[name].steps.append(elapsed)
    return timings


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


def _onnx_session(ms_tensors: dict, args: argparse.Namespace, folder: str):
    """ONNX Runtime on the project's ONNX export of these weights (MindSpore twin, its own convolutions)."""
    import onnxruntime  # optional: pip install onnxruntime

    from ms_impl.export import export_model
    from ms_impl.mobilenetv2 import MobileNetV2 as MsNet

    net = MsNet(num_classes=args.num_classes, width_mult=args.width, fast_conv="off")
    ms_weights.load_into(net, ms_tensors, strict=True)
    net.set_train(False)
    path = export_model(net, os.path.join(folder, "bench.onnx"), "ONNX", args.image_size, args.batch)
    options = onnxruntime.SessionOptions()
    if args.threads > 0:
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def _whole_network(args: argparse.Namespace) -> Tuple[Dict[str, Timing], Dict[str, Timing]]:
    """(train timings, eval timings) of every peer."""
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
    lr = np.full(4 * (args.warmup + args.steps) + 8, 0.01, dtype=np.float32)

    # Every peer carries the same, realistic weights: PyTorch's oneDNN kernels run several times
    # slower on some weight/activation values than on others, so peers with their own random
    # inits, or weights drifted apart by training, would not be compared on equal terms.
    pt_net = PtNet(num_classes=args.num_classes, width_mult=args.width)
    _set_weights(pt_net, args, images)
    ms_net = MsNet(num_classes=args.num_classes, width_mult=args.width, fast_conv=args.fast_conv)
    source = convert.checkpoint_from_state(pt_weights.state_of(pt_net), "torchvision", source="PyTorch twin")
    ms_tensors = convert.convert(source, "ms-official").tensors
    ms_weights.load_into(ms_net, ms_tensors, strict=True)
    ms_x, ms_y = ms.Tensor(images), ms.Tensor(labels.astype(np.int32))
    pt_x, pt_y = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    cl_x = pt_x.contiguous(memory_format=torch.channels_last)

    pt_nets = {PT_NCHW: pt_net}
    pt_nets[PT_CHANNELS_LAST] = copy.deepcopy(pt_net).to(memory_format=torch.channels_last)
    if not args.skip_compile:
        pt_nets[PT_COMPILED] = copy.deepcopy(pt_net).to(memory_format=torch.channels_last)
    pt_inputs = {PT_NCHW: pt_x, PT_CHANNELS_LAST: cl_x, PT_COMPILED: cl_x}
    # One compiled callable per mode: train and eval graphs differ (BatchNorm), so each compiles once.
    compiled = {name: (torch.compile(net, backend=args.compile_backend) if name == PT_COMPILED else net)
                for name, net in pt_nets.items()}

    def pt_eval(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                compiled[name](pt_inputs[name]).numpy()
        return run

    def ms_eval() -> None:
        ms_net(ms_x).asnumpy()

    # The same twin with the BatchNorm folding of eval mode switched off (ms_impl/mobilenetv2.py ConvBNReLU).
    from ms_impl.fast_conv import FastBatchNorm2d
    from ms_impl.mobilenetv2 import ConvBNReLU

    unfolded = MsNet(num_classes=args.num_classes, width_mult=args.width, fast_conv=args.fast_conv)
    ms_weights.load_into(unfolded, ms_tensors, strict=True)
    folding = [cell for _, cell in unfolded.cells_and_names() if isinstance(cell, ConvBNReLU) and cell.fold_bn]
    for cell in folding:
        cell.fold_bn = False
    unfolded.set_train(False)
    own_kernels = None
    if folding or any(isinstance(cell, FastBatchNorm2d) for _, cell in ms_net.cells_and_names()):
        own_kernels = MsNet(num_classes=args.num_classes, width_mult=args.width, fast_conv="off")
        ms_weights.load_into(own_kernels, ms_tensors, strict=True)
        own_kernels.set_train(False)

    # Eval first, while the weights are identical.
    ms_net.set_train(False)
    for net in pt_nets.values():
        net.eval()
    eval_runs: Dict[str, Callable[[], None]] = {name: pt_eval(name) for name in pt_nets}
    with tempfile.TemporaryDirectory(prefix="parity-bench-") as folder:
        try:
            session, input_name = _onnx_session(ms_tensors, args, folder)
            eval_runs[ORT] = lambda: session.run(None, {input_name: images})
        except Exception as exc:  # optional peer: missing package or failed export is reported
            ort_skipped = one_line(exc)
        else:
            ort_skipped = ""
        eval_runs[MS_TWIN] = ms_eval
        if folding:
            eval_runs[MS_UNFOLDED] = lambda: unfolded(ms_x).asnumpy()
        if own_kernels is not None:
            eval_runs[MS_OWN_KERNELS] = lambda: own_kernels(ms_x).asnumpy()
        evaluation = _interleave(eval_runs, args.warmup, args.steps)
    if not folding:
        evaluation[MS_UNFOLDED] = Timing(skipped="nothing folded (kernels off)")
    if own_kernels is None:
        evaluation[MS_OWN_KERNELS] = Timing(skipped="the twin above runs on them")
    if ort_skipped:
        evaluation[ORT] = Timing(skipped=ort_skipped)
    if args.skip_compile:
        evaluation[PT_COMPILED] = Timing(skipped="--skip-compile")

    if args.skip_train:
        return {name: Timing(skipped="--skip-train") for name in evaluation}, evaluation

    def ms_train_step(net):
        net.set_train(True)
        step = ms_nn.TrainOneStepCell(ms_nn.WithLossCell(net, ms_loss(0.1)), ms_optimizer(net.trainable_params(), lr))
        step.set_train(True)
        return lambda: step(ms_x, ms_y).asnumpy()

    pt_criterion = pt_loss(0.1)

    def pt_train(name: str) -> Callable[[], None]:
        net = pt_nets[name]
        net.train()
        optimizer, _ = pt_optimizer(net.named_parameters(), lr)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = pt_criterion(compiled[name](pt_inputs[name]), pt_y)
            loss.backward()
            optimizer.step()
            loss.item()
        return run

    train_runs: Dict[str, Callable[[], None]] = {name: pt_train(name) for name in pt_nets}
    train_runs[MS_TWIN] = ms_train_step(ms_net)
    if own_kernels is not None:
        train_runs[MS_OWN_KERNELS] = ms_train_step(own_kernels)
    train = _interleave(train_runs, args.warmup, args.steps)
    if own_kernels is None:
        train[MS_OWN_KERNELS] = Timing(skipped="the twin above runs on them")
    if args.skip_compile:
        train[PT_COMPILED] = Timing(skipped="--skip-compile")
    train[ORT] = Timing(skipped="inference only")
    train[MS_UNFOLDED] = Timing(skipped="training never folds")
    return train, evaluation


def _best_pytorch(timings: Dict[str, Timing], batch: int) -> Optional[str]:
    ran = [name for name in PYTORCH_PEERS if name in timings and not timings[name].skipped]
    return max(ran, key=lambda name: timings[name].rate(batch)) if ran else None


def _ratio_line(what: str, timings: Dict[str, Timing], batch: int) -> str:
    ms = timings[MS_TWIN]
    if ms.skipped:
        return f"- {what}: MindSpore twin skipped ({ms.skipped})"
    parts = []
    best = _best_pytorch(timings, batch)
    if best:
        parts.append(f"{ms.rate(batch) / timings[best].rate(batch):.2f}x the best PyTorch peer ({best})")
    ort = timings.get(ORT)
    if ort is not None and not ort.skipped:
        parts.append(f"{ms.rate(batch) / ort.rate(batch):.2f}x ONNX Runtime")
    unfolded = timings.get(MS_UNFOLDED)
    if unfolded is not None and not unfolded.skipped:
        parts.append(f"{ms.rate(batch) / unfolded.rate(batch):.2f}x itself without the BN folding")
    own = timings.get(MS_OWN_KERNELS)
    if own is not None and not own.skipped:
        parts.append(f"{ms.rate(batch) / own.rate(batch):.2f}x itself on MindSpore's own kernels")
    return f"- {what}: MindSpore twin " + ", ".join(parts or ["(no peer ran)"])


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
        (f"BatchNorm + ReLU6 {mid} @{half} (train)", dict(kind="bn_relu6", cin=mid, size=half)),
        (f"ReLU6 {mid} @{half}", dict(kind="relu6", cin=mid, size=half)),
    ]


def _ms_layer(case: dict, fast_conv: str):
    from mindspore import nn

    from ms_impl.fast_conv import conv2d
    from ms_impl.mobilenetv2 import batch_norm

    if case["kind"] == "conv":
        return conv2d(case["cin"], case["cout"], case["k"], case["stride"], case["groups"], "HeNormal", fast_conv)
    if case["kind"] == "bn":
        return batch_norm(case["cin"], fast_conv)
    if case["kind"] == "bn_relu6":
        return _BatchNormReLU6(batch_norm(case["cin"], fast_conv))
    return nn.ReLU6()


def _BatchNormReLU6(bn):  # noqa: N802 (a Cell factory)
    """BN + ReLU6 as the twin's ConvBNReLU computes them: one fused kernel with our BatchNorm, else two ops."""
    from mindspore import nn

    from ms_impl.fast_conv import FastBatchNorm2d

    class BatchNormReLU6(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.bn = bn
            self.relu6 = nn.ReLU6()
            self.fused = isinstance(bn, FastBatchNorm2d)

        def construct(self, x):
            if self.fused:
                return self.bn.relu6(x)
            return self.relu6(self.bn(x))

    return BatchNormReLU6()


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
    if case["kind"] == "bn_relu6":
        return nn.Sequential(nn.BatchNorm2d(case["cin"]), nn.ReLU6())
    return nn.ReLU6()


def _breakdown(args: argparse.Namespace) -> List[Tuple[str, Dict[str, Tuple[Timing, Timing]]]]:
    """Per layer: {peer: (forward, forward+backward timings)} for MindSpore, PyTorch NCHW and channels_last."""
    import mindspore as ms
    import torch

    rows = []
    rng = np.random.default_rng(1)
    for label, case in _layer_cases(args):
        x = rng.standard_normal((args.batch, case["cin"], case["size"], case["size"]), dtype=np.float32)
        ms_layer = _ms_layer(case, args.fast_conv)
        ms_layer.set_train(True)
        ms_x = ms.Tensor(x)
        weights = ms_layer.trainable_params()
        ms_grad = ms.value_and_grad(_ms_sum_of_output(ms_layer), grad_position=0,
                                    weights=weights if weights else None)

        def ms_fwd() -> None:
            ms_layer(ms_x).asnumpy()

        def ms_bwd() -> None:
            _, grads = ms_grad(ms_x)
            (grads[0] if isinstance(grads, tuple) else grads).asnumpy()

        fwd_runs, bwd_runs = {"MS": ms_fwd}, {"MS": ms_bwd}
        for peer, layout in (("NCHW", torch.contiguous_format), ("CL", torch.channels_last)):
            pt_layer = _pt_layer(case).to(memory_format=layout).train()
            pt_x = torch.from_numpy(x).contiguous(memory_format=layout).requires_grad_(True)

            def pt_fwd(layer=pt_layer, inputs=pt_x) -> None:
                with torch.no_grad():
                    layer(inputs).numpy()

            def pt_bwd(layer=pt_layer, inputs=pt_x) -> None:
                layer.zero_grad(set_to_none=True)
                inputs.grad = None
                layer(inputs).sum().backward()
                inputs.grad.numpy()

            fwd_runs[peer], bwd_runs[peer] = pt_fwd, pt_bwd
        steps = max(1, min(args.steps, 5))
        fwd = _interleave(fwd_runs, args.warmup, steps)
        bwd = _interleave(bwd_runs, args.warmup, steps)
        rows.append((label, {peer: (fwd[peer], bwd[peer]) for peer in fwd_runs}))
    return rows


def _milliseconds(timing: Timing) -> str:
    """Median ms of a breakdown cell, or the reason it did not run (one failing layer does not end the table)."""
    if timing.skipped or not timing.steps:
        return f"failed: {timing.skipped or 'no step'}"
    return f"{statistics.median(timing.steps) * 1e3:.3g}"


def _data_pipeline(args: argparse.Namespace) -> Tuple[float, int, int]:
    """(img/s, images, workers) of one epoch of the trainer's training pipeline, no network attached."""
    from ms_impl.trainer import dataset
    from ms_impl.trainer.config import load_config

    cfg = load_config(["--device", "CPU", "--data_path", args.data_path, "--batch_size", str(args.batch)])
    train = dataset.scan_split(args.data_path, "train", [c.name for c in cfg.classes])
    batches = dataset.train_dataset(train, cfg, args.image_size, epoch=0)
    images = 0
    start = time.perf_counter()
    for image, _ in batches.create_tuple_iterator(output_numpy=True, num_epochs=1):
        images += image.shape[0]
    return images / (time.perf_counter() - start), images, dataset.worker_count(cfg.num_workers)


def kernel_cases(batch: int) -> List[Tuple[str, str, Tuple[int, ...], Tuple[int, ...], int]]:
    """(label, entry point, x shape, w shape, stride): small late layers at batch 1, large early ones at `batch`."""
    return [
        ("depthwise fwd s1 960@7, batch 1", "dw_forward_s1", (1, 960, 7, 7), (960, 1, 3, 3), 1),
        ("depthwise fwd s2 144@56, batch 1", "dw_forward_s2", (1, 144, 56, 56), (144, 1, 3, 3), 2),
        (f"depthwise fwd s2 96@112, batch {batch}", "dw_forward_s2", (batch, 96, 112, 112), (96, 1, 3, 3), 2),
        (f"depthwise grad weight s2 96@112, batch {batch}", "dw_grad_weight_s2", (batch, 96, 112, 112),
         (96, 1, 3, 3), 2),
        (f"depthwise grad weight s1 144@56, batch {batch}", "dw_grad_weight_s1", (batch, 144, 56, 56),
         (144, 1, 3, 3), 1),
        (f"depthwise grad weight s1 576@14, batch {batch}", "dw_grad_weight_s1", (batch, 576, 14, 14),
         (576, 1, 3, 3), 1),
        (f"stem fwd s2 3->32@224, batch {batch}", "dense_forward_s2", (batch, 3, 224, 224), (32, 3, 3, 3), 2),
        (f"stem grad weight s2 3->32@224, batch {batch}", "dense_grad_weight_s2", (batch, 3, 224, 224),
         (32, 3, 3, 3), 2),
    ]


def _kernels_against_baseline(args: argparse.Namespace) -> List[Tuple[str, Timing, Timing]]:
    """(label, this library's timing, the baseline's) per kernel case; outputs compared first."""
    import ctypes

    from ms_impl.fast_conv import call_entry_point, kernel_library, kernel_threads

    libraries = {"current": ctypes.CDLL(str(kernel_library())), "baseline": ctypes.CDLL(args.kernels_baseline)}
    libraries["current"].mbv2_set_threads(kernel_threads())  # the baseline reads MBV2_KERNEL_THREADS itself
    rng = np.random.default_rng(2)
    rows = []
    for label, name, x_shape, w_shape, stride in kernel_cases(args.batch):
        x = rng.standard_normal(x_shape, dtype=np.float32)
        out_shape = (x_shape[0], w_shape[0], (x_shape[2] - 1) // stride + 1, (x_shape[3] - 1) // stride + 1)
        second = rng.standard_normal(out_shape, dtype=np.float32) if "grad_weight" in name else \
            rng.standard_normal(w_shape, dtype=np.float32)
        result_shape = w_shape if "grad_weight" in name else out_shape
        outputs = {}
        repeats = 50 if x_shape[0] == 1 else 1  # the small cases take well under a millisecond

        def run(library, key: str) -> None:
            for _ in range(repeats):
                status, outputs[key] = call_entry_point(library, name, [x, second, np.zeros(result_shape)])
                if status != 0:
                    raise RuntimeError(f"{name} returned {status}")

        timings = _interleave({key: functools.partial(run, lib, key) for key, lib in libraries.items()},
                              args.warmup, args.steps)
        worst = float(np.abs(outputs["current"] - outputs["baseline"]).max() / max(np.abs(outputs["baseline"]).max(), 1e-12))
        for timing in timings.values():
            timing.steps = [t / repeats for t in timing.steps]
        rows.append((f"{label} (outputs differ by {worst:.1e} relative)", timings["current"], timings["baseline"]))
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
        print("error: options: --batch >= 1, --image-size >= 32, --steps >= 1, --warmup >= 0, --width > 0 required",
              file=sys.stderr)
        return 2
    os.environ.setdefault("GLOG_v", "3")
    _configure_threads(args.threads)
    import mindspore as ms
    import torch

    from ms_impl.fast_conv import resolve_fast_conv

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    if args.kernels_baseline:
        if not os.path.isfile(args.kernels_baseline):
            print(f"error: --kernels-baseline: {args.kernels_baseline} is not a file", file=sys.stderr)
            return 2
        resolve_fast_conv("on")
        print(f"# our kernels alone, {platform.machine()} {os.cpu_count()} CPUs, this library vs "
              f"{args.kernels_baseline}, median (range) of {args.steps} interleaved steps, load average {_load_average()}")
        print("\n| kernel | this library ms | baseline ms | speed-up |\n|---|---|---|---|")
        for label, current, baseline in _kernels_against_baseline(args):
            now, before = statistics.median(current.steps), statistics.median(baseline.steps)
            print(f"| {label} | {now * 1e3:.3g} ({min(current.steps) * 1e3:.3g}-{max(current.steps) * 1e3:.3g}) | "
                  f"{before * 1e3:.3g} ({min(baseline.steps) * 1e3:.3g}-{max(baseline.steps) * 1e3:.3g}) | "
                  f"{before / now:.2f}x |", flush=True)
        return 0
    kernels = resolve_fast_conv(args.fast_conv)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# parity bench, {stamp}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"mindspore {ms.__version__} ({args.mode}), torch {torch.__version__}, threads {args.threads or 'default'}, "
          f"load average {_load_average()}")
    print(f"# batch {args.batch}, {args.image_size}x{args.image_size}, width {args.width}, "
          f"median (range) of {args.steps} interleaved steps after {args.warmup} warm-up; "
          f"MindSpore twin: fast_conv={args.fast_conv} (kernels {'on' if kernels else 'off'})")
    print()
    train, evaluation = _whole_network(args)
    print("| peer | train img/s | eval img/s | first call s (train / eval) |")
    print("|---|---|---|---|")
    for name in (*PYTORCH_PEERS, ORT, MS_TWIN, MS_OWN_KERNELS, MS_UNFOLDED):
        first = " / ".join(f"{t.first_call:.1f}" if not t.skipped and t.steps else "-"
                           for t in (train[name], evaluation[name]))
        print(f"| {name} | {train[name].cell(args.batch)} | {evaluation[name].cell(args.batch)} | {first} |")
    print()
    print(_ratio_line("train step", train, args.batch))
    print(_ratio_line("eval forward", evaluation, args.batch), flush=True)
    if not args.skip_breakdown:
        print()
        print(f"| layer (batch {args.batch}) | MS fwd ms | PT NCHW fwd | PT CL fwd | MS fwd+bwd ms | PT NCHW fwd+bwd "
              "| PT CL fwd+bwd |")
        print("|---|---|---|---|---|---|---|")
        for label, cells in _breakdown(args):
            fwd = " | ".join(_milliseconds(cells[peer][0]) for peer in ("MS", "NCHW", "CL"))
            bwd = " | ".join(_milliseconds(cells[peer][1]) for peer in ("MS", "NCHW", "CL"))
            print(f"| {label} | {fwd} | {bwd} |", flush=True)
    if args.data_path:
        rate, images, workers = _data_pipeline(args)
        print(f"\ntraining data pipeline alone ({args.data_path}/train, {images} images, {workers} workers, "
              f"{args.image_size} px, batch {args.batch}): {rate:.3g} img/s")
    print(f"\n# load average at the end: {_load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
