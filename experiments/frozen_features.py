"""Backbone features of the garbage26 splits for the frozen-head experiments, through the trainer's feature cache.

    flock /tmp/heavy.lock python experiments/frozen_features.py --data_path D --pretrained W [--cache_dir runs/cv_features]

Extracts (or reuses) pooled ImageNet-backbone features of train and val: the
eval crop, its mirror image, and optionally `--light_views N` lightly augmented
views of train. `experiments/cv_frozen.py` imports `load_features`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

log = logging.getLogger("ms_impl.experiments")

LIGHT_CROP = (0.35, 1.0)
LIGHT_JITTER = 0.1


def load_features(data_path: str, pretrained: str, cache_dir: str, light_views: int = 0,
                  image_size: int = 224, seed: int = 1, whole: bool = False) -> Dict[str, np.ndarray]:
    """{'train', 'train_flip', 'val', 'val_flip', 'train_labels', 'val_labels', 'train_files' (names)[, 'train_light']
    [, 'train_whole', 'train_whole_flip', 'val_whole', 'val_whole_flip' (with `whole`: the whole photo resized
    to a square, and its mirror)]} as arrays."""
    from ms_impl.trainer.feature_cache import FeatureSettings, load_or_extract
    from ms_impl.trainer.run import build_config, build_run, start_devices

    cfg = build_config(["--device", "CPU", "--data_path", data_path, "--pretrained", pretrained,
                        "--image_size", str(image_size), "--freeze_backbone", "true"])
    run = build_run(cfg, start_devices(cfg))
    data, network = run.data, run.network
    out: Dict[str, np.ndarray] = {"train_labels": np.asarray(data.train.labels), "val_labels": np.asarray(data.val.labels),
                                  "train_files": np.asarray([Path(f).name for f in data.train.files])}
    jobs = [("train", data.train, FeatureSettings(image_size)),
            ("train_flip", data.train, FeatureSettings(image_size, hflip=True)),
            ("val", data.val, FeatureSettings(image_size)),
            ("val_flip", data.val, FeatureSettings(image_size, hflip=True))]
    if whole:
        for split, images in (("train", data.train), ("val", data.val)):
            jobs += [(f"{split}_whole", images, FeatureSettings(image_size, whole=True)),
                     (f"{split}_whole_flip", images, FeatureSettings(image_size, whole=True, hflip=True))]
    if light_views > 0:
        jobs.append(("train_light", data.train, FeatureSettings(image_size, feature_views=light_views, seed=seed,
                                                                crop_scale=LIGHT_CROP, color_jitter=LIGHT_JITTER)))
    for name, images, settings in jobs:
        cached = load_or_extract(cache_dir, network.backbone, [str(p) for p in images.files], images.labels, settings,
                                 batch_size=cfg.batch_size, name=name.replace("_", "-"))  # the trainer's file names
        out[name] = cached.features
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ms_impl.trainer.logs import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True, help="garbage26 folder with train/ and val/")
    parser.add_argument("--pretrained", required=True, help="ImageNet backbone weights (.pth/.ckpt/.safetensors)")
    parser.add_argument("--cache_dir", default="runs/cv_features", help="feature cache folder")
    parser.add_argument("--light_views", type=int, default=0, help="also N lightly augmented views of train")
    args = parser.parse_args(argv)
    setup_logging()
    feats = load_features(args.data_path, args.pretrained, args.cache_dir, args.light_views)
    for name, array in feats.items():
        log.info("%s: %s", name, array.shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
