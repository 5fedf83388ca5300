"""Training throughput with 1 process and with W msrun workers, same global batch, on the synthetic set.

    python ms_impl/bench_distributed.py [--workers 2] [--global-batch 32] [--epochs 2] [--out runs/bench_dp] [--key value ...]

Runs ms_impl/train.py once as a single process (batch = global batch) and once
under msrun with W workers (batch = global batch / W), then prints the
training img/s of the last epoch of each (the first epoch includes graph
compilation) from their metrics.csv. Extra `--key value` pairs go to both
runs (e.g. --width-mult 0.35). Writes `<out>/bench.json`.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parity.core.cli import run_cli  # noqa: E402
from parity.core.files import atomic_write_text  # noqa: E402
from parity.core.options import DashOptionParser  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "ms_impl" / "train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_epoch_img_per_s(out: Path) -> float:
    with open(out / "metrics.csv", newline="", encoding="utf-8") as f:
        return float(list(csv.DictReader(f))[-1]["train_img_per_s"])


def _run(command: List[str], out: Path) -> float:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])  # msrun starts `python`
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... exited {result.returncode}:\n{result.stderr[-2000:]}")
    print(f"  {out.name}: {time.perf_counter() - started:.0f} s wall", flush=True)
    return _last_epoch_img_per_s(out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = DashOptionParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_dp"))
    args, extra = parser.parse_known_args(argv)
    if args.global_batch % args.workers:
        print(f"error: --global-batch {args.global_batch} is not a multiple of --workers {args.workers}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    common = ["--device", "CPU", "--epochs", str(args.epochs), "--warmup-epochs", "0", "--force", "true", *extra]

    single_out = out / "workers_1"
    single = [sys.executable, str(TRAIN), *common, "--batch-size", str(args.global_batch), "--output-dir", str(single_out)]
    parallel_out = out / f"workers_{args.workers}"
    shutil.rmtree(parallel_out / "msrun_logs", ignore_errors=True)
    msrun = shutil.which("msrun", path=os.path.dirname(sys.executable)) or "msrun"
    parallel = [msrun, f"--worker_num={args.workers}", f"--local_worker_num={args.workers}", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}", "--join=True", "--cluster_time_out=120",
                f"--log_dir={parallel_out / 'msrun_logs'}", str(TRAIN), *common,
                "--batch-size", str(args.global_batch // args.workers), "--output-dir", str(parallel_out)]

    print(f"training img/s, last of {args.epochs} epochs, global batch {args.global_batch}, {os.cpu_count()} CPU cores:")
    results = {"workers_1": _run(single, single_out), f"workers_{args.workers}": _run(parallel, parallel_out)}
    for name, img_s in results.items():
        print(f"  {name}: {img_s:.1f} img/s")
    speedup = results[f"workers_{args.workers}"] / results["workers_1"]
    print(f"  speed-up with {args.workers} workers: x{speedup:.2f}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.json", json.dumps({
        "global_batch": args.global_batch, "epochs": args.epochs, "extra_args": extra, "cpu_cores": os.cpu_count(),
        "img_per_s": results, "speedup": speedup,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
