"""`python -m parity bench`: the MindSpore twin against PyTorch at its best, ONNX Runtime and OpenVINO.

Peers, all with the same weights and the same random batch:

- PyTorch twin, NCHW eager (PyTorch's default);
- PyTorch twin, channels_last eager (the one-line switch a CPU user makes);
- PyTorch twin, channels_last + `torch.compile` (inductor; its compile time is
  reported separately, and the peer is skipped with the reason where it fails);
- ONNX Runtime (eval only) on the project's ONNX export of the same weights
  (`ms_impl/export.py`, MindSpore twin with its own convolutions); needs the
  optional `onnxruntime` package, skipped with the reason without it;
- OpenVINO (eval only) on the same ONNX export: CPU plugin, `--threads`,
  latency hint (one stream), float32 precision, its settings printed as the
  compiled model reports them; needs the optional `openvino` package (the
  `bench` extra), skipped with the reason where it cannot be imported or load;
- the MindSpore twin (`--fast-conv`, `--mode`), and the same twin on
  MindSpore's own kernels (`fast_conv` off: the "before" of our kernels, same
  run; left out when the twin itself runs with them off).

Every peer runs in a worker process of its own (parity/harness/bench_worker.py),
which imports only the framework it needs: PyTorch measured in a process that
also hosts MindSpore ran up to 2x slower than alone, so one process would
flatter the twin (`--one-process` shows it). The inputs (batch, weights, ONNX
export) are written once by another process, and every peer loads them.

Times a training step (forward + backward + Momentum update, smoothed cross
entropy) and an eval forward. Steps of all peers are interleaved (A, B, C, A,
B, C, ...: one process works at a time, the others wait on a pipe), so load
from other processes on a shared machine hits all alike; `--order sequential`
runs all of one peer's steps before the next peer's instead (each back to
back, as if alone: PyTorch measured that way ran faster than interleaved).
Each figure is the median over `--steps` steps after `--warmup` steps, with
the range (slowest-fastest step) beside it; the first call of each peer
(graph compilation, `torch.compile`) is reported on its own. Then the
MindSpore twin's ratio to the best PyTorch peer, ONNX Runtime and OpenVINO, and a
per-layer-type breakdown: one representative layer of each type timed alone,
forward and forward+backward, in MindSpore and in PyTorch NCHW and
channels_last, so the next bottleneck shows.

Each PyTorch peer's process runs one eval-mode forward + backward (weights and
BatchNorm statistics untouched) before anything is timed: PyTorch's CPU eval
measured 2x faster after one than before any (the memory allocator's state),
and a PyTorch user's process has usually trained or warmed up by then.

Timings belong in benchmarks like this one, never in tests. Compare ratios,
not absolute img/s, between runs on a shared machine.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from parity.core.cli import run_cli
from parity.core.errors import UserError
from parity.core.files import one_line
from parity.harness import bench_worker as worker
from parity.harness.command import (BATCH_RANGE, CLASSES_RANGE, IMAGE_SIZE_RANGE, WIDTH_RANGE, OneLineErrorParser,
                                    existing_folder, float_in, int_in, path_argument)

PT_NCHW, PT_CHANNELS_LAST, PT_COMPILED = "PyTorch NCHW eager", "PyTorch channels_last eager", \
    "PyTorch channels_last + torch.compile"
ORT = "ONNX Runtime (project's ONNX export)"
OPENVINO = "OpenVINO (the same ONNX export)"
MS_TWIN = "MindSpore twin"
MS_UNFOLDED = "MindSpore twin, eval BN not folded"  # eval as before the folding: what it gains, same run
# The twin on MindSpore's own CPU kernels: where it stood before ms_impl/fast_conv.py, measured in the same run.
MS_OWN_KERNELS = "MindSpore twin, MindSpore's own kernels (fast_conv off)"
PYTORCH_PEERS = (PT_NCHW, PT_CHANNELS_LAST, PT_COMPILED)
PEER_NAMES = {worker.PT_NCHW: PT_NCHW, worker.PT_CHANNELS_LAST: PT_CHANNELS_LAST, worker.PT_COMPILED: PT_COMPILED,
              worker.ORT: ORT, worker.OPENVINO: OPENVINO, worker.MS_TWIN: MS_TWIN,
              worker.MS_OWN_KERNELS: MS_OWN_KERNELS, worker.MS_UNFOLDED: MS_UNFOLDED}


def _parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m parity bench", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int_in(*BATCH_RANGE), default=32, help="images per step")
    parser.add_argument("--image-size", type=int_in(*IMAGE_SIZE_RANGE), default=224, help="input height and width")
    parser.add_argument("--width", type=float_in(*WIDTH_RANGE, low_open=True), default=1.0, help="width multiplier")
    parser.add_argument("--steps", type=int_in(1, 100_000), default=5, help="timed steps per measurement (median and range)")
    parser.add_argument("--warmup", type=int_in(0, 100_000), default=2,
                        help="untimed steps first (the first one is reported)")
    parser.add_argument("--threads", type=int_in(0, 4096), default=0, help="threads for every peer (0: their defaults)")
    parser.add_argument("--fast-conv", choices=("auto", "on", "off"), default="auto",
                        help="MindSpore twin's 3x3 kernels (ms_impl/fast_conv.py)")
    parser.add_argument("--mode", choices=("graph", "pynative"), default="graph", help="MindSpore execution mode")
    parser.add_argument("--num-classes", type=int_in(*CLASSES_RANGE), default=1000, help="classes of the head")
    parser.add_argument("--order", choices=("interleaved", "sequential"), default="interleaved",
                        help="whole-network steps: interleaved across peers (A, B, C, A, ...: load hits all alike) or "
                             "sequential (all of A's steps, then B's: each peer back to back, as if alone)")
    parser.add_argument("--one-process", action="store_true",
                        help="host every peer in one worker process (as the bench did before: PyTorch ran slower "
                             "there than alone) instead of one process per peer")
    parser.add_argument("--skip-breakdown", action="store_true", help="only the whole-network figures")
    parser.add_argument("--skip-compile", action="store_true",
                        help="leave out the torch.compile peer (its compile takes minutes on a small machine)")
    parser.add_argument("--skip-train", action="store_true", help="only the eval forward of the whole network")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled peer (inductor: PyTorch's best on CPU)")
    parser.add_argument("--data-path", type=existing_folder, default="",
                        help="also time the trainer's training data pipeline alone (decode, augment, batch; "
                             "one epoch of <data-path>/train at --image-size and --batch, configs/garbage26_cpu.yaml "
                             "workers): the img/s it can feed a training step")
    parser.add_argument("--kernels-baseline", type=path_argument, default="",
                        help="instead of the networks: time our kernel entry points alone (called as MindSpore "
                             "calls them), this library against a baseline build of them, e.g. an older "
                             "conv3x3.cc built with the flags of ms_impl/fast_conv.py; steps interleaved")
    parser.add_argument("--weights", type=path_argument, default="",
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


def _interleave(runs: Dict[str, Callable[[], float]], warmup: int, steps: int, sequential: bool = False) \
        -> Dict[str, Timing]:
    """Times every run (each returns the seconds its call took), their steps interleaved (or, `sequential`,
    all steps of one run before the next run's); a run that raises is skipped with its reason."""
    if sequential:
        timings: Dict[str, Timing] = {}
        for name, run in runs.items():
            timings.update(_interleave({name: run}, warmup, steps))
        return timings
    timings = {name: Timing() for name in runs}
    active = dict(runs)
    for round_index in range(max(1, warmup) + steps):
        for name, run in list(active.items()):
            try:
                elapsed = run()
            except Exception as exc:  # a peer that cannot run here (compiler, export, runtime) is reported, not fatal
                timings[name].skipped = one_line(exc, with_type=False)
                del active[name]
                continue
            if round_index == 0:
                timings[name].first_call = elapsed
            elif round_index >= max(1, warmup):
                timings[name].steps.append(elapsed)
    return timings


def _wall_time(call: Callable[[], None]) -> Callable[[], float]:
    def timed() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start
    return timed


class Workers:
    """The bench's worker processes (parity/harness/bench_worker.py), each hosting some peers; a request
    goes to the process that hosts its peer and returns the seconds the call took there."""

    def __init__(self, args: argparse.Namespace, folder: str, groups: Sequence[Sequence[str]]) -> None:
        self.settings = _worker_settings(args)
        self.folder = folder
        self.hosts: Dict[str, subprocess.Popen] = {}
        self.logs: Dict[str, str] = {}
        self.processes: List[subprocess.Popen] = []
        for index, group in enumerate(groups):
            log = os.path.join(folder, f"worker-{index}.log")
            with open(log, "wb") as stderr:
                process = subprocess.Popen(
                    _worker_command(self.settings, folder) + ["--peers", ",".join(group)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                    env=_worker_environment(), start_new_session=True)  # Ctrl+C reaches the bench, which ends them
            self.processes.append(process)
            for peer in group:
                self.hosts[peer], self.logs[peer] = process, log

    def request(self, peer: str, run: str) -> dict:
        process = self.hosts[peer]
        try:
            process.stdin.write(f"{peer} {run}\n")
            process.stdin.flush()
            answer = process.stdout.readline()
        except OSError:
            answer = ""
        if not answer:
            return {"failed": f"its process ended (exit {process.poll()}): {_last_line(self.logs[peer])}"}
        return json.loads(answer)

    def timed(self, peer: str, run: str) -> Callable[[], float]:
        def call() -> float:
            answer = self.request(peer, run)
            if "failed" in answer:
                raise RuntimeError(answer["failed"])
            return answer["seconds"]
        return call

    def close(self) -> None:
        for process in self.processes:
            try:
                process.stdin.close()
            except OSError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _worker_settings(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in ("batch", "image_size", "width", "num_classes", "threads",
                                                   "fast_conv", "mode", "compile_backend", "weights", "data_path")}


def _worker_command(settings: dict, folder: str) -> List[str]:
    return [sys.executable, "-m", "parity.harness.bench_worker", "--settings", json.dumps(settings),
            "--inputs", folder]


def _worker_environment() -> Dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the project, importable as in this process
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("GLOG_v", "3")
    return env


def _last_line(path: str) -> str:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:200] if lines else "no output"


class BadInput(UserError):
    """An input of the user's that the bench cannot use; its text is the worker's one error line, less `error: `."""


def _prepare_inputs(args: argparse.Namespace, folder: str) -> None:
    """The batch, the weights and their ONNX export, written once by a process of their own."""
    result = subprocess.run(_worker_command(_worker_settings(args), folder) + ["--prepare"], capture_output=True,
                            text=True, env=_worker_environment())
    if result.returncode == 2:  # bad input (--weights): the worker's own one-line error
        raise BadInput(result.stderr.strip().splitlines()[-1].removeprefix("error: "))
    if result.returncode != 0:
        raise RuntimeError(f"preparing the inputs failed (exit {result.returncode}): "
                           + ((result.stderr or result.stdout).strip().splitlines() or ["no output"])[-1][:300])


def _peer_groups(args: argparse.Namespace) -> List[List[str]]:
    """Which worker process hosts which peers: one each (default), or all in one (`--one-process`)."""
    peers = [worker.PT_NCHW, worker.PT_CHANNELS_LAST] + ([] if args.skip_compile else [worker.PT_COMPILED]) + \
        [worker.ORT, worker.OPENVINO, worker.MS_TWIN, worker.MS_OWN_KERNELS, worker.MS_UNFOLDED] + \
        ([worker.DATA] if args.data_path else [])
    return [peers] if args.one_process else [[peer] for peer in peers]


def _whole_network(args: argparse.Namespace, workers: Workers) -> Tuple[Dict[str, Timing], Dict[str, Timing]]:
    """(train timings, eval timings) of every peer, by its printed name."""
    hosted = [peer for peer in PEER_NAMES if peer in workers.hosts]
    # Eval first, while every peer's weights are still the same.
    sequential = args.order == "sequential"
    evaluation = _interleave({PEER_NAMES[p]: workers.timed(p, "eval") for p in hosted}, args.warmup, args.steps,
                             sequential)
    if args.skip_compile:
        evaluation[PT_COMPILED] = Timing(skipped="--skip-compile")
    if args.skip_train:
        return {name: Timing(skipped="--skip-train") for name in evaluation}, evaluation
    trainable = [p for p in hosted if p not in (worker.ORT, worker.OPENVINO, worker.MS_UNFOLDED)]
    train = _interleave({PEER_NAMES[p]: workers.timed(p, "train") for p in trainable}, args.warmup, args.steps,
                        sequential)
    train[ORT] = train[OPENVINO] = Timing(skipped="inference only")
    train[MS_UNFOLDED] = Timing(skipped="training with batch statistics never folds")
    if args.skip_compile:
        train[PT_COMPILED] = Timing(skipped="--skip-compile")
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
    for engine, label in ((ORT, "ONNX Runtime"), (OPENVINO, "OpenVINO")):
        peer = timings.get(engine)
        if peer is not None and not peer.skipped:
            parts.append(f"{ms.rate(batch) / peer.rate(batch):.2f}x {label}")
    unfolded = timings.get(MS_UNFOLDED)
    if unfolded is not None and not unfolded.skipped:
        parts.append(f"{ms.rate(batch) / unfolded.rate(batch):.2f}x itself without the BN folding")
    own = timings.get(MS_OWN_KERNELS)
    if own is not None and not own.skipped:
        parts.append(f"{ms.rate(batch) / own.rate(batch):.2f}x itself on MindSpore's own kernels")
    return f"- {what}: MindSpore twin " + ", ".join(parts or ["(no peer ran)"])


def _breakdown(args: argparse.Namespace, workers: Workers) -> List[Tuple[str, Dict[str, Tuple[Timing, Timing]]]]:
    """Per layer: {peer: (forward, forward+backward timings)} for MindSpore, PyTorch NCHW and channels_last,
    each timed in the process of that peer."""
    hosts = {"MS": worker.MS_TWIN, "NCHW": worker.PT_NCHW, "CL": worker.PT_CHANNELS_LAST}
    steps = max(1, min(args.steps, 5))
    rows = []
    for index, (label, _) in enumerate(worker.layer_cases(args.width, args.image_size)):
        fwd = _interleave({key: workers.timed(peer, f"layer-fwd:{index}") for key, peer in hosts.items()},
                          args.warmup, steps)
        bwd = _interleave({key: workers.timed(peer, f"layer-bwd:{index}") for key, peer in hosts.items()},
                          args.warmup, steps)
        rows.append((label, {key: (fwd[key], bwd[key]) for key in hosts}))
    return rows


def _milliseconds(timing: Timing) -> str:
    """Median ms of a breakdown cell, or the reason it did not run (one failing layer does not end the table)."""
    if timing.skipped or not timing.steps:
        return f"failed: {timing.skipped or 'no step'}"
    return f"{statistics.median(timing.steps) * 1e3:.3g}"


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
        *((f"pointwise grad weight {k}->{m}@{size}, batch {batch}", "pw_grad_weight_s1", (batch, k, size, size),
           (m, k, 1, 1), 1) for k, m, size in ((16, 96, 112), (96, 24, 56), (144, 24, 56), (24, 144, 56), (192, 32, 28),
                                                (32, 192, 28), (384, 64, 14), (960, 320, 7))),
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

        timings = _interleave({key: _wall_time(functools.partial(run, lib, key)) for key, lib in libraries.items()},
                              args.warmup, args.steps)
        worst = float(np.abs(outputs["current"] - outputs["baseline"]).max() / max(np.abs(outputs["baseline"]).max(), 1e-12))
        for timing in timings.values():
            timing.steps = [t / repeats for t in timing.steps]
        rows.append((f"{label} (outputs differ by {worst:.1e} relative)", timings["current"], timings["baseline"]))
    return rows


def _kernels_only(args: argparse.Namespace) -> int:
    """`--kernels-baseline`: our kernel entry points alone, this library against a baseline build."""
    if not os.path.isfile(args.kernels_baseline):
        print(f"error: --kernels-baseline: {args.kernels_baseline} is not a file", file=sys.stderr)
        return 2
    if args.threads > 0:  # before MindSpore starts its pools: oneDNN and OpenMP read these at start
        os.environ["OMP_NUM_THREADS"] = os.environ["MBV2_KERNEL_THREADS"] = str(args.threads)
    import mindspore as ms

    from ms_impl.fast_conv import resolve_fast_conv

    ms.set_device("CPU")
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


def _load_average() -> str:
    # Other processes on a shared machine skew absolute figures (and, less, the ratios): say how busy it was.
    try:
        return "%.1f" % os.getloadavg()[0]
    except OSError:
        return "n/a"


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)  # every value range-checked: bad input is one line, exit 2
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    if args.kernels_baseline:
        return _kernels_only(args)
    with tempfile.TemporaryDirectory(prefix="parity-bench-") as folder:
        try:
            _prepare_inputs(args, folder)
        except BadInput as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        workers = Workers(args, folder, _peer_groups(args))
        try:
            _report(args, workers)
        finally:
            workers.close()
    return 0


def _report(args: argparse.Namespace, workers: Workers) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = "all peers in one process" if args.one_process else "each peer in a process of its own"
    print(f"# parity bench, {stamp}, {platform.machine()} {os.cpu_count()} CPUs, threads {args.threads or 'default'}, "
          f"{where}, load average {_load_average()}")
    print(f"# batch {args.batch}, {args.image_size}x{args.image_size}, width {args.width}, "
          f"median (range) of {args.steps} {args.order} steps after {args.warmup} warm-up")
    for peer, name in PEER_NAMES.items():  # builds every peer (untimed): versions, or why it cannot run
        if peer in workers.hosts:
            answer = workers.request(peer, "describe")
            print(f"# {name}: {answer.get('describe') or 'cannot run: ' + answer.get('failed', '?')}")
    print()
    train, evaluation = _whole_network(args, workers)
    print("| peer | train img/s | eval img/s | first call s (train / eval) |")
    print("|---|---|---|---|")
    for name in (*PYTORCH_PEERS, ORT, OPENVINO, MS_TWIN, MS_OWN_KERNELS, MS_UNFOLDED):
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
        for label, cells in _breakdown(args, workers):
            fwd = " | ".join(_milliseconds(cells[peer][0]) for peer in ("MS", "NCHW", "CL"))
            bwd = " | ".join(_milliseconds(cells[peer][1]) for peer in ("MS", "NCHW", "CL"))
            print(f"| {label} | {fwd} | {bwd} |", flush=True)
    if args.data_path:
        answer = workers.request(worker.DATA, "data")
        if "failed" in answer:
            print(f"\ntraining data pipeline alone: failed: {answer['failed']}")
        else:
            print(f"\ntraining data pipeline alone ({args.data_path}/train, {answer['images']} images, "
                  f"{answer['workers']} workers, {args.image_size} px, batch {args.batch}): "
                  f"{answer['images'] / answer['seconds']:.3g} img/s")
    print(f"\n# load average at the end: {_load_average()}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
