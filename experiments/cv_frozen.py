"""5-fold cross-validation of frozen-backbone head recipes on the garbage26 train split, then the shared val.

    flock /tmp/heavy.lock python experiments/cv_frozen.py --data_path D --pretrained W [--recipes a,b] [--light_views 4]

Features come from the trainer's feature cache (`experiments/frozen_features.py`),
so only the first run extracts. Every recipe's head is the trainer's own
`train_head_on_features` (MindSpore), started from the same seeded init. The
folds are stratified (every class split evenly), fixed by `--seed`. Prints one
table row per recipe: mean (min-max) fold accuracy, then the same recipe trained
on all of train and scored on val (top-1, category accuracy).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from frozen_features import load_features

log = logging.getLogger("ms_impl.experiments")

BASE = dict(epochs=10, lr_max=0.02, warmup_epochs=1, weight_decay=4e-5, label_smoothing=0.1, dropout=0.2,
            batch_size=32, feature_norm="none", views="crop", tta=False)
RECIPES: Dict[str, dict] = {
    "readme_frozen": {},  # the frozen recipe the issue measured (10 head epochs, config defaults)
    "std": dict(feature_norm="standardize"),
    "std_e30": dict(feature_norm="standardize", epochs=30),
    "std_e30_wd1e-3": dict(feature_norm="standardize", epochs=30, weight_decay=1e-3),
    "std_e30_wd1e-2": dict(feature_norm="standardize", epochs=30, weight_decay=1e-2),
    "std_e30_wd1e-3_flip": dict(feature_norm="standardize", epochs=30, weight_decay=1e-3, views="crop+flip"),
    "std_e30_wd1e-3_flip_tta": dict(feature_norm="standardize", epochs=30, weight_decay=1e-3, views="crop+flip", tta=True),
    "center_e30_wd1e-3_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-3, views="crop+flip", tta=True),
    "l2_e30_wd1e-3_flip_tta": dict(feature_norm="l2", epochs=30, weight_decay=1e-3, views="crop+flip", tta=True),
    "std_e30_wd1e-3_light_tta": dict(feature_norm="standardize", epochs=30, weight_decay=1e-3, views="crop+flip+light", tta=True),
    "flip_tta": dict(views="crop+flip", tta=True),
    "e30_flip_tta": dict(epochs=30, views="crop+flip", tta=True),
    "e30_wd1e-3_flip_tta": dict(epochs=30, weight_decay=1e-3, views="crop+flip", tta=True),
    "e30_wd1e-2_flip_tta": dict(epochs=30, weight_decay=1e-2, views="crop+flip", tta=True),
    "e30_ls0_flip_tta": dict(epochs=30, label_smoothing=0.0, views="crop+flip", tta=True),
    "e30_do0.5_flip_tta": dict(epochs=30, dropout=0.5, views="crop+flip", tta=True),
    "lr0.05_flip_tta": dict(lr_max=0.05, views="crop+flip", tta=True),
    "lr0.005_e30_flip_tta": dict(lr_max=0.005, epochs=30, views="crop+flip", tta=True),
    "center_flip_tta": dict(feature_norm="center", views="crop+flip", tta=True),
    "light_tta": dict(views="crop+flip+light", tta=True),
    "center_e30_wd1e-2_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-2, views="crop+flip", tta=True),
    "center_e30_wd1e-4_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-4, views="crop+flip", tta=True),
    "center_e60_wd1e-3_flip_tta": dict(feature_norm="center", epochs=60, weight_decay=1e-3, views="crop+flip", tta=True),
    "center_e30_wd1e-3_ls0_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-3, label_smoothing=0.0,
                                           views="crop+flip", tta=True),
    "center_e30_wd1e-3_do0.5_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-3, dropout=0.5,
                                             views="crop+flip", tta=True),
    # Tried against the source-block folds (--split blocks), where stronger regularisation paid:
    "center_e10_wd1e-2_flip_tta": dict(feature_norm="center", epochs=10, weight_decay=1e-2, views="crop+flip", tta=True),
    "center_e30_wd5e-3_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=5e-3, views="crop+flip", tta=True),
    "center_e30_wd1e-2_do0.5_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-2, dropout=0.5,
                                             views="crop+flip", tta=True),
    "center_e30_wd1e-2_ls0.3_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-2, label_smoothing=0.3,
                                             views="crop+flip", tta=True),
    "center_e30_wd1e-2_lr0.005_flip_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-2, lr_max=0.005,
                                               views="crop+flip", tta=True),
    "l2_e30_wd1e-2_flip_tta": dict(feature_norm="l2", epochs=30, weight_decay=1e-2, views="crop+flip", tta=True),
    "center_e30_lr0.05_wd1e-3_flip_tta": dict(feature_norm="center", epochs=30, lr_max=0.05, weight_decay=1e-3,
                                              views="crop+flip", tta=True),
    # issue 12: the whole photo resized to a square (and its mirror) as more train views and more TTA views
    "center_e30_wd1e-2_flip_whole_tta": dict(feature_norm="center", epochs=30, weight_decay=1e-2, views="crop+flip+whole",
                                             tta=True),
}


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> List[np.ndarray]:
    """k disjoint index sets; each class's images dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    folds: List[List[int]] = [[] for _ in range(k)]
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        for i, index in enumerate(members):
            folds[(i + offset) % k].append(int(index))
        offset += len(members)  # the next class starts where this one stopped: folds stay balanced in size
    return [np.sort(np.asarray(f)) for f in folds]


def source_order(name: str) -> tuple:
    """Sort key of a photo's file name in its source's order: (prefix, number), e.g. train_00042.jpg -> ('train', 42)."""
    stem = Path(name).stem
    prefix, _, number = stem.rpartition("_")
    return (prefix, int(number)) if number.isdigit() else (stem, -1)


def blocked_folds(labels: np.ndarray, files: Sequence[str], k: int) -> List[np.ndarray]:
    """k disjoint index sets; each class's images, in their source order (file name numbers), cut into k
    contiguous blocks, block f to fold f. Photos next to each other in a source (the same object shot
    twice, a burst, a near-copy) then land in the same fold, as a held-out set drawn from other source
    ranges with near-duplicates removed would be: a CV estimate that does not reward memorising them."""
    folds: List[List[int]] = [[] for _ in range(k)]
    for cls in np.unique(labels):
        members = sorted(np.flatnonzero(labels == cls), key=lambda i: source_order(files[i]))
        for f, block in enumerate(np.array_split(np.asarray(members), k)):
            folds[f].extend(int(i) for i in block)
    return [np.sort(np.asarray(f)) for f in folds]


def make_folds(split: str, labels: np.ndarray, files: Sequence[str], k: int, seed: int) -> List[np.ndarray]:
    return blocked_folds(labels, files, k) if split == "blocks" else stratified_folds(labels, k, seed)


def normalise(train: np.ndarray, others: Sequence[np.ndarray], how: str) -> Tuple[np.ndarray, List[np.ndarray]]:
    if how == "none":
        return train, list(others)
    if how == "l2":
        scale = np.sqrt(train.shape[1])
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) * scale
        return unit(train), [unit(o) for o in others]
    from ms_impl.trainer.transfer import feature_statistics

    mean, std = feature_statistics(train, how)
    return (train - mean) / std, [(o - mean) / std for o in others]


def fit_and_score(feats: Dict[str, np.ndarray], train_idx: np.ndarray, test_split: str, test_idx: Optional[np.ndarray],
                  recipe: dict, seed: int) -> np.ndarray:
    """Logits on the test images of a head trained with `recipe` on the train images `train_idx`."""
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2Head
    from ms_impl.trainer.transfer import head_logits, train_head_on_features

    labels = feats["train_labels"]
    views = ["train"] + (["train_flip"] if "flip" in recipe["views"] else [])
    parts = [feats[v][train_idx] for v in views]
    part_labels = [labels[train_idx]] * len(views)
    if "whole" in recipe["views"]:
        parts += [feats["train_whole"][train_idx], feats["train_whole_flip"][train_idx]]
        part_labels += [labels[train_idx]] * 2
    if "light" in recipe["views"]:
        light = feats["train_light"]
        count = len(labels)
        for v in range(len(light) // count):
            parts.append(light[v * count:(v + 1) * count][train_idx])
            part_labels.append(labels[train_idx])
    test = feats[test_split] if test_idx is None else feats[test_split][test_idx]
    test_flip = feats[test_split + "_flip"] if test_idx is None else feats[test_split + "_flip"][test_idx]
    tests = [test, test_flip]
    if "whole" in recipe["views"]:  # test-time views too: the whole photo and its mirror
        tests += [feats[test_split + s] if test_idx is None else feats[test_split + s][test_idx] for s in ("_whole", "_whole_flip")]
    x, (t, tf, *tw) = normalise(np.concatenate(parts), tests, recipe["feature_norm"])
    ms.set_seed(seed)
    head = MobileNetV2Head(x.shape[1], int(labels.max()) + 1, dropout=0.0)
    train_head_on_features(head, x.astype(np.float32), np.concatenate(part_labels), epochs=recipe["epochs"],
                           batch_size=recipe["batch_size"], lr_max=recipe["lr_max"], warmup_epochs=recipe["warmup_epochs"],
                           weight_decay=recipe["weight_decay"], label_smoothing=recipe["label_smoothing"],
                           dropout=recipe["dropout"], seed=seed)
    logits = head_logits(head, t.astype(np.float32))
    if recipe["tta"]:
        logits = np.mean([logits, head_logits(head, tf.astype(np.float32))] + [head_logits(head, w.astype(np.float32)) for w in tw], axis=0)
    return logits


def main(argv: Optional[Sequence[str]] = None) -> int:
    import mindspore as ms

    from ms_impl.trainer.logs import setup_logging
    from ms_impl.trainer.classes import category_groups, load_classes
    from ms_impl.trainer.metrics import category_accuracy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True, help="garbage26 folder with train/ and val/")
    parser.add_argument("--pretrained", required=True, help="ImageNet backbone weights")
    parser.add_argument("--cache_dir", default="runs/cv_features", help="feature cache folder")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names: " + ", ".join(RECIPES))
    parser.add_argument("--image_size", type=int, default=224, help="network input size of the features (eval crop)")
    parser.add_argument("--light_views", type=int, default=4, help="lightly augmented train views (recipes with 'light')")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--split", choices=("random", "blocks"), default="random",
                        help="folds: random (stratified, seeded) or blocks (contiguous source ranges per class)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field for every recipe (e.g. epochs=20)")
    args = parser.parse_args(argv)
    setup_logging()
    whole = any("whole" in RECIPES[name].get("views", "") for name in args.recipes.split(","))
    feats = load_features(args.data_path, args.pretrained, args.cache_dir, args.light_views, image_size=args.image_size,
                          whole=whole)
    ms.set_context(mode=ms.PYNATIVE_MODE)  # the head step is jit-compiled by train_head_on_features
    groups = category_groups(load_classes())[0]
    labels = feats["train_labels"]
    folds = make_folds(args.split, labels, feats["train_files"], args.folds, args.seed)
    overrides = dict(item.split("=", 1) for item in args.set)
    print(f"| recipe | {args.folds}-fold CV top-1 (min-max) | folds | val top-1 | val category acc | head seconds |")
    print("|---|---|---|---|---|---|")
    for name in args.recipes.split(","):
        recipe = dict(BASE, **RECIPES[name])
        for key, value in overrides.items():
            recipe[key] = type(BASE[key])(value)
        started = time.perf_counter()
        scores = []
        for k, held_out in enumerate(folds):
            train_idx = np.setdiff1d(np.arange(len(labels)), held_out)
            logits = fit_and_score(feats, train_idx, "train", held_out, recipe, args.seed)
            scores.append(float((logits.argmax(1) == labels[held_out]).mean()))
        val_logits = fit_and_score(feats, np.arange(len(labels)), "val", None, recipe, args.seed)
        val_labels = feats["val_labels"]
        val_top1 = float((val_logits.argmax(1) == val_labels).mean())
        val_cat = category_accuracy(val_logits, val_labels, groups)
        print(f"| {name} | {np.mean(scores):.4f} ({min(scores):.3f}-{max(scores):.3f}) | {' '.join(f'{x:.3f}' for x in scores)} "
              f"| {val_top1:.4f} | {val_cat:.4f} "
              f"| {time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
