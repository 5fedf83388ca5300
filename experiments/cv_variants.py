"""Issue 12: frozen-backbone feature variants (views, stages, poolings, power normalisation, LR probe) on CV folds.

    flock /tmp/heavy.lock python experiments/cv_variants.py --split blocks --variants base,sqrt,...

Features come from `experiments/multi_features.py` (--features_dir). A variant says:

- `rows`: the training views, each a tuple of views whose features are averaged
  into one row per image (("center",), ("center-flip",) = the current recipe's
  mirror views; a 5-tuple = multi-crop averaged features). The same views are
  the test views, their logits averaged (flip TTA when a mirror is among them), unless `test` names others.
- `kinds`: feature kinds concatenated (avg1280, max1280, gem1280, avg320, avg160, avg96);
  every kind after the first is scaled as a block to the first one's mean feature RMS.
- `power`: signed square root of every feature (before averaging views, before centring).
- `l2`: rows scaled to unit L2 norm times sqrt(dim) after the power step.
- `head`: "sgd" (the trainer's MindSpore head, recipe center_e30_wd1e-2_flip_tta's settings)
  or "lr" (multinomial logistic regression, L-BFGS to convergence, L2 penalty `lam`
  on the weights; `lam="cv"` picks it by inner source-block CV on the training images).

Features are always centred on the training rows' mean (the recipe's feature_norm=center).
Prints mean (min-max) over folds, every fold, then the variant trained on all train and scored on val.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from cv_frozen import BASE, RECIPES, make_folds, blocked_folds
from multi_features import load_multi

C = ("center",)
CF = ("center-flip",)
S = ("squash",)
SF = ("squash-flip",)
FIVE = ("center", "tl", "tr", "bl", "br")
FIVE_F = tuple(v + "-flip" for v in FIVE)
TEN = FIVE + FIVE_F

SGD = dict(BASE, **RECIPES["center_e30_wd1e-2_flip_tta"])

VARIANTS: Dict[str, dict] = {
    "base": dict(rows=[C, CF]),
    "sqrt": dict(rows=[C, CF], power=True),
    "sqrt_l2": dict(rows=[C, CF], power=True, l2=True),
    "squash": dict(rows=[S, SF]),
    "center+squash_rows": dict(rows=[C, CF, S, SF]),
    "center+squash_avg": dict(rows=[C + S, CF + SF]),
    "sqrt_center+squash_avg": dict(rows=[C + S, CF + SF], power=True),
    "five_avg": dict(rows=[FIVE, FIVE_F]),
    "ten_avg": dict(rows=[TEN]),
    "five+squash_avg": dict(rows=[FIVE + S, FIVE_F + SF]),
    "five_rows": dict(rows=[(v,) for v in TEN]),
    "cat320": dict(rows=[C, CF], kinds=["avg1280", "avg320"]),
    "cat320_160": dict(rows=[C, CF], kinds=["avg1280", "avg320", "avg160"]),
    "cat320_160_96": dict(rows=[C, CF], kinds=["avg1280", "avg320", "avg160", "avg96"]),
    "gem": dict(rows=[C, CF], kinds=["gem1280"]),
    "avg+max": dict(rows=[C, CF], kinds=["avg1280", "max1280"]),
    "avg+gem": dict(rows=[C, CF], kinds=["avg1280", "gem1280"]),
    "lr_cv": dict(rows=[C, CF], head="lr", lam="cv"),
    "lr_cv_center+squash_rows": dict(rows=[C, CF, S, SF], head="lr", lam="cv"),
    # lam 3e-4: what the inner source-block CV chose on outer fold 0 (a full nested run took > 10 min here)
    "lr_3e-4": dict(rows=[C, CF], head="lr", lam=3e-4),
    "lr_3e-4_center+squash_rows": dict(rows=[C, CF, S, SF], head="lr", lam=3e-4),
    # train on the whole-photo views too, test on the eval crop (+ mirror) only
    "center+squash_rows_testC": dict(rows=[C, CF, S, SF], test=[C, CF]),
    "center+squash_rows_testS": dict(rows=[C, CF, S, SF], test=[S, SF]),
    "sqrt_center+squash_rows": dict(rows=[C, CF, S, SF], power=True),
    "avg+gem_center+squash_rows": dict(rows=[C, CF, S, SF], kinds=["avg1280", "gem1280"]),
    "five+squash_rows": dict(rows=[FIVE, FIVE_F, S, SF]),
    "pad": dict(rows=[("pad",), ("pad-flip",)]),
    "center+pad_rows": dict(rows=[C, CF, ("pad",), ("pad-flip",)]),
    "center+squash+pad_rows": dict(rows=[C, CF, S, SF, ("pad",), ("pad-flip",)]),
    # mixup of the head's training rows (features of two images blended, lam ~ Beta(a, a))
    "center+squash_rows_mixup0.2": dict(rows=[C, CF, S, SF], sgd=dict(mixup_alpha=0.2)),
    "center+squash_rows_mixup1": dict(rows=[C, CF, S, SF], sgd=dict(mixup_alpha=1.0)),
}


def build(feats: dict, split: str, idx: Optional[np.ndarray], views: Sequence[str], kinds: Sequence[str],
          power: bool) -> List[np.ndarray]:
    """Per kind: the features of `views` averaged (after the power step), rows `idx`."""
    out = []
    for kind in kinds:
        acc = None
        for v in views:
            x = feats["views"][v][split][kind].astype(np.float64)
            if idx is not None:
                x = x[idx]
            if power:
                x = np.sign(x) * np.sqrt(np.abs(x))
            acc = x if acc is None else acc + x
        out.append(acc / len(views))
    return out


def assemble(blocks_train: List[List[np.ndarray]], blocks_test: List[List[np.ndarray]], l2: bool):
    """Rows -> (train matrix, [test matrices]) with block scaling, optional L2, centring on train."""
    def rms(b):
        return np.sqrt(np.mean(b ** 2))

    kinds = len(blocks_train[0])
    ref = [np.concatenate([r[k] for r in blocks_train]) for k in range(kinds)]
    scales = [1.0] + [rms(ref[0]) / max(rms(ref[k]), 1e-12) for k in range(1, kinds)]

    def mat(row):
        x = np.concatenate([b * s for b, s in zip(row, scales)], axis=1)
        if l2:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) * np.sqrt(x.shape[1])
        return x

    train = np.concatenate([mat(r) for r in blocks_train])
    mean = train.mean(0, keepdims=True)
    return (train - mean).astype(np.float32), [(mat(r) - mean).astype(np.float32) for r in blocks_test]


def lr_fit(x: np.ndarray, y: np.ndarray, lam: float, classes: int, maxiter: int = 500):
    """Multinomial LR, mean cross-entropy + lam/2 ||W||^2 (bias free), L-BFGS; returns (W, b)."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    n, d = x.shape
    x = x.astype(np.float64)
    onehot = np.eye(classes)[y]

    def f(theta):
        w = theta[:d * classes].reshape(d, classes)
        b = theta[d * classes:]
        z = x @ w + b
        lse = logsumexp(z, axis=1, keepdims=True)
        loss = -(onehot * (z - lse)).sum() / n + 0.5 * lam * (w ** 2).sum()
        p = np.exp(z - lse)
        g = (p - onehot) / n
        return loss, np.concatenate([(x.T @ g + lam * w).ravel(), g.sum(0)])

    res = minimize(f, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=maxiter, gtol=1e-6))
    return res.x[:d * classes].reshape(d, classes), res.x[d * classes:]


LAMS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def fit_predict(feats: dict, variant: dict, train_idx: np.ndarray, test_split: str, test_idx: Optional[np.ndarray],
                seed: int, inner: int = 4) -> np.ndarray:
    labels = feats["train_labels"]
    classes = int(labels.max()) + 1
    kinds = variant.get("kinds", ["avg1280"])
    power = variant.get("power", False)
    rows = variant["rows"]
    tr = [build(feats, "train", train_idx, views, kinds, power) for views in rows]
    te = [build(feats, test_split, test_idx, views, kinds, power) for views in variant.get("test", rows)]
    x, tests = assemble(tr, te, variant.get("l2", False))
    y = np.tile(labels[train_idx], len(rows))
    head = variant.get("head", "sgd")
    if head == "lr":
        lam = variant.get("lam", 1e-3)
        if lam == "cv":
            lam = choose_lam(feats, variant, train_idx, seed, inner)
        w, b = lr_fit(x, y, lam, classes)
        return np.mean([t @ w + b for t in tests], axis=0)
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2Head
    from ms_impl.trainer.transfer import head_logits, train_head_on_features

    r = dict(SGD, **variant.get("sgd", {}))
    ms.set_seed(seed)
    net = MobileNetV2Head(x.shape[1], classes, dropout=0.0)
    train_head_on_features(net, x, y, epochs=r["epochs"], batch_size=r["batch_size"], lr_max=r["lr_max"],
                           warmup_epochs=r["warmup_epochs"], weight_decay=r["weight_decay"],
                           label_smoothing=r["label_smoothing"], dropout=r["dropout"], seed=seed,
                           mixup_alpha=r.get("mixup_alpha", 0.0))
    return np.mean([head_logits(net, t) for t in tests], axis=0)


def choose_lam(feats: dict, variant: dict, train_idx: np.ndarray, seed: int, inner: int) -> float:
    """The LR penalty with the best inner source-block CV accuracy on the training images `train_idx`."""
    labels = feats["train_labels"][train_idx]
    files = feats["train_files"][train_idx]
    folds = blocked_folds(labels, files, inner)
    scores = {}
    for lam in LAMS:
        v = dict(variant, lam=lam)
        correct = 0
        for held in folds:
            sub = np.setdiff1d(np.arange(len(train_idx)), held)
            logits = fit_predict(feats, v, train_idx[sub], "train", train_idx[held], seed)
            correct += int((logits.argmax(1) == labels[held]).sum())
        scores[lam] = correct / len(train_idx)
    best = max(LAMS, key=lambda lam: (scores[lam], lam))  # ties: the stronger penalty
    print(f"    inner CV: {' '.join(f'{k:g}:{s:.3f}' for k, s in scores.items())} -> {best:g}", flush=True)
    return best


def main(argv: Optional[Sequence[str]] = None) -> int:
    import mindspore as ms

    from ms_impl.trainer.classes import category_groups, load_classes
    from ms_impl.trainer.metrics import category_accuracy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features_dir", default="runs/multi_features")
    parser.add_argument("--variants", default="base")
    parser.add_argument("--split", choices=("random", "blocks"), default="blocks")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no_val", action="store_true", help="skip the full-train -> val score")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a variant field for every variant, value as JSON (e.g. lam=0.001)")
    args = parser.parse_args(argv)
    import json

    ms.set_context(mode=ms.PYNATIVE_MODE)
    names = args.variants.split(",")
    needed = sorted({v for n in names for views in VARIANTS[n]["rows"] + VARIANTS[n].get("test", []) for v in views})
    feats = load_multi(args.features_dir, needed)
    groups = category_groups(load_classes())[0]
    labels = feats["train_labels"]
    folds = make_folds(args.split, labels, feats["train_files"], args.folds, args.seed)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    print(f"| variant | {args.folds}-fold CV top-1 (min-max) | folds | val top-1 | val category acc | seconds |")
    print("|---|---|---|---|---|---|")
    for name in names:
        variant = dict(VARIANTS[name], **overrides)
        started = time.perf_counter()
        scores = []
        for held in folds:
            train_idx = np.setdiff1d(np.arange(len(labels)), held)
            logits = fit_predict(feats, variant, train_idx, "train", held, args.seed)
            scores.append(float((logits.argmax(1) == labels[held]).mean()))
        val_txt = "| - | -"
        if not args.no_val:
            val_logits = fit_predict(feats, variant, np.arange(len(labels)), "val", None, args.seed)
            val_labels = feats["val_labels"]
            val_txt = f"| {float((val_logits.argmax(1) == val_labels).mean()):.4f} | {category_accuracy(val_logits, val_labels, groups):.4f}"
        label = name + ("" if not overrides else " " + " ".join(f"{k}={v}" for k, v in overrides.items()))
        print(f"| {label} | {np.mean(scores):.4f} ({min(scores):.3f}-{max(scores):.3f}) | {' '.join(f'{s:.3f}' for s in scores)} "
              f"{val_txt} | {time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
