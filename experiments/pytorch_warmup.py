"""PyTorch's CPU eval speed before and after one forward + backward in the process (the bench's warm-up).

    flock /tmp/heavy.lock python experiments/pytorch_warmup.py [--threads 2] [--batch 32]

The PyTorch twin in channels_last, batch 32 at 224 px, eval mode: img/s (median of 5 forwards after
1) with nothing run before, then after one eval-mode forward + backward (weights and BatchNorm
statistics untouched, gradients dropped), then once more. Found for issue 13: the bench's PyTorch
peers ran 2x slower than experiments/pytorch_alone.py, which trains another peer in the process first.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    import torch

    from pt_impl.mobilenetv2 import MobileNetV2

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((args.batch, 3, 224, 224), dtype=np.float32))
    x = x.contiguous(memory_format=torch.channels_last)
    net = MobileNetV2(num_classes=1000).to(memory_format=torch.channels_last).eval()

    def rate() -> float:
        times = []
        for i in range(6):
            start = time.perf_counter()
            with torch.inference_mode():
                net(x).numpy()
            if i >= 1:
                times.append(time.perf_counter() - start)
        return args.batch / float(np.median(times))

    print(f"channels_last eval, nothing run before: {rate():.1f} img/s")
    net(x).sum().backward()
    net.zero_grad(set_to_none=True)
    print(f"after one eval-mode forward + backward: {rate():.1f} img/s")
    print(f"once more: {rate():.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
