"""Weight averaging of a fine-tuning run's last epochs (a stand-in for weight EMA), scored like the run's final evaluation.

    flock /tmp/heavy.lock python experiments/average_checkpoints.py --runs runs/cv_ft/runs --name blocks_freeze4 \
        --folds 5 --epochs 8,9,10 [--work runs/cv_ft] [--split blocks] [--tta flip+whole]

For each fold k, the model weights of `<runs>/<name>_fold<k>/checkpoints/mobilenetv2-<e>_<steps>.ckpt` (the
epochs given) are averaged (every weight and BatchNorm statistic; optimizer state dropped), written to a
temporary checkpoint and evaluated with `ms_impl/eval.py --tta T` on the fold's val split
(`<work>/<split>_fold<k>_of_<folds>`). Prints each fold's top-1 next to the run's own final top-1, then the means.
With the cosine schedule's LR near zero over the last epochs this is what an EMA of the weights over those
steps would give, up to the weighting.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def average_weights(paths):
    import mindspore as ms

    loaded = [ms.load_checkpoint(str(p)) for p in paths]
    names = [n for n in loaded[0] if n.startswith(("features.", "dense."))]  # the model; not moments or state
    return {n: np.mean([c[n].asnumpy() for c in loaded], axis=0).astype(np.float32) for n in names}


def fold_run_parser(description: str) -> argparse.ArgumentParser:
    """The options of the scripts that score weights made from cv_finetune.py's fold runs."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=Path, required=True, help="folder of the fold runs (cv_finetune.py's <work>/runs)")
    parser.add_argument("--name", required=True, help="the CV run's name (cv_finetune.py --name)")
    parser.add_argument("--work", type=Path, default=Path("runs/cv_ft"), help="cv_finetune.py --work (the fold folders)")
    parser.add_argument("--split", default="blocks")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--tta", default="flip+whole")
    return parser


def score_weights(weights: dict, args, fold: int, folder: Path) -> float:
    """Top-1 of `weights` on fold `fold`'s val split, evaluated by ms_impl/eval.py like the run's final evaluation."""
    import mindspore as ms

    ckpt, report = folder / f"fold{fold}.ckpt", folder / f"report{fold}"
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in weights.items()], str(ckpt))
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(repo / "ms_impl" / "eval.py"), "--checkpoint", str(ckpt), "--device", "CPU",
                    "--data_path", str(args.work / f"{args.split}_fold{fold}_of_{args.folds}"), "--tta", args.tta,
                    "--report_dir", str(report)], check=True, stdout=subprocess.DEVNULL)
    top1 = json.loads((report / "eval.json").read_text())["top1"]
    shutil.rmtree(report)
    ckpt.unlink()
    return top1


def main() -> int:
    parser = fold_run_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="8,9,10", help="comma-separated epochs to average")
    args = parser.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    averaged, own = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for fold in range(args.folds):
            run = args.runs / f"{args.name}_fold{fold}"
            summary = json.loads((run / "summary.json").read_text())
            paths = [run / "checkpoints" / f"mobilenetv2-{e}_{summary['steps_per_epoch']}.ckpt" for e in epochs]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:  # the trainer keeps the newest keep_checkpoint_max epochs only
                sys.exit(f"error: {', '.join(missing)}: not found (rotated away? see keep_checkpoint_max)")
            averaged.append(score_weights(average_weights(paths), args, fold, Path(tmp)))
            own.append(summary["final"]["val_top1"])
            print(f"fold {fold}: averaged epochs {args.epochs} top-1 {averaged[-1]:.4f}, the run's last weights {own[-1]:.4f}",
                  flush=True)
    print(f"{args.name}: mean top-1 averaged {100 * np.mean(averaged):.1f}%, last weights {100 * np.mean(own):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
