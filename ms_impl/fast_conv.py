"""Fast 3x3 convolutions for the MindSpore twin on CPU (depthwise and the stem).

MindSpore 2.10's CPU Conv2D runs oneDNN's reference kernel on these layers
(NCHW layouts), 14-27x slower than PyTorch (docs/design.md section 7). This module
builds `ms_impl/kernels/conv3x3.cc` with the system C++ compiler on first use
and registers its functions through `ops.Custom(func_type="aot")`, each with
a backward (`bprop`), so the layers train in GRAPH and PYNATIVE mode.

`FastConv3x3` is an `nn.Conv2d` (same `weight` parameter, name, shape, init
and attributes) whose `construct` calls the kernels: a checkpoint is the same
with the kernels on or off. `conv2d(...)` is the factory the twin uses. For
inference, `FastConv3x3.bias_relu6(x, w, b)` computes relu6(conv(x, w) + b)
in one pass (a BatchNorm folded into `w` and `b`, see ms_impl/mobilenetv2.py).

`fast_conv` modes: "off" (always nn.Conv2d), "auto" (the kernels where they
apply; if they cannot be built, nn.Conv2d with one warning), "on" (like auto,
but a failed build raises `FastConvUnavailable`). The device is read from
MindSpore's context when the network is built (`ms.get_context("device_target")`):
on GPU and Ascend the framework's own convolution is used in every mode, so
call `ms.set_device(...)` before building a network.

Build cache: `$MBV2_KERNEL_CACHE`, else `$XDG_CACHE_HOME/mbv2-twins/kernels`,
else `~/.cache/mbv2-twins/kernels`, else (no home directory) a private
folder under the system temp dir. One library per (source, compiler, flags,
CPU) hash; the first use builds it under a file lock (N processes starting
together compile once) and renames it into place. A cached library that does
not load or fails the start-up self-test is rebuilt once. Compiler: `$CXX`,
else `c++`/`g++` on PATH. Kernel threads: `$MBV2_KERNEL_THREADS`, else the
CPUs this process may use divided by the msrun workers on this host, in one
persistent pool per process.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Optional, Tuple

import filelock
import numpy as np

import mindspore as ms
from mindspore import nn, ops

from parity.core.files import WriteError, atomic_path, one_line

__all__ = ["FAST_CONV_MODES", "FastConvUnavailable", "FastConv3x3", "FastConv1x1", "FastBatchNorm2d", "conv2d", "batch_norm",
           "kernel_library", "kernel_threads", "resolve_fast_conv", "forget_resolution", "cache_dir", "call_entry_point"]

FAST_CONV_MODES = ("auto", "on", "off")
SOURCE = Path(__file__).resolve().parent / "kernels" / "conv3x3.cc"
# -fopenmp-simd: honour the `omp simd` loop pragmas without linking an OpenMP runtime
# (torch ships its own libgomp; two runtimes in one process is asking for trouble).
CXX_FLAGS = ("-O3", "-std=c++14", "-shared", "-fPIC", "-pthread", "-fopenmp-simd", "-march=native")
BUILD_TIMEOUT_S = 300  # the build takes ~10 s; a stalled compiler must not hold start-up for long
LOCK_TIMEOUT_S = BUILD_TIMEOUT_S + 60  # waiting for another process's build
ERROR_TAIL = 400  # characters of compiler output kept in a message

_state = {"warned": False}  # `auto` warns once per process


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


def _private_temp_cache() -> Path:
    """A per-user folder under the temp dir, refused if someone else could have planted a library in it."""
    folder = Path(tempfile.gettempdir()) / f"mbv2-twins-kernels-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        raise FastConvUnavailable(f"no home directory, and temp cache {folder} is unusable: {exc}") from exc
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise FastConvUnavailable(f"no home directory, and temp cache {folder} is not private to this user")
    return folder


def cache_dir() -> Path:
    """Where the built library is kept (see the module docstring for the order)."""
    if os.environ.get("MBV2_KERNEL_CACHE"):
        return Path(os.environ["MBV2_KERNEL_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "mbv2-twins" / "kernels"
    try:
        home = Path.home()  # RuntimeError/KeyError without HOME and without a passwd entry
    except (RuntimeError, KeyError, OSError):
        return _private_temp_cache()
    return home / ".cache" / "mbv2-twins" / "kernels"


def _library_name(compiler: str) -> str:
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
        source = SOURCE.read_bytes()
    except (OSError, subprocess.SubprocessError) as exc:
        raise FastConvUnavailable(f"cannot prepare the kernel build ({compiler}, {SOURCE.name}): {one_line(exc)}") \
            from exc
    digest = hashlib.sha256()
    for part in (source, compiler.encode(), version.encode(), " ".join(CXX_FLAGS).encode(), _cpu_identity().encode()):
        digest.update(part)
        digest.update(b"\0")
    return f"conv3x3-{digest.hexdigest()[:20]}.so"


def _build(compiler: str, target: Path) -> None:
    try:
        with atomic_path(target) as temp:
            result = subprocess.run([compiler, *CXX_FLAGS, "-o", str(temp), str(SOURCE)],
                                    capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if result.returncode != 0:
                output = " ".join((result.stderr or result.stdout).split())
                raise FastConvUnavailable(f"building {SOURCE.name} with {compiler} failed "
                                          f"(exit {result.returncode}): ...{output[-ERROR_TAIL:]}")
    except subprocess.TimeoutExpired as exc:
        raise FastConvUnavailable(f"building {SOURCE.name} with {compiler} took over {BUILD_TIMEOUT_S} s") from exc
    except (WriteError, OSError, subprocess.SubprocessError) as exc:
        raise FastConvUnavailable(f"building {SOURCE.name} with {compiler} failed: {one_line(exc)}") from exc


def kernel_library(rebuild: bool = False) -> Path:
    """Path of the built kernel library, compiling it first if the cache lacks it (or `rebuild`).

    Builds happen under a lock file beside the library, so concurrent first
    uses (msrun workers, parallel tests) compile once and the others wait.
    """
    compiler = _compiler()
    target = cache_dir() / _library_name(compiler)
    if target.is_file() and not rebuild:
        return target  # also works from a read-only cache
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(target) + ".lock", timeout=LOCK_TIMEOUT_S)
        with lock:
            if rebuild or not target.is_file():  # another process may have built it while we waited
                _build(compiler, target)
    except filelock.Timeout as exc:
        raise FastConvUnavailable(f"waited {LOCK_TIMEOUT_S} s for another process building {target}") from exc
    except OSError as exc:
        raise FastConvUnavailable(f"kernel cache {target.parent} is not writable: {one_line(exc)}") from exc
    return target


def _local_workers() -> int:
    """msrun workers sharing this host (they would each default to all its CPUs)."""
    if os.environ.get("MS_ROLE") != "MS_WORKER":
        return 1
    try:
        workers = int(os.environ.get("MS_WORKER_NUM", "1"))
    except ValueError:
        return 1
    # msrun exports the total worker count only; with the scheduler on this host (msrun's
    # default, one node) every worker is local. On several hosts set MBV2_KERNEL_THREADS.
    local_host = os.environ.get("MS_SCHED_HOST", "127.0.0.1") in ("127.0.0.1", "localhost", "::1")
    return max(1, workers) if local_host else 1


def kernel_threads() -> int:
    """Threads the kernels use: $MBV2_KERNEL_THREADS, else usable CPUs / local msrun workers."""
    named = os.environ.get("MBV2_KERNEL_THREADS", "")
    if named.strip().isdigit() and int(named) > 0:
        return int(named)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus // _local_workers())


def call_entry_point(library: ctypes.CDLL, name: str, arrays, shapes=None, outputs: int = 1):
    """Calls one kernel entry point with numpy arrays (the last `outputs` are its outputs) the way MindSpore's
    AOT runtime does; returns (status, output), or (status, (outputs...)) for `outputs` > 1. `shapes`
    overrides the shapes passed (tests of the checks)."""
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
    count = len(arrays)
    claimed = [a.shape for a in arrays] if shapes is None else [tuple(s) for s in shapes]
    params = (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays])
    ndims = (ctypes.c_int * count)(*[len(s) for s in claimed])
    shape_arrays = [(ctypes.c_int64 * max(1, len(s)))(*s) for s in claimed]
    shapes = (ctypes.POINTER(ctypes.c_int64) * count)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64))
                                                         for s in shape_arrays])
    dtypes = (ctypes.c_char_p * count)(*[b"float32"] * count)
    entry = getattr(library, name)
    entry.restype = ctypes.c_int
    status = entry(count, params, ndims, shapes, dtypes, None, None)
    return status, (arrays[-1] if outputs == 1 else tuple(arrays[-outputs:]))


def reference_batch_norm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, relu6: bool,
                               dy: np.ndarray):
    """float64 reference of the training BatchNorm (+ ReLU6) kernels:
    (y, [batch mean, invstd], unbiased batch variance, dx, dgamma, dbeta)."""
    xd = x.astype(np.float64)
    values = x.size // x.shape[1]
    mean, var = xd.mean((0, 2, 3)), xd.var((0, 2, 3))
    invstd = 1.0 / np.sqrt(var + eps)
    z = (xd - mean[None, :, None, None]) * invstd[None, :, None, None]
    pre = z * gamma[None, :, None, None] + beta[None, :, None, None]
    y = np.clip(pre, 0.0, 6.0) if relu6 else pre
    g = dy * ((pre > 0) & (pre <= 6)) if relu6 else dy.astype(np.float64)  # MindSpore's ReLU6 passes at 6
    dbeta, dgamma = g.sum((0, 2, 3)), (g * z).sum((0, 2, 3))
    dx = (gamma * invstd)[None, :, None, None] * (g - (dbeta[None, :, None, None] + z * dgamma[None, :, None, None])
                                                  / values)
    with np.errstate(divide="ignore", invalid="ignore"):
        unbiased = var * values / (values - 1.0)
    return y, np.stack([mean, invstd]), unbiased, dx, dgamma, dbeta


def _reference_conv(x: np.ndarray, w: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
    n, _, h, wd = x.shape
    cout = w.shape[0]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    y = np.zeros((n, cout, ho, wo))
    for kh in range(3):
        for kw in range(3):
            taps = padded[:, :, kh:kh + stride * (ho - 1) + 1:stride, kw:kw + stride * (wo - 1) + 1:stride]
            if depthwise:
                y += w[None, :, 0, kh, kw, None, None] * taps
            else:
                y += np.einsum("oi,nihw->nohw", w[:, :, kh, kw], taps)
    return y


def _is_complete_elf(path: Path) -> bool:
    """Whether `path` is an ELF file that holds its section header table (it sits at the end of the file).

    A truncated library must never reach dlopen: mapping its missing pages
    kills the process with SIGBUS instead of raising.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(64)
        size = path.stat().st_size
    except OSError:
        return False
    if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2) or header[5] not in (1, 2):
        return False
    order = "little" if header[5] == 1 else "big"
    if header[4] == 2:  # 64-bit
        offset, entry, count = (int.from_bytes(header[a:b], order) for a, b in ((0x28, 0x30), (0x3A, 0x3C), (0x3C, 0x3E)))
    else:
        offset, entry, count = (int.from_bytes(header[a:b], order) for a, b in ((0x20, 0x24), (0x2E, 0x30), (0x30, 0x32)))
    return 0 < offset and offset + entry * count <= size


def _self_test_entry_points(path: Path) -> None:
    """Every entry point on a small problem: forwards against numpy, gradients by the adjoint identities
    <conv(x, w), dy> = <x, grad_input(dy)> = <w, grad_weight(x, dy)>, and one shape mismatch refused."""
    if not _is_complete_elf(path):
        raise FastConvUnavailable(f"the cached kernel library {path.name} is not a complete shared library")
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:
        raise FastConvUnavailable(f"the built kernel library does not load: {one_line(exc)}") from exc
    rng = np.random.default_rng(0)
    for kind, cin, cout in (("dw", 3, 3), ("dense", 2, 3)):
        for stride in (1, 2):
            x = rng.standard_normal((2, cin, 5, 4)).astype(np.float32)
            w = rng.standard_normal((cout, 1 if kind == "dw" else cin, 3, 3)).astype(np.float32)
            bias = rng.standard_normal(cout).astype(np.float32)
            want = _reference_conv(x, w, stride, kind == "dw")
            dy = rng.standard_normal(want.shape).astype(np.float32)
            checks = [
                (f"{kind}_forward_s{stride}", [x, w, np.zeros(want.shape)], want),
                (f"{kind}_forward_bias_relu6_s{stride}", [x, w, bias, np.zeros(want.shape)],
                 np.clip(want + bias[None, :, None, None], 0.0, 6.0)),
            ]
            for name, arrays, expected in checks:
                status, got = call_entry_point(library, name, arrays)
                if status != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                    raise FastConvUnavailable(f"self-test: {name} gives wrong results")
            inner = float(np.sum(want * dy))
            status_x, dx = call_entry_point(library, f"{kind}_grad_input_s{stride}", [dy, w, x, np.zeros(x.shape)])
            status_w, dw = call_entry_point(library, f"{kind}_grad_weight_s{stride}", [x, dy, np.zeros(w.shape)])
            for status, value, name in ((status_x, np.sum(x * dx), "grad_input"), (status_w, np.sum(w * dw),
                                                                                    "grad_weight")):
                if status != 0 or abs(float(value) - inner) > 1e-3 * max(1.0, abs(inner)):
                    raise FastConvUnavailable(f"self-test: {kind}_{name}_s{stride} gives wrong results")
            if kind == "dw":  # the fused backward of the folded layer: the separate kernels' results, bit for bit
                y = np.clip(want + bias[None, :, None, None], 0.0, 6.0).astype(np.float32)
                dz = np.where((y > 0) & (y < 6), dy, 0).astype(np.float32)
                status, (dx_all, dw_all, db_all) = call_entry_point(
                    library, f"dw_bias_relu6_grad_s{stride}", [dy, y, x, w, np.zeros(x.shape), np.zeros(w.shape),
                                                               np.zeros(cout)], outputs=3)
                parts = [call_entry_point(library, f"dw_grad_input_s{stride}", [dz, w, x, np.zeros(x.shape)])[1],
                         call_entry_point(library, f"dw_grad_weight_s{stride}", [x, dz, np.zeros(w.shape)])[1],
                         call_entry_point(library, "bias_grad", [dz, np.zeros(cout)])[1]]
                if status != 0 or not all(np.array_equal(a, b) for a, b in zip((dx_all, dw_all, db_all), parts)):
                    raise FastConvUnavailable(f"self-test: dw_bias_relu6_grad_s{stride} gives wrong results")
                # The expand layer's bias + ReLU6 moved onto the input (z + a = x): the same results, bit for bit.
                # relu6(z + a) on both sides of 0 and 6.
                a = rng.standard_normal(cout).astype(np.float32)
                z = (4 * x + 3 - a[None, :, None, None]).astype(np.float32)
                x_relu6 = np.clip(z + a[None, :, None, None], 0.0, 6.0).astype(np.float32)
                statuses = []
                for name, arrays, outputs in (
                        (f"dw_forward_bias_relu6_s{stride}", [x_relu6, w, bias, np.zeros(want.shape)], 1),
                        (f"dw_forward_relu6_input_s{stride}", [z, a, w, bias, np.zeros(want.shape)], 1)):
                    statuses.append(call_entry_point(library, name, arrays, outputs=outputs))
                (status_separate, y_relu6), (status_forward, y_moved) = statuses
                status_dw, (dx_relu6, dw_relu6, db_relu6) = call_entry_point(
                    library, f"dw_bias_relu6_grad_s{stride}", [dy, y_relu6, x_relu6, w, np.zeros(x.shape),
                                                               np.zeros(w.shape), np.zeros(cout)], outputs=3)
                status_bias, (dz_relu6, da_relu6) = call_entry_point(
                    library, "bias_relu6_grad", [dx_relu6, x_relu6, np.zeros(x.shape), np.zeros(cout)], outputs=2)
                status_grad, moved = call_entry_point(
                    library, f"dw_relu6_input_grad_s{stride}", [dy, y_moved, z, a, w, np.zeros(x.shape), np.zeros(w.shape),
                                                                np.zeros(cout), np.zeros(cout)], outputs=4)
                expected = (y_relu6, dz_relu6, dw_relu6, db_relu6, da_relu6)
                if status_separate or status_dw or status_bias or status_forward or status_grad or not all(
                        np.array_equal(p, q) for p, q in zip((y_moved,) + moved, expected)):
                    raise FastConvUnavailable(f"self-test: dw_forward_relu6_input_s{stride} / dw_relu6_input_grad_s{stride} "
                                              "give wrong results")
            status, _ = call_entry_point(library, f"{kind}_forward_s{stride}", [x, w, np.zeros((1, cout, 1, 1))])
            if status != 1:
                raise FastConvUnavailable(f"self-test: {kind}_forward_s{stride} accepts a wrong output shape")
    for relu6 in (False, True):
        x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32) * 2 + 1
        gamma, beta = rng.uniform(0.5, 2.0, 3).astype(np.float32), rng.uniform(-1.0, 4.0, 3).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        want = reference_batch_norm_train(x, gamma, beta, 1e-5, relu6, dy)
        prefix = "bn_relu6" if relu6 else "bn"
        moving_mean, moving_variance = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
        status, (y, saved, new_mean, new_variance) = call_entry_point(
            library, f"{prefix}_train_forward",
            [x, gamma, beta, moving_mean, moving_variance, np.array([1e-5, 0.1]), np.zeros(x.shape),
             np.zeros((2, 3)), np.zeros(3), np.zeros(3)], outputs=4)
        inputs = [dy, x, gamma, beta, saved] if relu6 else [dy, x, gamma, saved]
        status_grad, (dx, dgamma, dbeta) = call_entry_point(
            library, f"{prefix}_train_grad", inputs + [np.zeros(x.shape), np.zeros(3), np.zeros(3)], outputs=3)
        checks = ((status, y, want[0]), (status, saved, want[1]),
                  (status, new_mean, 0.9 * moving_mean + 0.1 * want[1][0]),
                  (status, new_variance, 0.9 * moving_variance + 0.1 * want[2]),
                  (status_grad, dx, want[3]), (status_grad, dgamma, want[4]), (status_grad, dbeta, want[5]))
        for index, (code, got, expected) in enumerate(checks):
            if code != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                raise FastConvUnavailable(f"self-test: {prefix}_train_{'forward' if index < 4 else 'grad'} "
                                          "gives wrong results")
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32) * 4 + 2
    scale, shift = rng.uniform(0.5, 2.0, 3).astype(np.float32), rng.uniform(-1.0, 4.0, 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    pre = x * scale[None, :, None, None] + shift[None, :, None, None]
    passed = np.where((pre > 0) & (pre <= 6), dy, 0)  # ReLU6's gradient, MindSpore's rule
    for name, y_want, g in (("affine", pre, dy), ("affine_relu6", np.clip(pre, 0, 6), passed)):
        status, y = call_entry_point(library, name, [x, scale, shift, np.zeros(x.shape)])
        status_grad, (dx, dscale, dshift) = call_entry_point(
            library, f"{name}_grad", [dy, x, scale, shift, np.zeros(x.shape), np.zeros(3), np.zeros(3)], outputs=3)
        checks = ((status, y, y_want), (status_grad, dx, g * scale[None, :, None, None]),
                  (status_grad, dscale, (g * x).sum(axis=(0, 2, 3))), (status_grad, dshift, g.sum(axis=(0, 2, 3))))
        for index, (code, got, expected) in enumerate(checks):
            if code != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                raise FastConvUnavailable(f"self-test: {name}{'_grad' if index else ''} gives wrong results")
    # Pointwise: shapes that leave partial tiles (rows and pixels) and cross images within a tile.
    x = rng.standard_normal((3, 5, 3, 7)).astype(np.float32)
    w = rng.standard_normal((13, 5, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(13).astype(np.float32)
    want = np.einsum("mk,nkhw->nmhw", w[:, :, 0, 0].astype(np.float64), x)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    checks = [("pw_forward_s1", [x, w, np.zeros(want.shape)], want),
              ("pw_forward_bias_s1", [x, w, bias, np.zeros(want.shape)], want + bias[None, :, None, None]),
              ("pw_forward_bias_relu6_s1", [x, w, bias, np.zeros(want.shape)],
               np.clip(want + bias[None, :, None, None], 0.0, 6.0)),
              ("pw_grad_input_s1", [dy, w, x, np.zeros(x.shape)], np.einsum("mk,nmhw->nkhw", w[:, :, 0, 0], dy)),
              ("pw_grad_weight_s1", [x, dy, np.zeros(w.shape)], np.einsum("nmhw,nkhw->mk", dy, x)[:, :, None, None])]
    for name, arrays, expected in checks:
        status, got = call_entry_point(library, name, arrays)
        if status != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            raise FastConvUnavailable(f"self-test: {name} gives wrong results")
    # The folded BatchNorm's bias gradients: y has values at 0, inside (0, 6) and at 6.
    y = np.clip(want + bias[None, :, None, None], 0.0, 6.0).astype(np.float32)
    dz_want = np.where((y > 0) & (y < 6), dy, 0)
    status, db = call_entry_point(library, "bias_grad", [dy, np.zeros(13)])
    status_relu6, (dz, db_relu6) = call_entry_point(library, "bias_relu6_grad", [dy, y, np.zeros(y.shape), np.zeros(13)],
                                                    outputs=2)
    for code, got, expected in ((status, db, dy.sum(axis=(0, 2, 3))), (status_relu6, dz, dz_want),
                                (status_relu6, db_relu6, dz_want.sum(axis=(0, 2, 3)))):
        if code != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            raise FastConvUnavailable("self-test: bias_grad / bias_relu6_grad give wrong results")
    # The weight gradient's dot-product form (784 pixels per image and more), with partial tiles.
    x, dy = rng.standard_normal((2, 4, 28, 29)).astype(np.float32), rng.standard_normal((2, 5, 28, 29)).astype(np.float32)
    status, dw = call_entry_point(library, "pw_grad_weight_s1", [x, dy, np.zeros((5, 4, 1, 1))])
    if status != 0 or not np.allclose(dw[:, :, 0, 0], np.einsum("nmhw,nkhw->mk", dy, x), rtol=1e-4, atol=1e-3):
        raise FastConvUnavailable("self-test: pw_grad_weight_s1 gives wrong results (many pixels)")
    # Expansion and depthwise in one pass (inference): the two kernels' results, bit for bit.
    for stride in (1, 2):
        x = rng.standard_normal((2, 5, 5, 4)).astype(np.float32) * 2
        expand_weight, depthwise_weight = rng.standard_normal((7, 5, 1, 1)), rng.standard_normal((7, 1, 3, 3))
        expand_bias, bias = rng.uniform(-1.0, 3.0, 7), rng.uniform(-1.0, 3.0, 7)
        out_shape = (2, 7, (5 - 1) // stride + 1, (4 - 1) // stride + 1)
        status_pw, expanded = call_entry_point(library, "pw_forward_bias_relu6_s1",
                                               [x, expand_weight, expand_bias, np.zeros((2, 7, 5, 4))])
        status_dw, separate = call_entry_point(library, f"dw_forward_bias_relu6_s{stride}",
                                               [expanded, depthwise_weight, bias, np.zeros(out_shape)])
        status, fused = call_entry_point(library, f"pw_dw_forward_s{stride}",
                                         [x, expand_weight, expand_bias, depthwise_weight, bias, np.zeros(out_shape)])
        if status or status_pw or status_dw or not np.array_equal(fused, separate):
            raise FastConvUnavailable(f"self-test: pw_dw_forward_s{stride} gives wrong results")
    x = rng.standard_normal((3, 5, 3, 7)).astype(np.float32)
    if call_entry_point(library, "pw_forward_s1", [x, w, np.zeros((3, 12, 3, 7))])[0] != 1:
        raise FastConvUnavailable("self-test: pw_forward_s1 accepts a wrong output shape")
    setter = library.mbv2_set_threads
    setter.argtypes = [ctypes.c_int]
    setter(kernel_threads())


def _self_test_in_mindspore(library: str) -> None:
    """One depthwise forward through ops.Custom: MindSpore loads the library and the ABI fits."""
    x = np.arange(2 * 2 * 5 * 4, dtype=np.float32).reshape(2, 2, 5, 4) / 10.0
    w = np.linspace(-1.0, 1.0, 18, dtype=np.float32).reshape(2, 1, 3, 3)
    op = ops.Custom(f"{library}:dw_forward_s2", out_shape=_forward_shape(2), out_dtype=_same_dtype, func_type="aot")
    try:
        got = op(ms.Tensor(x), ms.Tensor(w)).asnumpy()
    except (RuntimeError, TypeError, ValueError, OSError) as exc:
        raise FastConvUnavailable(f"the built kernels do not run in MindSpore: {one_line(exc)}") from exc
    if got.shape != (2, 2, 3, 2) or not np.allclose(got, _reference_conv(x, w, 2, True), rtol=1e-5, atol=1e-5):
        raise FastConvUnavailable("the built kernels give wrong results in MindSpore (start-up self-test)")


@functools.lru_cache(maxsize=None)
def _cached_library() -> Tuple[str, str]:
    """(library path, "") or ("", reason): resolved (built and self-tested) once per process, so `auto` warns once.

    A cached library that does not load or fails the self-test (a truncated
    file, a stale build) is rebuilt once before giving up.
    """
    try:
        path = kernel_library()
        try:
            _self_test_entry_points(path)
        except FastConvUnavailable:
            path = kernel_library(rebuild=True)
            _self_test_entry_points(path)
        _self_test_in_mindspore(str(path))
        return str(path), ""
    except FastConvUnavailable as exc:
        return "", str(exc)


def forget_resolution() -> None:
    """Forget this process's resolved library and warning (after changing CXX or MBV2_KERNEL_CACHE; tests)."""
    _cached_library.cache_clear()
    _kernel_ops.cache_clear()
    _batch_norm_ops.cache_clear()
    _affine_op.cache_clear()
    _bias_grad_ops.cache_clear()
    _relu6_input_op.cache_clear()
    _expansion_depthwise_op.cache_clear()
    _state["warned"] = False


def resolve_fast_conv(mode: str, device_target: Optional[str] = None) -> bool:
    """Whether the kernels are used for `mode` in this process (see the module docstring).

    `device_target` defaults to MindSpore's context, read now: build networks after `ms.set_device`.
    """
    if mode not in FAST_CONV_MODES:
        raise ValueError(f"fast_conv must be one of {FAST_CONV_MODES}, got {mode!r}")
    target = device_target or ms.get_context("device_target")
    if mode == "off" or target != "CPU":
        return False
    library, reason = _cached_library()
    if library:
        return True
    if mode == "on":
        raise FastConvUnavailable(f"fast_conv='on' but the CPU kernels are unavailable: {reason}")
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"fast_conv='auto': using nn.Conv2d, the CPU kernels are unavailable: {reason}",
                      RuntimeWarning, stacklevel=2)
    return False


def _forward_shape(stride: int) -> Callable:
    return lambda x, w: (x[0], w[0], (x[2] - 1) // stride + 1, (x[3] - 1) // stride + 1)


def _same_dtype(*dtypes):
    return dtypes[0]


@functools.lru_cache(maxsize=None)
def _bias_grad_ops() -> Tuple[ops.Custom, ops.Custom]:
    """The bias forms' backward, one pass each: dy -> db[C]; (dy, y) -> (dz, db[C]) through ReLU6."""
    library = _cached_library()[0]
    return (ops.Custom(f"{library}:bias_grad", out_shape=lambda dy: (dy[1],), out_dtype=_same_dtype, func_type="aot"),
            ops.Custom(f"{library}:bias_relu6_grad", out_shape=lambda dy, y: (dy, (dy[1],)),
                       out_dtype=lambda *dtypes: (dtypes[0],) * 2, func_type="aot"))


@functools.lru_cache(maxsize=None)
def _kernel_ops(kind: str, stride: int) -> Tuple[ops.Custom, ops.Custom, Optional[ops.Custom]]:
    """(forward, forward_bias_relu6, forward_bias or None) Custom ops of `kind` ("dw", "dense" or "pw")
    at `stride`, with their bprops; shared by all layers. Only "pw" has the bias-only forward (the
    projection's folded BatchNorm, no ReLU6)."""
    library = _cached_library()[0]
    if not library:
        raise FastConvUnavailable(_cached_library()[1])

    def custom(name: str, out_shape: Callable, bprop=None) -> ops.Custom:
        return ops.Custom(f"{library}:{kind}_{name}_s{stride}", out_shape=out_shape, out_dtype=_same_dtype,
                          func_type="aot", bprop=bprop)

    grad_input = custom("grad_input", lambda dy, w, x: x)
    size = 1 if kind == "pw" else 3
    if kind == "dw":
        grad_weight = custom("grad_weight", lambda x, dy: (x[1], 1, 3, 3))
    else:
        grad_weight = custom("grad_weight", lambda x, dy: (dy[1], x[1], size, size))

    def bprop(x, w, out, dout):
        return grad_input(dout, w, x), grad_weight(x, dout)

    grad_bias, grad_bias_relu6 = _bias_grad_ops()

    def bias_bprop(x, w, bias, out, dout):
        return grad_input(dout, w, x), grad_weight(x, dout), grad_bias(dout)

    def bias_relu6_bprop(x, w, bias, out, dout):
        # Read from the clamped output: passes where 0 < y < 6. y == 6 stops it, including the pre-activation
        # exactly 6 that ops.ReLU6 passes (indistinguishable here from above 6; never met in practice).
        dz, dbias = grad_bias_relu6(dout, out)
        return grad_input(dz, w, x), grad_weight(x, dz), dbias

    if kind == "dw":  # the three gradients in one kernel, the masked gradient never stored
        whole_grad = ops.Custom(f"{library}:dw_bias_relu6_grad_s{stride}", out_shape=lambda dy, y, x, w: (x, w, (w[0],)),
                                out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

        def depthwise_bias_relu6_bprop(x, w, bias, out, dout):
            return whole_grad(dout, out, x, w)

    forward_shape = _forward_shape(stride)
    with_bias = custom("forward_bias", lambda x, w, bias: forward_shape(x, w), bias_bprop) if kind == "pw" else None
    return (custom("forward", forward_shape, bprop),
            custom("forward_bias_relu6", lambda x, w, bias: forward_shape(x, w),
                   depthwise_bias_relu6_bprop if kind == "dw" else bias_relu6_bprop), with_bias)


@functools.lru_cache(maxsize=None)
def _relu6_input_op(stride: int) -> ops.Custom:
    """The depthwise layer with the expanding 1x1 layer's folded bias and ReLU6 applied to its input:
    (z, a[C], w, b[C]) -> relu6(conv(relu6(z + a), w) + b), with its bprop, one kernel pass each way."""
    library = _cached_library()[0]
    if not library:
        raise FastConvUnavailable(_cached_library()[1])
    grad = ops.Custom(f"{library}:dw_relu6_input_grad_s{stride}",
                      out_shape=lambda dy, y, z, a, w: (z, w, (w[0],), (w[0],)),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 4, func_type="aot")

    def bprop(z, input_bias, w, bias, out, dout):
        dz, dw, dbias, dinput_bias = grad(dout, out, z, input_bias, w)
        return dz, dinput_bias, dw, dbias

    forward_shape = _forward_shape(stride)
    return ops.Custom(f"{library}:dw_forward_relu6_input_s{stride}", out_shape=lambda z, a, w, b: forward_shape(z, w),
                      out_dtype=_same_dtype, func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def _expansion_depthwise_op(stride: int) -> ops.Custom:
    """A block's expansion and depthwise layers, both BatchNorms folded, in one pass without storing the
    expansion: (x, we[M,K,1,1], be[M], wd[M,1,3,3], bd[M]) -> relu6(dwconv(relu6(conv1x1(x, we) + be), wd) + bd).
    For inference; its bprop recomputes the expansion and runs the two layers' own backward kernels, so a
    gradient through it (saliency on an eval-mode network) is right, only slower than training's own forms."""
    library = _cached_library()[0]
    if not library:
        raise FastConvUnavailable(_cached_library()[1])
    expand = _kernel_ops("pw", 1)[1]
    grad_bias_relu6 = _bias_grad_ops()[1]
    depthwise_grad = ops.Custom(f"{library}:dw_bias_relu6_grad_s{stride}", out_shape=lambda dy, y, x, w: (x, w, (w[0],)),
                                out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")
    grad_input = ops.Custom(f"{library}:pw_grad_input_s1", out_shape=lambda dy, w, x: x, out_dtype=_same_dtype,
                            func_type="aot")
    grad_weight = ops.Custom(f"{library}:pw_grad_weight_s1", out_shape=lambda x, dy: (dy[1], x[1], 1, 1),
                             out_dtype=_same_dtype, func_type="aot")

    def bprop(x, expand_weight, expand_bias, weight, bias, out, dout):
        hidden = expand(x, expand_weight, expand_bias)
        dhidden, dweight, dbias = depthwise_grad(dout, out, hidden, weight)
        dz, dexpand_bias = grad_bias_relu6(dhidden, hidden)
        return grad_input(dz, expand_weight, x), grad_weight(x, dz), dexpand_bias, dweight, dbias

    forward_shape = _forward_shape(stride)
    return ops.Custom(f"{library}:pw_dw_forward_s{stride}", out_shape=lambda x, we, be, wd, bd: forward_shape(x, we),
                      out_dtype=_same_dtype, func_type="aot", bprop=bprop)


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
        self.kernel, self.kernel_bias_relu6, _ = _kernel_ops(kind, stride)
        # One channel is the dense kind above, and depthwise too: the relu6-input form is depthwise only.
        depthwise = group == in_channels == out_channels
        self.kernel_relu6_input = _relu6_input_op(stride) if depthwise else None
        self.kernel_after_expansion = _expansion_depthwise_op(stride) if depthwise else None

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.kernel(x, self.weight)

    def bias_relu6(self, x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        """relu6(conv(x, weight) + bias) in one pass, with `weight` in place of the layer's own (a folded BN)."""
        return self.kernel_bias_relu6(x, weight, bias)

    def relu6_input_bias_relu6(self, z: ms.Tensor, input_bias: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        """relu6(conv(relu6(z + input_bias), weight) + bias) in one pass (depthwise only): the layer before's
        folded bias and ReLU6 applied here, so that layer stores its product z alone and its ReLU6
        gradient is taken in this layer's backward pass (ms_impl/mobilenetv2.py, InvertedResidual)."""
        return self.kernel_relu6_input(z, input_bias, weight, bias)

    def after_expansion(self, x: ms.Tensor, expand_weight: ms.Tensor, expand_bias: ms.Tensor, weight: ms.Tensor,
                        bias: ms.Tensor) -> ms.Tensor:
        """relu6(conv(relu6(conv1x1(x, expand_weight) + expand_bias), weight) + bias) in one pass (depthwise only,
        for inference): the expanding 1x1 layer before this one computed a band of rows at a time, its output
        never stored (ms_impl/mobilenetv2.py, InvertedResidual). Its gradient recomputes the expansion."""
        return self.kernel_after_expansion(x, expand_weight, expand_bias, weight, bias)


class FastConv1x1(nn.Conv2d):
    """1x1, stride 1, no bias, not grouped: an nn.Conv2d computed by our CPU kernels (packed matrix
    products). MindSpore's own CPU kernel runs these through oneDNN on NCHW tensors, the largest cost
    of the twin once the 3x3 layers were ours."""

    def __init__(self, in_channels: int, out_channels: int, weight_init) -> None:
        super().__init__(in_channels, out_channels, 1, 1, pad_mode="pad", padding=0, group=1, has_bias=False,
                         weight_init=weight_init)
        self.kernel, self.kernel_bias_relu6, self.kernel_bias = _kernel_ops("pw", 1)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.kernel(x, self.weight)

    def bias_relu6(self, x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        """relu6(conv(x, weight) + bias) in one pass, with `weight` in place of the layer's own (a folded BN)."""
        return self.kernel_bias_relu6(x, weight, bias)

    def with_weight(self, x: ms.Tensor, weight: ms.Tensor) -> ms.Tensor:
        """conv(x, weight), with `weight` in place of the layer's own (a folded BN whose bias comes later)."""
        return self.kernel(x, weight)

    def with_bias(self, x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        """conv(x, weight) + bias in one pass (a folded BatchNorm without ReLU6: the linear projections)."""
        return self.kernel_bias(x, weight, bias)


@functools.lru_cache(maxsize=None)
def _batch_norm_ops(relu6: bool) -> ops.Custom:
    """The training BatchNorm (+ ReLU6) forward, with its bprop:
    (x, gamma, beta, moving_mean, moving_variance, [eps, momentum]) -> (y, saved, new moving_mean,
    new moving_variance); saved[2, C] = (batch mean, 1 / sqrt(batch variance + eps))."""
    library = _cached_library()[0]
    if not library:
        raise FastConvUnavailable(_cached_library()[1])
    prefix = "bn_relu6" if relu6 else "bn"
    grad = ops.Custom(f"{library}:{prefix}_train_grad", out_shape=lambda dy, x, gamma, *rest: (x, gamma, gamma),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

    def bprop(x, gamma, beta, moving_mean, moving_variance, constants, out, dout):
        # Only y is differentiated: the other outputs feed the moving statistics.
        saved = out[1]
        dx, dgamma, dbeta = grad(dout[0], x, gamma, beta, saved) if relu6 else grad(dout[0], x, gamma, saved)
        return (dx, dgamma, dbeta, ops.zeros_like(moving_mean), ops.zeros_like(moving_variance),
                ops.zeros_like(constants))

    return ops.Custom(f"{library}:{prefix}_train_forward",
                      out_shape=lambda x, gamma, *rest: (x, (2, x[1]), gamma, gamma),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 4, func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def _affine_op(relu6: bool) -> ops.Custom:
    """(x, scale[C], shift[C]) -> x * scale + shift (relu6: clamped to [0, 6]) in one pass, with its bprop
    in one pass too: BatchNorm on its moving statistics (eval mode, or training with frozen BatchNorm)."""
    library = _cached_library()[0]
    if not library:
        raise FastConvUnavailable(_cached_library()[1])
    name = "affine_relu6" if relu6 else "affine"
    grad = ops.Custom(f"{library}:{name}_grad", out_shape=lambda dy, x, scale, shift: (x, scale, scale),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

    def bprop(x, scale, shift, out, dout):
        return grad(dout, x, scale, shift)

    return ops.Custom(f"{library}:{name}", out_shape=lambda x, scale, shift: x, out_dtype=_same_dtype,
                      func_type="aot", bprop=bprop)


class FastBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, names, init, checkpoint and moving-statistics convention) on our
    CPU kernels, forward and backward; `relu6(x)` is the same with ReLU6 fused into the pass.

    Batch statistics are used as in nn.BatchNorm2d: in training mode with `use_batch_statistics` None, or
    always with True. The moving statistics then follow MindSpore's rule, `moving = momentum * moving +
    (1 - momentum) * batch` (unbiased variance). Otherwise (eval mode; `use_batch_statistics=False`, the
    trainer's --freeze_bn, also in training) BatchNorm runs on its moving statistics, never updated, as
    one pass x * s + (beta - mean * s) with s = gamma / sqrt(var + eps) (as the folding of the 3x3
    layers); its gradients for gamma and beta follow from those of s and the shift.
    """

    def __init__(self, num_features: int, eps: float, momentum: float) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.train_kernel = _batch_norm_ops(False)
        self.train_relu6_kernel = _batch_norm_ops(True)
        # self.momentum is the primitive's, 1 - the constructor's (as nn.BatchNorm2d passes it to ops.BatchNorm).
        self.kernel_constants = ms.Tensor(np.array([eps, self.momentum], dtype=np.float32))
        self.affine_kernel = _affine_op(False)
        self.affine_relu6_kernel = _affine_op(True)

    def uses_batch_statistics(self) -> bool:
        """Whether this pass normalises with the batch's statistics (and updates the moving ones)."""
        return self.use_batch_statistics is True or (self.use_batch_statistics is None and self.training)

    def _train_forward(self, x: ms.Tensor, kernel) -> ms.Tensor:
        y, _, mean, variance = kernel(x, self.gamma, self.beta, self.moving_mean, self.moving_variance,
                                      self.kernel_constants)
        y = ops.depend(y, ops.assign(self.moving_mean, ops.stop_gradient(mean)))
        return ops.depend(y, ops.assign(self.moving_variance, ops.stop_gradient(variance)))

    def _affine_forward(self, x: ms.Tensor, kernel) -> ms.Tensor:
        scale = self.gamma / ops.sqrt(ops.stop_gradient(self.moving_variance) + self.eps)
        return kernel(x, scale, self.beta - ops.stop_gradient(self.moving_mean) * scale)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.uses_batch_statistics():
            return self._train_forward(x, self.train_kernel)
        return self._affine_forward(x, self.affine_kernel)

    def relu6(self, x: ms.Tensor) -> ms.Tensor:
        """relu6(batch_norm(x)) in one kernel pass (forward and backward)."""
        if self.uses_batch_statistics():
            return self._train_forward(x, self.train_relu6_kernel)
        return self._affine_forward(x, self.affine_relu6_kernel)


def batch_norm(num_features: int, eps: float, momentum: float, fast_conv: str = "off") -> nn.BatchNorm2d:
    """nn.BatchNorm2d (4-D input), or FastBatchNorm2d where the kernels apply and `fast_conv` allows."""
    if fast_conv not in FAST_CONV_MODES:
        raise ValueError(f"fast_conv must be one of {FAST_CONV_MODES}, got {fast_conv!r}")
    if resolve_fast_conv(fast_conv):
        return FastBatchNorm2d(num_features, eps, momentum)
    return nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, weight_init,
           fast_conv: str = "off") -> nn.Conv2d:
    """nn.Conv2d (symmetric padding, no bias), or FastConv3x3 / FastConv1x1 where the kernels apply and
    `fast_conv` allows."""
    if fast_conv not in FAST_CONV_MODES:
        raise ValueError(f"fast_conv must be one of {FAST_CONV_MODES}, got {fast_conv!r}")
    depthwise = groups == in_channels == out_channels
    fits = kernel_size == 3 and stride in (1, 2) and (groups == 1 or depthwise)
    if fits and resolve_fast_conv(fast_conv):
        return FastConv3x3(in_channels, out_channels, stride, groups, weight_init)
    if kernel_size == 1 and stride == 1 and groups == 1 and resolve_fast_conv(fast_conv):
        return FastConv1x1(in_channels, out_channels, weight_init)
    # pad_mode='pad' with symmetric padding: 'same' pads bottom/right only at stride 2.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="pad",
                     padding=(kernel_size - 1) // 2, group=groups, has_bias=False, weight_init=weight_init)

