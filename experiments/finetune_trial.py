"""One fine-tuning trial: run the trainer, time it, append its figures to a results table (Markdown).

    flock /tmp/heavy.lock python experiments/finetune_trial.py --name NAME --data_path runs/fold0 \
        --pretrained W --results experiments/finetune_results.md -- [trainer flags ...]

Runs `python ms_impl/train.py --device CPU --data_path D --pretrained W --output_dir runs/ft/NAME --force true FLAGS`
in a subprocess, then reads the run's summary.json (final val top-1 / top-5 / category accuracy) and
metrics.csv (top-1 per epoch) and appends one row: name, data, flags, top-1, category acc, wall time,
the machine's load average at the start and end. Nothing is written when the run fails.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HEADER = ("| name | data | extra flags | top-1 | top-5 | category acc | top-1 per epoch | wall | load (start/end) |\n"
          "|---|---|---|---|---|---|---|---|---|\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--results", default="experiments/finetune_results.md")
    parser.add_argument("--runs", default="runs/ft")
    parser.add_argument("flags", nargs="*", help="trainer flags after --")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    out = Path(args.runs) / args.name
    cmd = [sys.executable, str(repo / "ms_impl" / "train.py"), "--device", "CPU", "--data_path", args.data_path,
           "--pretrained", args.pretrained, "--output_dir", str(out), "--force", "true", *args.flags]
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo)
    wall = time.perf_counter() - started
    load_end = os.getloadavg()[0]
    if proc.returncode != 0:
        print(f"error: trainer exited {proc.returncode}", file=sys.stderr)
        return proc.returncode
    final = json.loads((out / "summary.json").read_text())["final"]
    with open(out / "metrics.csv", newline="") as handle:
        per_epoch = "/".join(f"{100 * float(r['val_top1']):.1f}" for r in csv.DictReader(handle))
    results = Path(args.results)
    if not results.exists():
        results.write_text(HEADER)
    flags = " ".join(args.flags) or "(none: the recipe's defaults)"
    row = (f"| {args.name} | {args.data_path} | `{flags}` | {100 * final['val_top1']:.1f}% | {100 * final['val_top5']:.1f}% | "
           f"{100 * final['val_category_acc']:.1f}% | {per_epoch} | {wall / 60:.1f} min | {load_start:.1f}/{load_end:.1f} |\n")
    with open(results, "a") as handle:
        handle.write(row)
    print(row, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
