"""The MindSpore twin's eval forward in two checkouts of this project, timed in the same run.

Each checkout's twin runs in a worker process of its own (its own `ms_impl`, its own kernel library),
with the same weights and batch; the forwards alternate between the workers (one of each per round), so
load from elsewhere hits both alike. Prints img/s per checkout (median and range over the rounds, wall
time) and CPU seconds per forward (the process's user + system time: steadier than wall time on a shared
machine), and the ratio of the two.

    python experiments/eval_forward_ab.py --before ../main-before --after . --rounds 15

A checkout is any folder holding this project (a `git worktree add ../before <commit>` of an earlier commit).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# Runs in each checkout: builds the twin there, then one timed forward per line read from stdin.
WORKER = r"""
import json, sys, time
import numpy as np
import mindspore as ms
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")
from ms_impl.mobilenetv2 import MobileNetV2
batch, size, classes, seed = (int(v) for v in sys.argv[1:5])
ms.set_seed(seed)
net = MobileNetV2(num_classes=classes, fast_conv="auto")
rng = np.random.default_rng(seed)
for name, param in net.parameters_and_names():  # BatchNorm statistics a trained network could have
    if name.endswith(("moving_variance", "gamma")):
        param.set_data(ms.Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
    elif name.endswith(("moving_mean", "beta")):
        param.set_data(ms.Tensor(rng.uniform(-0.2, 0.2, param.shape).astype(np.float32)))
net.set_train(False)
x = ms.Tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
for _ in range(2):  # graph compile, then one warm step
    logits = net(x).asnumpy()
print(json.dumps({"checksum": float(np.abs(logits).sum())}), flush=True)
for _ in sys.stdin:
    cpu, wall = time.process_time(), time.perf_counter()
    net(x).asnumpy()
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}), flush=True)
"""


def start_worker(checkout: Path, args: argparse.Namespace) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(checkout), GLOG_v="3")
    return subprocess.Popen([sys.executable, "-c", WORKER, str(args.batch), str(args.image_size), str(args.num_classes),
                             str(args.seed)], cwd=checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def summary(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout timed first in each round")
    parser.add_argument("--after", type=Path, required=True, help="checkout timed second in each round")
    parser.add_argument("--rounds", type=int, default=15, help="forwards per checkout")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for checkout in (args.before, args.after):
        if not (checkout / "ms_impl" / "mobilenetv2.py").is_file():
            parser.error(f"{checkout}: not a checkout of this project (no ms_impl/mobilenetv2.py)")
    workers = {"before": start_worker(args.before.resolve(), args), "after": start_worker(args.after.resolve(), args)}
    checksums = {name: json.loads(worker.stdout.readline())["checksum"] for name, worker in workers.items()}
    times = {name: [] for name in workers}
    for _ in range(args.rounds):
        for name, worker in workers.items():
            worker.stdin.write("go\n")
            worker.stdin.flush()
            times[name].append(json.loads(worker.stdout.readline()))
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()
    print(f"# eval forward, batch {args.batch}, {args.image_size} px, {args.num_classes} classes, {args.rounds} rounds "
          f"alternating; load average at the end {os.getloadavg()[0]:.1f}")
    print(f"# logits checksum: before {checksums['before']:.6g}, after {checksums['after']:.6g}")
    for name, rows in times.items():
        rate = [args.batch / row["wall"] for row in rows]
        print(f"{name}: {summary(rate)} img/s, CPU {summary([1e3 * row['cpu'] for row in rows])} ms per forward")
    ratio = statistics.median(args.batch / r["wall"] for r in times["after"]) / statistics.median(
        args.batch / r["wall"] for r in times["before"])
    cpu_ratio = statistics.median(r["cpu"] for r in times["before"]) / statistics.median(r["cpu"] for r in times["after"])
    print(f"after / before: {ratio:.2f}x img/s (medians), {cpu_ratio:.2f}x less CPU time per forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
