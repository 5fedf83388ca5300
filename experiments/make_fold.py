"""A train-only validation split for recipes too costly for 5-fold CV: one stratified fold of garbage26/train as val.

    python experiments/make_fold.py --data_path D --output runs/fold0 [--fold 0] [--folds 5] [--seed 1]

Writes <output>/{train,val}/<class>/ as symbolic links to the original photos:
val = fold `--fold` of the same 5 folds `experiments/cv_frozen.py` uses (`--split random|blocks`),
train = the other four. The shared val split is never touched.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from cv_frozen import make_folds


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ms_impl.trainer import dataset
    from ms_impl.trainer.classes import load_classes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True, help="garbage26 folder with train/")
    parser.add_argument("--output", required=True, help="new folder for the fold's train/ and val/ links")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--split", choices=("random", "blocks"), default="random",
                        help="folds: random (stratified, seeded) or blocks (contiguous source ranges per class)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.exists():
        print(f"error: {out}: already exists", file=sys.stderr)
        return 2
    names = [c.name for c in load_classes()]
    images = dataset.scan_split(Path(args.data_path), "train", names)
    labels, names_of_files = np.asarray(images.labels), [Path(f).name for f in images.files]
    held_out = set(make_folds(args.split, labels, names_of_files, args.folds, args.seed)[args.fold].tolist())
    for index, (path, label) in enumerate(zip(images.files, images.labels)):
        split = "val" if index in held_out else "train"
        folder = out / split / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.abspath(path), folder / path.name)
    print(f"{out}: {len(images) - len(held_out)} train, {len(held_out)} val (fold {args.fold} of {args.folds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
