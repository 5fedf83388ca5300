"""Our CPU kernels for the MindSpore twin: 3x3 and 1x1 convolutions, BatchNorm (+ ReLU6), fused blocks.

MindSpore 2.10's CPU kernels run these layers (NCHW layouts) through oneDNN's reference code, the 3x3 ones
14-27x slower than PyTorch (docs/design.md section 7). This package compiles `ms_impl/kernels/*.cc` with the
system C++ compiler on first use and registers their functions through `ops.Custom(func_type="aot")`, each
with a backward (`bprop`), so the layers train in GRAPH and PYNATIVE mode.

    build     the library: compile, cache, MBV2_KERNEL_MARCH, thread count, `call_entry_point` (ctypes)
    selftest  every entry point checked on small problems (numpy) before a library is used
    ops       `resolve_fast_conv` (are the kernels used here?) and the `ops.Custom` ops with their bprops
    layers    FastConv3x3, FastConv1x1 (nn.Conv2d), FastBatchNorm2d (nn.BatchNorm2d), FastGlobalAveragePool;
              `conv2d`, `batch_norm`, `global_average_pool`
    blocks    the twin's ConvBNReLU and InvertedResidual with BatchNorm folded and layers fused (`block_classes`)

The layers are their MindSpore parents (same parameters, names, shapes, init and attributes): a checkpoint
is the same with the kernels on or off. `conv2d(...)`, `batch_norm(...)`, `global_average_pool(...)` and
`block_classes(...)` are what
the twin (ms_impl/mobilenetv2.py) uses.

`fast_conv` modes: "off" (always MindSpore's own layers), "auto" (the kernels where they apply; if they
cannot be built, MindSpore's layers with one warning), "on" (like auto, but a failed build raises
`FastConvUnavailable`). The device is read from MindSpore's context when the network is built
(`ms.get_context("device_target")`): on GPU and Ascend the framework's own layers are used in every mode,
so call `ms.set_device(...)` before building a network.

Environment:
    MBV2_KERNEL_MARCH    the compiler's -march target (default `native`: this CPU's every instruction set;
                         `x86-64-v3` (AVX2, FMA) or `x86-64-v2` give a library that runs on every CPU of that
                         level, e.g. a cache shared between machines). The value must be a name the
                         compiler accepts, and this CPU must have the instruction sets it implies; otherwise
                         one error names the variable (a warning and MindSpore's layers under "auto").
    MBV2_KERNEL_LANES    check builds of the AVX-512 code (16-float vectors, 12 x 32 tiles) on a CPU without
                         AVX-512: `16` from portable vector code, `16-simde` also with the AVX-512 intrinsics
                         from SIMDe's headers (libsimde-dev). Unset: the target's own width (16 with
                         AVX-512F, else 8). For checking that code here, not for speed (docs/design.md
                         section 6).
    MBV2_KERNEL_CACHE    the build cache; else `$XDG_CACHE_HOME/mbv2-twins/kernels`, else
                         `~/.cache/mbv2-twins/kernels`, else (no home directory) a private folder under the
                         system temp dir.
    CXX                  the compiler; else `c++` or `g++` on PATH.
    MBV2_KERNEL_THREADS  the kernels' threads; else the CPUs this process may use divided by the msrun
                         workers on this host, in one persistent pool per process.

Build cache: one library per hash of (every source file and the header, compiler and its version, flags
with the -march target and the lanes, and for `native` the CPU), named `mbv2-kernels-<march>[-lanes<lanes>]-<hash>.so`. The first use
builds it under a file lock (N processes starting together compile once) and renames it into place. A
cached library that does not load or fails the start-up self-test is rebuilt once.
"""
from ms_impl.fast_conv.blocks import (ConvBNReLUFusion, InvertedResidualFusion, block_classes, folded_batch_norm,
                                      fused_blocks)
from ms_impl.fast_conv.build import (MARCH_VARIABLE, FastConvUnavailable, cache_dir, call_entry_point, kernel_library,
                                     kernel_march, kernel_threads)
from ms_impl.fast_conv.layers import (FastBatchNorm2d, FastConv1x1, FastConv3x3, FastGlobalAveragePool, batch_norm,
                                      conv2d, global_average_pool)
from ms_impl.fast_conv.ops import FAST_CONV_MODES, forget_resolution, resolve_fast_conv
from ms_impl.fast_conv.selftest import check_entry_points, reference_batch_norm_train

__all__ = ["FAST_CONV_MODES", "FastConvUnavailable", "FastConv3x3", "FastConv1x1", "FastBatchNorm2d", "FastGlobalAveragePool", "conv2d",
           "global_average_pool",
           "batch_norm", "kernel_library", "kernel_march", "kernel_threads", "resolve_fast_conv", "forget_resolution",
           "cache_dir", "call_entry_point", "check_entry_points", "reference_batch_norm_train", "MARCH_VARIABLE",
           "block_classes", "fused_blocks", "folded_batch_norm", "ConvBNReLUFusion", "InvertedResidualFusion"]
