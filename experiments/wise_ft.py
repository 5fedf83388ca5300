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

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from average_checkpoints import fold_run_parser, score_weights  # noqa: E402  (a sibling script)


def model_weights(path: Path) -> dict:
    import mindspore as ms

    return {n: p.asnumpy().copy() for n, p in ms.load_checkpoint(str(path)).items() if n.startswith(("features.", "dense."))}


def main() -> int:
    parser = fold_run_parser(__doc__.splitlines()[0])
    parser.add_argument("--base_name", required=True, help="the frozen-backbone CV run's name (alpha 0)")
    parser.add_argument("--alphas", default="0.25,0.5,0.75", help="comma-separated weights of the fine-tuned run (--name)")
    args = parser.parse_args()
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
                mixed = {n: ((1 - alpha) * base[n] + alpha * tuned[n]).astype(np.float32) for n in base}
                scores[alpha].append(score_weights(mixed, args, fold, Path(tmp)))
            print(f"fold {fold}: base {ends['base'][-1]:.4f}, fine-tuned {ends['fine-tuned'][-1]:.4f}, "
                  + ", ".join(f"alpha {a}: {scores[a][-1]:.4f}" for a in alphas), flush=True)
    print(f"means: base {100 * np.mean(ends['base']):.1f}%, fine-tuned {100 * np.mean(ends['fine-tuned']):.1f}%, "
          + ", ".join(f"alpha {a}: {100 * np.mean(scores[a]):.1f}%" for a in alphas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
