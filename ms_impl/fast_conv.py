"""Fast 3x3 convolutions for the MindSpore twin on CPU (depthwise and the stem).

MindSpore 2.10's CPU Conv2D runs oneDNN's reference kernel on these layers
(NCHW layouts), 14-27x slower than PyTorch (docs/design.md section 7). This module
builds `ms_impl/kernels/conv3x3.cc` with the system C++ compiler on first use
and registers its functions through `ops.Custom(func_type="aot")`, each with
a backward (`bprop`), so the layers train in GRAPH and PYNATIVE mode.

`FastConv3x3` is an `nn.Conv2d` (same `weight` parameter, name, shape, init
and attributes) whose `construct` calls the kernels: a checkpoint is the same
with the kernels on or off. `conv2d(...)` is the factory the twin uses.

`fast_conv` modes: "off" (always nn.Conv2d), "auto" (the kernels where they
apply; if they cannot be built, nn.Conv2d with one warning), "on" (like auto,
but a failed build raises `FastConvUnavailable`). On GPU and Ascend the
framework's own convolution is used in every mode.

Build cache: `$MBV2_KERNEL_CACHE`, else `~/.cache/mbv2-twins/kernels/`; one
library per (source, compiler, flags, CPU) hash, built under a temporary name
and renamed into place, so concurrent first uses never see a partial file.
Compiler: `$CXX`, else `c++`/`g++` on PATH. Kernel threads:
`$MBV2_KERNEL_THREADS`, else every CPU the process may use.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable, List, Tuple

import mindspore as ms
from mindspore import nn, ops

__all__ = ["FAST_CONV_MODES", "FastConvUnavailable", "FastConv3x3", "conv2d", "kernel_library", "resolve_fast_conv"]

FAST_CONV_MODES = ("auto", "on", "off")
SOURCE = Path(__file__).resolve().parent / "kernels" / "conv3x3.cc"
# -fopenmp-simd: honour the `omp simd` loop pragmas without linking an OpenMP runtime
# (torch ships its own libgomp; two runtimes in one process is asking for trouble).
CXX_FLAGS = ("-O3", "-std=c++14", "-shared", "-fPIC", "-pthread", "-fopenmp-simd", "-march=native")


_warned: List[bool] = []  # `auto` warns once per process


class FastConvUnavailable(RuntimeError):
    """The kernels cannot be used here (no compiler, failed build, or no AOT support)."""


def _compiler() -> str:
    named = os.environ.get("CXX")
    found = shutil.which(named) if named else (shutil.which("c++") or shutil.which("g++"))
    if not found:
        raise FastConvUnavailable(f"no C++ compiler found ({'CXX=' + named if named else 'c++/g++ not on PATH'})")
    return found


def _cpu_identity() -> str:
    # -march=native code is only valid on the CPU it was built for: key the cache on it.
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return platform.machine()
    wanted = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    return platform.machine() + "\n" + "\n".join(sorted(set(wanted)))


def _cache_dir() -> Path:
    root = os.environ.get("MBV2_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mbv2-twins" / "kernels"


def kernel_library() -> Path:
    """Path of the built kernel library, compiling it first if the cache lacks it."""
    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise FastConvUnavailable(f"C++ compiler {compiler} does not run: {exc}") from exc
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), compiler.encode(), version.encode(), " ".join(CXX_FLAGS).encode(),
                 _cpu_identity().encode()):
        digest.update(part)
        digest.update(b"\0")
    cache = _cache_dir()
    target = cache / f"conv3x3-{digest.hexdigest()[:20]}.so"
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=cache)
        os.close(handle)
    except OSError as exc:
        raise FastConvUnavailable(f"kernel cache {cache} is not writable: {exc}") from exc
    try:
        result = subprocess.run([compiler, *CXX_FLAGS, "-o", temp_name, str(SOURCE)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise FastConvUnavailable(f"building {SOURCE.name} with {compiler} failed:\n{result.stderr.strip()}")
        os.replace(temp_name, target)  # atomic: a concurrent builder renames an identical file
    except (OSError, subprocess.SubprocessError) as exc:
        raise FastConvUnavailable(f"building {SOURCE.name} with {compiler} failed: {exc}") from exc
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    return target


def _self_test(library: str) -> None:
    """Runs one small depthwise forward through MindSpore and checks it: the library loads, the ABI fits."""
    import numpy as np

    x = np.arange(2 * 2 * 5 * 4, dtype=np.float32).reshape(2, 2, 5, 4) / 10.0
    w = np.linspace(-1.0, 1.0, 18, dtype=np.float32).reshape(2, 1, 3, 3)
    op = ops.Custom(f"{library}:dw_forward_s2", out_shape=_forward_shape(2), out_dtype=_same_dtype, func_type="aot")
    try:
        got = op(ms.Tensor(x), ms.Tensor(w)).asnumpy()
    except (RuntimeError, TypeError, ValueError, OSError) as exc:
        raise FastConvUnavailable(f"the built kernels do not run in MindSpore: {exc}") from exc
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((2, 2, 3, 2), dtype=np.float64)
    for kh in range(3):
        for kw in range(3):
            want += w[None, :, 0, kh, kw, None, None] * padded[:, :, kh:kh + 5:2, kw:kw + 4:2]
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5):
        raise FastConvUnavailable("the built kernels give wrong results in the start-up self-test")


@functools.lru_cache(maxsize=None)
def _cached_library() -> Tuple[str, str]:
    """(library path, "") or ("", reason): resolved (built and self-tested) once per process, so `auto` warns once."""
    try:
        library = str(kernel_library())
        _self_test(library)
        return library, ""
    except FastConvUnavailable as exc:
        return "", str(exc)


def resolve_fast_conv(mode: str) -> bool:
    """Whether the kernels are used for `mode` in this process (see the module docstring)."""
    if mode not in FAST_CONV_MODES:
        raise ValueError(f"fast_conv must be one of {FAST_CONV_MODES}, got {mode!r}")
    if mode == "off" or ms.get_context("device_target") != "CPU":
        return False
    library, reason = _cached_library()
    if library:
        return True
    if mode == "on":
        raise FastConvUnavailable(f"fast_conv='on' but the CPU kernels are unavailable: {reason}")
    if not _warned:
        _warned.append(True)
        warnings.warn(f"fast_conv='auto': using nn.Conv2d, the CPU kernels are unavailable: {reason}",
                      RuntimeWarning, stacklevel=2)
    return False


def _forward_shape(stride: int) -> Callable:
    return lambda x, w: (x[0], w[0], (x[2] - 1) // stride + 1, (x[3] - 1) // stride + 1)


def _same_dtype(*dtypes):
    return dtypes[0]


@functools.lru_cache(maxsize=None)
def _kernel_ops(kind: str, stride: int) -> ops.Custom:
    """The forward Custom op of `kind` ("dw" or "dense") at `stride`, with its bprop; shared by all layers."""
    library = _cached_library()[0]
    if not library:
        raise FastConvUnavailable(_cached_library()[1])

    def custom(name: str, out_shape: Callable, bprop=None) -> ops.Custom:
        return ops.Custom(f"{library}:{kind}_{name}_s{stride}", out_shape=out_shape, out_dtype=_same_dtype,
                          func_type="aot", bprop=bprop)

    grad_input = custom("grad_input", lambda dy, w, x: x)
    if kind == "dw":
        grad_weight = custom("grad_weight", lambda x, dy: (x[1], 1, 3, 3))
    else:
        grad_weight = custom("grad_weight", lambda x, dy: (dy[1], x[1], 3, 3))

    def bprop(x, w, out, dout):
        return grad_input(dout, w, x), grad_weight(x, dout)

    return custom("forward", _forward_shape(stride), bprop)


class FastConv3x3(nn.Conv2d):
    """3x3, padding 1, stride 1 or 2, no bias, depthwise or dense: an nn.Conv2d computed by our CPU kernels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, group: int, weight_init) -> None:
        super().__init__(in_channels, out_channels, 3, stride, pad_mode="pad", padding=1, group=group,
                         has_bias=False, weight_init=weight_init)
        if stride not in (1, 2):
            raise ValueError(f"FastConv3x3 supports stride 1 or 2, got {stride}")
        if group == 1:
            kind = "dense"
        elif group == in_channels == out_channels:
            kind = "dw"
        else:
            raise ValueError(f"FastConv3x3 is depthwise or dense, got group={group} for {in_channels}->{out_channels}")
        self.kernel = _kernel_ops(kind, stride)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.kernel(x, self.weight)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, weight_init,
           fast_conv: str = "off") -> nn.Conv2d:
    """nn.Conv2d (symmetric padding, no bias), or FastConv3x3 where the kernels apply and `fast_conv` allows."""
    depthwise = groups == in_channels == out_channels
    fits = kernel_size == 3 and stride in (1, 2) and (groups == 1 or depthwise)
    if resolve_fast_conv(fast_conv) and fits:
        return FastConv3x3(in_channels, out_channels, stride, groups, weight_init)
    # pad_mode='pad' with symmetric padding: 'same' pads bottom/right only at stride 2.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="pad",
                     padding=(kernel_size - 1) // 2, group=groups, has_bias=False, weight_init=weight_init)

