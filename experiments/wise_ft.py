"""Weight-space interpolation of a frozen-backbone run and a fine-tuned run (WiSE-FT), scored like the run.

    flock /tmp/heavy.lock python experiments/wise_ft.py --runs runs/cv_ft/runs --base_name blocks_frozen \
        --name blocks_freeze4 --alphas 0.25,0.5,0.75 [--work runs/cv_ft] [--split blocks] [--tta flip+whole]

For each fold k the model weights of `<runs>/<base_name>_fold<k>` (the frozen recipe: ImageNet backbone and a
head trained on its features, nearly what fine-tuning's stage 1 starts stage 2 from) and `<runs>/<name>_fold<k>` (fine-tuned from the same backbone), both from
`checkpoints/mobilenetv2-last.ckpt`, are mixed as (1 - alpha) x base + alpha x fine-tuned, every weight and
BatchNorm statistic, and evaluated with `ms_impl/eval.py --tta T` on the fold's val split. alpha 0 is the
frozen run, alpha 1 the fine-tuned one. With the fine-tuning recipe's frozen BatchNorm the two runs share their
statistics, so the mix is a plain interpolation of weights. Prints each fold's top-1 per alpha, then the means.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def model_weights(path: Path) -> dict:
    import mindspore as ms

    return {n: p.asnumpy().copy() for n, p in ms.load_checkpoint(str(path)).items() if n.startswith(("features.", "dense."))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of the fold runs (cv_finetune.py's <work>/runs)")
    parser.add_argument("--base_name", required=True, help="the frozen-backbone CV run's name (alpha 0)")
    parser.add_argument("--name", required=True, help="the fine-tuning CV run's name (alpha 1)")
    parser.add_argument("--work", type=Path, default=Path("runs/cv_ft"), help="cv_finetune.py --work (the fold folders)")
    parser.add_argument("--split", default="blocks")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--alphas", default="0.25,0.5,0.75", help="comma-separated weights of the fine-tuned run")
    parser.add_argument("--tta", default="flip+whole")
    args = parser.parse_args()
    import mindspore as ms

    repo = Path(__file__).resolve().parents[1]
    alphas = [float(a) for a in args.alphas.split(",")]
    scores = {a: [] for a in alphas}
    ends = {"base": [], "fine-tuned": []}
    with tempfile.TemporaryDirectory() as tmp:
        for fold in range(args.folds):
            base_run, tuned_run = (args.runs / f"{n}_fold{fold}" for n in (args.base_name, args.name))
            base = model_weights(base_run / "checkpoints" / "mobilenetv2-last.ckpt")
            tuned = model_weights(tuned_run / "checkpoints" / "mobilenetv2-last.ckpt")
            if base.keys() != tuned.keys():
                sys.exit(f"error: fold {fold}: the two runs' checkpoints hold different parameters")
            moved = [n for n in base if "moving_" in n and not np.array_equal(base[n], tuned[n])]
            print(f"fold {fold}: {len(moved)} BatchNorm statistics differ between the runs", flush=True)
            ends["base"].append(json.loads((base_run / "summary.json").read_text())["final"]["val_top1"])
            ends["fine-tuned"].append(json.loads((tuned_run / "summary.json").read_text())["final"]["val_top1"])
            for alpha in alphas:
                ckpt = Path(tmp) / f"fold{fold}_{alpha}.ckpt"
                mixed = [{"name": n, "data": ms.Tensor(((1 - alpha) * base[n] + alpha * tuned[n]).astype(np.float32))}
                         for n in base]
                ms.save_checkpoint(mixed, str(ckpt))
                report = Path(tmp) / f"report{fold}_{alpha}"
                subprocess.run([sys.executable, str(repo / "ms_impl" / "eval.py"), "--checkpoint", str(ckpt),
                                "--device", "CPU", "--data_path", str(args.work / f"{args.split}_fold{fold}_of_{args.folds}"),
                                "--tta", args.tta, "--report_dir", str(report)], check=True, stdout=subprocess.DEVNULL)
                scores[alpha].append(json.loads((report / "eval.json").read_text())["top1"])
            print(f"fold {fold}: base {ends['base'][-1]:.4f}, fine-tuned {ends['fine-tuned'][-1]:.4f}, "
                  + ", ".join(f"alpha {a}: {scores[a][-1]:.4f}" for a in alphas), flush=True)
    print(f"means: base {100 * np.mean(ends['base']):.1f}%, fine-tuned {100 * np.mean(ends['fine-tuned']):.1f}%, "
          + ", ".join(f"alpha {a}: {100 * np.mean(scores[a]):.1f}%" for a in alphas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
