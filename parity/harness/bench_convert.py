"""Benchmark: wall time of converting a 1.0x, 1000-class MobileNetV2 checkpoint both ways.

`python -m parity.harness.bench_convert [--runs N] [--width W] [--cli]`

Times `read_checkpoint` + `convert` + `write_checkpoint` (the whole job of
`mbv2-convert` minus interpreter start) for torchvision .pth -> ms-official
.ckpt and back, and reports the median of N runs. The first run also pays
for importing torch / mindspore; it is shown on its own line. `--cli` adds
one end-to-end `python -m parity.convert` process per direction (includes
interpreter start and framework imports). Target: under 2 s per conversion.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from parity.core.cli import run_cli
from parity.core.options import DashOptionParser

TARGET_S = 2.0


def _make_source(folder: Path, width: float) -> Path:
    import torch

    from pt_impl.mobilenetv2 import MobileNetV2

    path = folder / "source_tv.pth"
    torch.save(MobileNetV2(1000, width).state_dict(), path)
    return path


def _convert_once(src: Path, dst: Path, to_layout: str) -> float:
    from parity.core import converter as cv

    start = time.perf_counter()
    cv.write_checkpoint(cv.convert(cv.read_checkpoint(src), to_layout), dst, force=True)
    return time.perf_counter() - start


def _cli_once(src: Path, dst: Path) -> float:
    env = dict(os.environ, GLOG_v="3")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "parity.convert", str(src), str(dst), "--force"], env=env, cwd=root,
                   check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = DashOptionParser(prog="python -m parity.harness.bench_convert", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per direction (median reported)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier of the checkpoint")
    parser.add_argument("--cli", action="store_true", help="also time one CLI process per direction")
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")

    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        folder = Path(tmp)
        tv = _make_source(folder, args.width)
        ms_ckpt, tv_back = folder / "converted_ms.ckpt", folder / "back_tv.pth"
        directions = {"torchvision .pth -> ms-official .ckpt": (tv, ms_ckpt, "ms-official"),
                      "ms-official .ckpt -> torchvision .pth": (ms_ckpt, tv_back, "torchvision")}
        # First run of each direction: includes the lazy framework imports.
        first = {name: _convert_once(*job) for name, job in directions.items()}
        times: Dict[str, List[float]] = {name: [] for name in directions}
        for _ in range(args.runs):
            for name, job in directions.items():
                times[name].append(_convert_once(*job))
        cli = {name: _cli_once(src, dst) for name, (src, dst, _) in directions.items()} if args.cli else {}
        size_mb = tv.stat().st_size / 1e6

    print(f"MobileNetV2 {args.width}x, 1000 classes ({size_mb:.1f} MB .pth); median of {args.runs} runs")
    print("| direction | median s | min s | max s | first run s (with imports) |"
          + (" CLI process s |" if cli else ""))
    print("|---|---|---|---|---|" + ("---|" if cli else ""))
    worst = 0.0
    for name, values in times.items():
        median = statistics.median(values)
        worst = max(worst, median)
        row = f"| {name} | {median:.3f} | {min(values):.3f} | {max(values):.3f} | {first[name]:.3f} |"
        print(row + (f" {cli[name]:.2f} |" if cli else ""))
    print(f"target < {TARGET_S} s per conversion: {'met' if worst < TARGET_S else 'NOT met'} (worst median {worst:.3f} s)")
    return 0 if worst < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
