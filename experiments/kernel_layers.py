"""The kernels of the frozen-BatchNorm training step's 17 blocks, timed on their own per layer (batch 32, 224 px).

    flock /tmp/heavy.lock python experiments/kernel_layers.py [--batch 32] [--reps 5]

Calls our kernel entry points as MindSpore does (`fast_conv.call_entry_point`, the
library built for this checkout), with buffers allocated once, 2 threads; prints the
median ms per layer and kernel with GFLOP/s for the 1x1 products, then the totals per
kind. Not timed: the stem, the first block's depthwise layer, the last 1x1 layer and the
head. Each block's expansion + depthwise pair is timed both ways the library offers,
alternating, so load hits both alike: separately (the expansion's 1x1 forward with bias +
ReLU6, `dw_forward_bias_relu6`, `dw_bias_relu6_grad` + `bias_relu6_grad`) and with the
expansion's bias and ReLU6 inside the depthwise kernels (the plain 1x1 forward
`pw_forward_s1`, `dw_forward_relu6_input`, `dw_relu6_input_grad`); the expansion's 1x1
input and weight gradients are the same both ways. Used for issue 13 (docs/design.md, section 7).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5, help="timed calls per kernel (median)")
    args = parser.parse_args()
    os.environ["MBV2_KERNEL_THREADS"] = "2"
    from ms_impl.fast_conv import call_entry_point, kernel_library
    from parity.core.spec import build_spec

    library = ctypes.CDLL(str(kernel_library()))
    rng = np.random.default_rng(0)
    n = args.batch
    totals: collections.Counter = collections.Counter()

    def timed(name, arrays, outputs=1):
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            status, _ = call_entry_point(library, name, arrays, outputs=outputs)
            times.append(time.perf_counter() - start)
            if status != 0:
                raise SystemExit(f"{name} failed")
        return 1000 * float(np.median(times))

    def array(*shape, low=None, high=None):
        if low is None:
            return rng.standard_normal(shape).astype(np.float32)
        return rng.uniform(low, high, shape).astype(np.float32)

    def pointwise(k, m, hw, relu6, label):
        x, w, b = array(n, k, hw, hw), array(m, k, 1, 1) * 0.1, array(m)
        y, dy, dx, dw = array(n, m, hw, hw), array(n, m, hw, hw), np.zeros((n, k, hw, hw), np.float32), np.zeros((m, k, 1, 1), np.float32)
        times = {"1x1 forward": timed("pw_forward_bias_relu6_s1" if relu6 else "pw_forward_bias_s1", [x, w, b, y]),
                 "1x1 input grad": timed("pw_grad_input_s1", [dy, w, x, dx]),
                 "1x1 weight grad": timed("pw_grad_weight_s1", [x, dy, dw])}
        if not relu6:
            times["bias grad"] = timed("bias_grad", [dy, np.zeros(m, np.float32)])
        flops = 2.0 * n * hw * hw * k * m / 1e9
        print(f"{label:30s} " + "  ".join(f"{kind} {ms:6.1f}" + (f" ({flops / ms * 1e3:5.1f} GF/s)" if kind.startswith("1x1") else "")
                                          for kind, ms in times.items()))
        totals.update(times)

    def expansion_and_depthwise(k, c, hw, stride, label):
        out = (hw - 1) // stride + 1
        z, a, w, b = array(n, c, hw, hw) * 3 + 2, array(c, low=-1, high=3), array(c, 1, 3, 3), array(c, low=-1, high=4)
        x = np.clip(z + a[None, :, None, None], 0, 6).astype(np.float32)
        y, dy = np.zeros((n, c, out, out), np.float32), array(n, c, out, out)
        dx, dz, dw, db, da = np.zeros_like(x), np.zeros_like(x), np.zeros_like(w), np.zeros(c, np.float32), np.zeros(c, np.float32)
        separate, moved = collections.Counter(), collections.Counter()
        x_in, w_in, product = array(n, k, hw, hw), array(c, k, 1, 1) * 0.1, np.zeros((n, c, hw, hw), np.float32)
        for _ in range(2):  # alternate the two ways
            separate["expansion forward"] += timed("pw_forward_bias_relu6_s1", [x_in, w_in, a, product]) / 2
            moved["expansion forward"] += timed("pw_forward_s1", [x_in, w_in, product]) / 2
            separate["depthwise forward"] += timed(f"dw_forward_bias_relu6_s{stride}", [x, w, b, y]) / 2
            moved["depthwise forward"] += timed(f"dw_forward_relu6_input_s{stride}", [z, a, w, b, y]) / 2
            separate["depthwise backward"] += timed(f"dw_bias_relu6_grad_s{stride}", [dy, y, x, w, dx, dw, db], 3) / 2
            separate["expansion bias+ReLU6 grad"] += timed("bias_relu6_grad", [dx, x, dz, da], 2) / 2
            moved["depthwise backward"] += timed(f"dw_relu6_input_grad_s{stride}", [dy, y, z, a, w, dz, dw, db, da], 4) / 2
        print(f"{label:30s} separate: " + ", ".join(f"{k} {v:.1f}" for k, v in separate.items())
              + f" (backward {separate['depthwise backward'] + separate['expansion bias+ReLU6 grad']:.1f});"
              + " moved in: " + ", ".join(f"{k} {v:.1f}" for k, v in moved.items()))
        totals.update({f"separate: {k}": v for k, v in separate.items()})
        totals.update({f"moved in: {k}": v for k, v in moved.items()})

    spec = build_spec(1.0, 8, None)
    hw = 112
    for index, block in enumerate(spec.blocks, start=1):
        if block.expand is not None:
            pointwise(block.in_channels, block.hidden_channels, hw, True, f"block {index} expand {block.in_channels}->{block.hidden_channels}@{hw}")
            expansion_and_depthwise(block.in_channels, block.hidden_channels, hw, block.depthwise.stride, f"block {index} depthwise {block.hidden_channels}@{hw}/s{block.depthwise.stride}")
        hw = (hw - 1) // block.depthwise.stride + 1
        pointwise(block.hidden_channels, block.out_channels, hw, False, f"block {index} project {block.hidden_channels}->{block.out_channels}@{hw}")
    print("totals, ms (not timed: the stem, the first block's depthwise layer, the last 1x1 layer, the head):")
    for kind, value in sorted(totals.items()):
        print(f"  {kind:45s} {value:7.1f}")


if __name__ == "__main__":
    main()
