"""The MindSpore twin's eval forward with the kernels built for several -march targets (MBV2_KERNEL_MARCH).

    flock /tmp/heavy.lock python experiments/march_eval_speed.py [--marches native,x86-64-v3,x86-64-v2] \
        [--rounds 3] [--steps 3] [--batch 32] [--image-size 224] [--threads 2]

A library is loaded once per process, so each target runs in processes of its own, started in turn (A, B, C,
A, B, C, ...: load from other processes hits every target alike). Each process builds (or finds in the cache)
its library, loads the bench's weights and batch (written once by `python -m parity bench`'s worker), runs one
untimed forward (graph compilation) and `--steps` timed ones (GRAPH mode, fast_conv on, `--threads` threads).
Prints each target's img/s, median and range over all its timed steps, the ratio to the first target, and the
load average. A target the compiler or this CPU cannot take is reported with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(settings: SimpleNamespace, folder: Path, steps: int) -> None:
    """In a process of its own: the forward times of the twin on this process's kernel library, as JSON."""
    from ms_impl.fast_conv import kernel_library
    from parity.harness import bench_worker as worker

    peer = worker.MindSporePeer(settings, folder, worker.MS_TWIN)
    peer.eval()  # graph compilation, untimed
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        peer.eval()
        times.append(time.perf_counter() - start)
    print(json.dumps({"library": kernel_library().name, "seconds": times}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marches", default="native,x86-64-v3,x86-64-v2")
    parser.add_argument("--rounds", type=int, default=3, help="processes per target, started in turn")
    parser.add_argument("--steps", type=int, default=3, help="timed forwards per process")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # the inputs folder, in a child process
    args = parser.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    os.environ["OMP_NUM_THREADS"] = os.environ["MBV2_KERNEL_THREADS"] = str(args.threads)
    settings = SimpleNamespace(batch=args.batch, image_size=args.image_size, width=1.0, num_classes=1000,
                               threads=args.threads, fast_conv="on", mode="graph", compile_backend="inductor",
                               weights="", data_path="")
    if args.child:
        child(settings, Path(args.child), args.steps)
        return
    marches = [m.strip() for m in args.marches.split(",") if m.strip()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    print(f"# twin eval forward per -march target, batch {args.batch}, {args.image_size} px, {args.threads} threads, "
          f"{args.rounds} processes x {args.steps} steps each, targets in turn; load average at start "
          f"{'%.1f %.1f %.1f' % os.getloadavg()}", flush=True)
    times = {march: [] for march in marches}
    failed, libraries = {}, {}
    with tempfile.TemporaryDirectory(prefix="march-eval-") as folder:
        subprocess.run([sys.executable, "-m", "parity.harness.bench_worker", "--settings", json.dumps(vars(settings)),
                        "--inputs", folder, "--prepare"], check=True, env=env)
        for _ in range(args.rounds):
            for march in marches:
                if march in failed:
                    continue
                result = subprocess.run([sys.executable, __file__, "--child", folder, "--steps", str(args.steps),
                                         "--batch", str(args.batch), "--image-size", str(args.image_size),
                                         "--threads", str(args.threads)],
                                        capture_output=True, text=True, env=dict(env, MBV2_KERNEL_MARCH=march))
                answer = next((line for line in result.stdout.splitlines() if line.startswith("{")), "")
                if result.returncode != 0 or not answer:
                    failed[march] = ((result.stderr or result.stdout).strip().splitlines() or ["no output"])[-1][:300]
                    continue
                answer = json.loads(answer)
                libraries[march] = answer["library"]
                times[march] += answer["seconds"]
                print(f"# {march}: {' '.join(f'{args.batch / s:.1f}' for s in answer['seconds'])} img/s", flush=True)
    print(f"\n| -march | library | eval img/s, median (range) | vs {marches[0]} |\n|---|---|---|---|")
    first = statistics.median(times[marches[0]]) if times[marches[0]] else None
    for march in marches:
        if march in failed:
            print(f"| {march} | - | failed: {failed[march]} | - |")
            continue
        median = statistics.median(times[march])
        print(f"| {march} | {libraries[march]} | {args.batch / median:.1f} ({args.batch / max(times[march]):.1f}-"
              f"{args.batch / min(times[march]):.1f}) | {first / median if first else float('nan'):.2f}x |")
    print(f"\n# load average at the end {'%.1f %.1f %.1f' % os.getloadavg()}")


if __name__ == "__main__":
    main()
