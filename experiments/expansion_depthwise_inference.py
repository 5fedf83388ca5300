"""Inference of each block's expansion + depthwise pair: two kernels, or one pass, timed per layer, alternating.

    flock /tmp/heavy.lock python experiments/expansion_depthwise_inference.py [--batch 32] [--reps 7]

For the 16 blocks with an expansion (1.0x, 224 px), calls our kernel entry points as
MindSpore does (`fast_conv.call_entry_point`, the library built for this checkout, 2
threads, buffers allocated once): the two kernels of the folded pair
(`pw_forward_bias_relu6_s1`, then `dw_forward_bias_relu6_s{1,2}`: the expansion's output
written and read back) against the one pass (`pw_dw_forward_s{1,2}`: the expansion
computed a band of rows at a time, never stored), alternating call by call so load
hits both alike; checks that both give the same output bit for bit, and prints the
median ms per block and the totals. Used for issue 13 (docs/design.md, section 7).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7, help="timed calls of each form per block (median)")
    args = parser.parse_args()
    os.environ["MBV2_KERNEL_THREADS"] = "2"
    from ms_impl.fast_conv import call_entry_point, kernel_library
    from parity.core.spec import build_spec

    library = ctypes.CDLL(str(kernel_library()))
    rng = np.random.default_rng(0)
    n, size = args.batch, 112  # the stem halves 224
    totals = {"two kernels": 0.0, "one pass": 0.0}
    for index, block in enumerate(build_spec(1.0).blocks, start=1):
        stride = block.depthwise.stride
        if block.expand is None:
            size = (size - 1) // stride + 1
            continue
        k, m, out = block.in_channels, block.hidden_channels, (size - 1) // stride + 1
        x = rng.standard_normal((n, k, size, size)).astype(np.float32)
        expand_weight = (rng.standard_normal((m, k, 1, 1)) * 2 / np.sqrt(k)).astype(np.float32)
        expand_bias, bias = rng.uniform(-1, 3, m).astype(np.float32), rng.uniform(-1, 3, m).astype(np.float32)
        weight = rng.standard_normal((m, 1, 3, 3)).astype(np.float32)
        expanded = np.zeros((n, m, size, size), np.float32)
        separate, fused = np.zeros((n, m, out, out), np.float32), np.zeros((n, m, out, out), np.float32)
        times = {"two kernels": [], "one pass": []}
        for _ in range(args.reps):
            start = time.perf_counter()
            status = call_entry_point(library, "pw_forward_bias_relu6_s1", [x, expand_weight, expand_bias, expanded])[0]
            status |= call_entry_point(library, f"dw_forward_bias_relu6_s{stride}", [expanded, weight, bias, separate])[0]
            times["two kernels"].append(time.perf_counter() - start)
            start = time.perf_counter()
            status |= call_entry_point(library, f"pw_dw_forward_s{stride}",
                                       [x, expand_weight, expand_bias, weight, bias, fused])[0]
            times["one pass"].append(time.perf_counter() - start)
            if status != 0:
                raise SystemExit(f"block {index}: a kernel failed")
        if not np.array_equal(separate, fused):
            raise SystemExit(f"block {index}: the one pass differs from the two kernels")
        medians = {form: 1000 * float(np.median(values)) for form, values in times.items()}
        for form, value in medians.items():
            totals[form] += value
        print(f"features.{index:<2} {k:>3} -> {m:>3} @{size:<3} s{stride}: two kernels {medians['two kernels']:6.1f} ms, "
              f"one pass {medians['one pass']:6.1f} ms ({medians['two kernels'] / medians['one pass']:.2f}x)", flush=True)
        size = out
    print(f"16 blocks, batch {n}: two kernels {totals['two kernels']:.1f} ms, one pass {totals['one pass']:.1f} ms "
          f"({totals['two kernels'] / totals['one pass']:.2f}x); outputs identical")


if __name__ == "__main__":
    main()
