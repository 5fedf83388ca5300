"""The kernel library: compiled from `ms_impl/kernels/` on first use, kept in a cache, called through ctypes.

No MindSpore here: the self-test (`selftest.py`) and the tests call the library's entry points the way
MindSpore's AOT runtime does (`call_entry_point`).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import filelock
import numpy as np

from parity.core.files import WriteError, atomic_path, one_line

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels"
# -fopenmp-simd: honour the `omp simd` loop pragmas without linking an OpenMP runtime
# (torch ships its own libgomp; two runtimes in one process is asking for trouble).
# -fvisibility=hidden: the library exports its entry points only (MBV2_EXPORT in common.h).
BASE_FLAGS = ("-O3", "-std=c++14", "-shared", "-fPIC", "-pthread", "-fopenmp-simd", "-fvisibility=hidden")
MARCH_VARIABLE = "MBV2_KERNEL_MARCH"
DEFAULT_MARCH = "native"
MARCH_EXAMPLES = "native, x86-64-v3, x86-64-v2"
MARCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")  # a compiler's -march names; also part of a file name
# Check builds of the AVX-512 code (16-float vectors) that run on a CPU without AVX-512 (kernels/common.h):
# "16" its layout from portable vector code, "16-simde" also its AVX-512 intrinsics through SIMDe's headers.
LANES_VARIABLE = "MBV2_KERNEL_LANES"
LANE_FLAGS: Dict[str, Tuple[str, ...]] = {"": (), "16": ("-DMBV2_LANES=16",), "16-simde": ("-DMBV2_SIMDE_AVX512",)}
SIMDE_HEADER = "simde/x86/avx512.h"
BUILD_TIMEOUT_S = 300  # the build takes ~10-30 s; a stalled compiler must not hold start-up for long
LOCK_TIMEOUT_S = BUILD_TIMEOUT_S + 60  # waiting for another process's build
ERROR_TAIL = 400  # characters of compiler output kept in a message
# The compiler's predefined macros for instruction-set extensions, and the /proc/cpuinfo flag of each.
ISA_MACROS: Dict[str, str] = {
    "__SSE3__": "pni", "__SSSE3__": "ssse3", "__SSE4_1__": "sse4_1", "__SSE4_2__": "sse4_2",
    "__POPCNT__": "popcnt", "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c",
    "__BMI__": "bmi1", "__BMI2__": "bmi2", "__LZCNT__": "abm", "__MOVBE__": "movbe", "__AVX512F__": "avx512f",
    "__AVX512BW__": "avx512bw", "__AVX512CD__": "avx512cd", "__AVX512DQ__": "avx512dq", "__AVX512VL__": "avx512vl",
    "__AVX512VNNI__": "avx512_vnni", "__AVX512BF16__": "avx512_bf16", "__AVX512FP16__": "avx512_fp16",
    "__AVXVNNI__": "avx_vnni",
}


class FastConvUnavailable(RuntimeError):
    """The kernels cannot be used here (no compiler, failed build, bad MBV2_KERNEL_MARCH or MBV2_KERNEL_LANES, or
    no AOT support)."""


def source_files() -> List[Path]:
    """Every file the library is built from: the .cc files (compiled) and the shared header."""
    return sorted(p for p in KERNEL_DIR.iterdir() if p.suffix in (".cc", ".h"))


def kernel_march() -> str:
    """The -march target: $MBV2_KERNEL_MARCH, else `native`. A value that cannot be one is refused here;
    whether the compiler and this CPU accept it is checked before a build (`kernel_library`)."""
    march = os.environ.get(MARCH_VARIABLE, "").strip() or DEFAULT_MARCH
    if not MARCH_NAME.match(march):
        raise FastConvUnavailable(f"{MARCH_VARIABLE}={march!r}: not a -march target (for example {MARCH_EXAMPLES})")
    return march


def kernel_lanes() -> str:
    """$MBV2_KERNEL_LANES: "" (the target's own vectors), "16" or "16-simde" (check builds, see LANE_FLAGS)."""
    lanes = os.environ.get(LANES_VARIABLE, "").strip()
    if lanes not in LANE_FLAGS:
        raise FastConvUnavailable(f"{LANES_VARIABLE}={lanes!r}: not one of "
                                  f"{', '.join(repr(v) for v in LANE_FLAGS if v)} (or unset)")
    return lanes


def compiler_flags(march: str, lanes: str = "") -> Tuple[str, ...]:
    return BASE_FLAGS + (f"-march={march}",) + LANE_FLAGS[lanes]


def _compiler() -> str:
    named = os.environ.get("CXX")
    found = shutil.which(named) if named else (shutil.which("c++") or shutil.which("g++"))
    if not found:
        raise FastConvUnavailable(f"no C++ compiler found ({'CXX=' + named if named else 'c++/g++ not on PATH'})")
    return found


def cpu_flags() -> Tuple[str, List[str]]:
    """(this CPU's identity, its instruction-set flags) from /proc/cpuinfo; ("", []) where it cannot be read."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "", []
    wanted = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))]
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return "\n".join(sorted(set(wanted))), flags


def _check_march(compiler: str, march: str) -> None:
    """A target other than `native` must be one the compiler knows, and this CPU must run its code: a library
    using instructions the CPU lacks would kill the process (SIGILL) in the self-test, not raise."""
    if march == DEFAULT_MARCH:
        return
    try:
        result = subprocess.run([compiler, f"-march={march}", "-dM", "-E", "-x", "c++", os.devnull],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FastConvUnavailable(f"{MARCH_VARIABLE}={march!r}: cannot ask {compiler}: {one_line(exc)}") from exc
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())[:ERROR_TAIL]
        raise FastConvUnavailable(f"{MARCH_VARIABLE}={march!r}: {compiler} does not accept -march={march} "
                                  f"(for example {MARCH_EXAMPLES}): {said}")
    has = cpu_flags()[1]
    if not has:
        return  # not x86 Linux: nothing to compare against
    defined = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("#define ")}
    missing = sorted(flag for macro, flag in ISA_MACROS.items() if macro in defined and flag not in has)
    if missing:
        raise FastConvUnavailable(f"{MARCH_VARIABLE}={march!r}: this CPU lacks {', '.join(missing)}, "
                                  f"which -march={march} code may use")


def _check_lanes(compiler: str, lanes: str) -> None:
    """The SIMDe check build needs SIMDe's headers (Debian/Ubuntu: libsimde-dev): one error, not a compiler log."""
    if lanes != "16-simde":
        return
    try:
        result = subprocess.run([compiler, "-E", "-x", "c++", "-o", os.devnull, "-"], input=f"#include <{SIMDE_HEADER}>\n",
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FastConvUnavailable(f"{LANES_VARIABLE}={lanes!r}: cannot ask {compiler}: {one_line(exc)}") from exc
    if result.returncode != 0:
        raise FastConvUnavailable(f"{LANES_VARIABLE}={lanes!r}: {compiler} does not find <{SIMDE_HEADER}> "
                                  f"(SIMDe's headers; Debian and Ubuntu: libsimde-dev)")


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
    """Where the built library is kept (see the package docstring for the order)."""
    if os.environ.get("MBV2_KERNEL_CACHE"):
        return Path(os.environ["MBV2_KERNEL_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "mbv2-twins" / "kernels"
    try:
        home = Path.home()  # RuntimeError/KeyError without HOME and without a passwd entry
    except (RuntimeError, KeyError, OSError):
        return _private_temp_cache()
    return home / ".cache" / "mbv2-twins" / "kernels"


def _library_name(compiler: str, march: str, lanes: str = "") -> str:
    """mbv2-kernels-<march>[-lanes<lanes>]-<hash>.so, the hash over every source file (name and text), the compiler and its
    version, the flags and, for `native` code (valid only on the CPU it was built for), this CPU."""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
        sources = [(path.name.encode(), path.read_bytes()) for path in source_files()]
    except (OSError, subprocess.SubprocessError) as exc:
        raise FastConvUnavailable(f"cannot prepare the kernel build ({compiler}, {KERNEL_DIR}): {one_line(exc)}") \
            from exc
    cpu = cpu_flags()[0] if march == DEFAULT_MARCH else ""  # a named target runs on every CPU that has it
    digest = hashlib.sha256()
    for part in (*(b for pair in sources for b in pair), compiler.encode(), version.encode(),
                 " ".join(compiler_flags(march, lanes)).encode(), (platform.machine() + "\n" + cpu).encode()):
        digest.update(part)
        digest.update(b"\0")
    check_build = f"-lanes{lanes}" if lanes else ""
    return f"mbv2-kernels-{march}{check_build}-{digest.hexdigest()[:20]}.so"


def _build(compiler: str, march: str, lanes: str, target: Path) -> None:
    sources = [str(path) for path in source_files() if path.suffix == ".cc"]
    check_build = f", {LANES_VARIABLE}={lanes}" if lanes else ""
    what = f"the kernels ({KERNEL_DIR.name}/*.cc, -march={march}{check_build}) with {compiler}"
    try:
        with atomic_path(target) as temp:
            result = subprocess.run([compiler, *compiler_flags(march, lanes), "-o", str(temp), *sources],
                                    capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if result.returncode != 0:
                output = " ".join((result.stderr or result.stdout).split())
                raise FastConvUnavailable(f"building {what} failed (exit {result.returncode}): "
                                          f"...{output[-ERROR_TAIL:]}")
    except subprocess.TimeoutExpired as exc:
        raise FastConvUnavailable(f"building {what} took over {BUILD_TIMEOUT_S} s") from exc
    except (WriteError, OSError, subprocess.SubprocessError) as exc:
        raise FastConvUnavailable(f"building {what} failed: {one_line(exc)}") from exc


def kernel_library(rebuild: bool = False) -> Path:
    """Path of the built kernel library for $MBV2_KERNEL_MARCH (and $MBV2_KERNEL_LANES), compiling it first if
    the cache lacks it (or `rebuild`).

    Builds happen under a lock file beside the library, so concurrent first
    uses (msrun workers, parallel tests) compile once and the others wait.
    """
    compiler, march, lanes = _compiler(), kernel_march(), kernel_lanes()
    _check_march(compiler, march)
    _check_lanes(compiler, lanes)
    target = cache_dir() / _library_name(compiler, march, lanes)
    if target.is_file() and not rebuild:
        return target  # also works from a read-only cache
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(target) + ".lock", timeout=LOCK_TIMEOUT_S)
        with lock:
            if rebuild or not target.is_file():  # another process may have built it while we waited
                _build(compiler, march, lanes, target)
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


def call_entry_point(library: ctypes.CDLL, name: str, arrays: Sequence, shapes=None, outputs: int = 1):
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


def set_library_threads(path: Path, threads: int) -> None:
    """The thread count of the loaded library at `path` (the same loaded copy as MindSpore's: one pool)."""
    setter = ctypes.CDLL(str(path)).mbv2_set_threads
    setter.argtypes = [ctypes.c_int]
    setter(threads)
