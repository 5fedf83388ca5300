"""The PyTorch peers of `python -m parity bench` in a process of their own (MindSpore never imported).

    flock /tmp/heavy.lock python experiments/pytorch_alone.py [--threads 2] [--steps 7] [--skip-compile] [--after-mindspore]

The bench times every peer in one process; this checks that PyTorch runs there as fast as alone
(MindSpore's runtime threads idle between its steps, but they exist). Same batch (32, 224 px, seed 0),
same loss and optimizer as the bench; BatchNorm running statistics set from the batch. Prints img/s,
median (range) over the steps, per peer, train and eval. `--after-mindspore`: first run one eval forward
of the MindSpore twin (GRAPH mode, the same batch shape) in this process, then time PyTorch as before.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--after-mindspore", action="store_true",
                        help="run a MindSpore twin forward in this process first (the bench's situation)")
    args = parser.parse_args()
    import torch

    from pt_impl.loss import smoothed_cross_entropy
    from pt_impl.mobilenetv2 import MobileNetV2
    from pt_impl.optim import build_optimizer

    if args.after_mindspore:
        import mindspore as ms

        from ms_impl.mobilenetv2 import MobileNetV2 as MindSporeTwin

        ms.set_device("CPU")
        ms.set_context(mode=ms.GRAPH_MODE)
        twin = MindSporeTwin(num_classes=1000)
        twin.set_train(False)
        twin(ms.Tensor(np.zeros((args.batch, 3, 224, 224), dtype=np.float32))).asnumpy()
    else:
        assert "mindspore" not in sys.modules  # the point of this script
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.standard_normal((args.batch, 3, 224, 224), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, 1000, size=args.batch))
    base = MobileNetV2(num_classes=1000)
    for module in base.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # one forward: running statistics = the batch's
    base.train()
    with torch.no_grad():
        base(images)
    for module in base.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1  # back to the twin's, as the bench trains with it
    peers = {"PyTorch NCHW eager": (base, images, False),
             "PyTorch channels_last eager": (copy.deepcopy(base).to(memory_format=torch.channels_last),
                                             images.contiguous(memory_format=torch.channels_last), False)}
    if not args.skip_compile:
        peers["PyTorch channels_last + torch.compile"] = (copy.deepcopy(base).to(memory_format=torch.channels_last),
                                                          images.contiguous(memory_format=torch.channels_last), True)
    lr = np.full(1000, 0.01, dtype=np.float32)
    print(f"# PyTorch {'after a MindSpore twin forward in this process' if args.after_mindspore else 'alone'}, torch {torch.__version__}, threads {args.threads}, batch {args.batch}, 224 px, "
          f"median (range) of {args.steps} steps after {args.warmup}")
    for name, (net, x, compiled) in peers.items():
        model = torch.compile(net) if compiled else net
        rates = {}
        net.eval()
        times = []
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            with torch.inference_mode():
                model(x).numpy()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        rates["eval"] = times
        net.train()
        optimizer, _ = build_optimizer(net.named_parameters(), lr)
        criterion = smoothed_cross_entropy(0.1)
        times = []
        for i in range(args.warmup + args.steps):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), labels)
            loss.backward()
            optimizer.step()
            loss.item()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        rates["train"] = times
        cells = [f"{what} {args.batch / statistics.median(t):.3g} ({args.batch / max(t):.3g}-{args.batch / min(t):.3g})"
                 for what, t in (("train", rates["train"]), ("eval", rates["eval"]))]
        print(f"{name}: " + ", ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
