"""K-fold CV of a fine-tuning recipe on the train split only (each fold one full trainer run, ~6 min on 2 cores).

    flock /tmp/heavy.lock python experiments/cv_finetune.py --data_path D --pretrained W --folds 5 \
        [--work runs/cv_ft] [--results experiments/finetune_results.md] [-- trainer flags]

For fold k: the stratified fold k of garbage26/train (`make_fold.py`, the folds of cv_frozen.py) becomes
val, the other folds train; the trainer runs the recipe (`--pretrained W` alone: the default fine-tuning
recipe, plus any flags after --) through finetune_trial.py, which appends one row per fold to the results
file. Fold folders that exist are reused (links only), so the script can be rerun; the feature cache is
shared across runs of the same fold. Prints the mean and range of the folds' top-1 at the end.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--work", default="runs/cv_ft")
    parser.add_argument("--name", default="cv_default")
    parser.add_argument("--split", choices=("random", "blocks"), default="random", help="folds (make_fold.py --split)")
    parser.add_argument("--results", default="experiments/finetune_results.md")
    parser.add_argument("flags", nargs="*", help="trainer flags after --")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    work = Path(args.work)
    top1 = []
    for fold in range(args.folds):
        fold_dir = work / f"{args.split}_fold{fold}_of_{args.folds}"
        if not fold_dir.exists():
            subprocess.run([sys.executable, str(here / "make_fold.py"), "--data_path", args.data_path, "--output", str(fold_dir),
                            "--fold", str(fold), "--folds", str(args.folds), "--split", args.split], check=True)
        name = f"{args.name}_fold{fold}"
        subprocess.run([sys.executable, str(here / "finetune_trial.py"), "--name", name, "--data_path", str(fold_dir),
                        "--pretrained", args.pretrained, "--results", args.results, "--runs", str(work / "runs"), "--",
                        "--feature_cache_dir", str(work / f"cache_{args.split}_fold{fold}"), *args.flags], check=True)
        top1.append(json.loads((work / "runs" / name / "summary.json").read_text())["final"]["val_top1"])
    print(f"{args.name}: {args.folds}-fold CV top-1 {100 * sum(top1) / len(top1):.1f}% "
          f"({100 * min(top1):.1f}-{100 * max(top1):.1f}%), folds {[round(100 * t, 1) for t in top1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
