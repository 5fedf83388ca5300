"""Data of the trainer: `<data_path>/{train,val}/<class name>/*` read with mindspore.dataset.

Class indices come from the configured class list (folder name = class `name`),
never from folder sort order. FIFOs, sockets and devices are skipped unopened with
a warning (`images.list_regular_files`). Every file is opened once up front with PIL:
corrupt, truncated or non-image files are skipped, each with one warning naming
it, and counted. Formats MindSpore's decoder does not read (WebP, GIF, ...) are
converted on the fly (`images.pipeline_bytes`). A file that vanishes or turns
unreadable during the run is replaced, in that batch, by the next usable image
of the epoch's order, with one warning naming it. Shuffling and augmentation of
epoch `e` derive from (seed, e) only, so an epoch can be replayed exactly after
a resume; with `class_balance: sampler` the epoch's samples are a balanced draw
(`balance.balanced_order`) from the same (seed, e) generator.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from ms_impl.trainer.errors import UsageError
from ms_impl.trainer.images import file_stamp, list_regular_files, pipeline_bytes, unreadable_reason
from ms_impl.transforms import eval_transforms, train_transforms, whole_transforms

log = logging.getLogger(__name__)
SPLITS = ("train", "val")


@dataclass
class ImageList:
    """One split: image files, their class indices, and the files skipped as unreadable."""

    split: str
    files: List[Path]
    labels: np.ndarray
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    stamps: List[Tuple[int, int]] = field(default_factory=list)  # (size, mtime_ns) when checked; see images.file_stamp

    def __len__(self) -> int:
        return len(self.files)


def scan_split(data_path: Path, split: str, class_names: Sequence[str]) -> ImageList:
    """The readable images of `data_path/split`, labelled by position in `class_names`."""
    split_dir = Path(data_path) / split
    if not split_dir.is_dir():
        raise UsageError(f"{split_dir}: missing (expected {split}/<class name>/ folders under --data-path; for a "
                         f"folder of one subfolder per class, write that layout with: mbv2-datatools split "
                         f"{data_path} {Path(data_path).name or 'data'}_split)")
    try:
        present = {p.name for p in split_dir.iterdir() if p.is_dir()}
    except OSError as exc:
        raise UsageError(f"{split_dir}: cannot list the folder ({exc.strerror or exc})") from None
    missing = [name for name in class_names if name not in present]
    if missing:
        raise UsageError(f"{split_dir}: missing class folder(s) {', '.join(repr(m) for m in missing)}")
    for extra in sorted(present - set(class_names)):
        log.warning("%s: folder not in the class list, ignored", split_dir / extra)

    files: List[Path] = []
    labels: List[int] = []
    skipped: List[Tuple[Path, str]] = []
    stamps: List[Tuple[int, int]] = []
    for index, name in enumerate(class_names):
        class_dir = split_dir / name
        readable = 0
        try:
            entries = list_regular_files(class_dir, lambda message: log.warning("%s", message))
        except OSError as exc:
            raise UsageError(f"{class_dir}: cannot list the class folder ({exc.strerror or exc})") from None
        for path in entries:
            stamp = file_stamp(path)
            reason = unreadable_reason(path)
            if reason:
                log.warning("skipping %s: not a readable image (%s)", path, reason)
                skipped.append((path, reason))
                continue
            files.append(path)
            labels.append(index)
            stamps.append(stamp)
            readable += 1
        if readable == 0:
            raise UsageError(f"{class_dir}: class folder has no readable images")
    if skipped:
        log.warning("%s: skipped %d unreadable file(s)", split_dir, len(skipped))
    return ImageList(split, files, np.asarray(labels, dtype=np.int32), skipped, stamps)


def worker_count(requested: int) -> int:
    """Parallel workers: as requested, but never more than the machine's cores."""
    return max(1, min(int(requested), os.cpu_count() or 1))


class _EncodedImages:
    """Random-access source of (encoded bytes, label) in a given order; decoding happens in the map.

    A file changed since the up-front check is checked again; when it is gone
    or unreadable, the next usable image in the order stands in (one warning).
    """

    def __init__(self, images: ImageList, order: np.ndarray) -> None:
        self.images = images
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def _usable(self, j: int) -> Tuple[np.ndarray, str]:
        path = self.images.files[j]
        known = self.images.stamps[j] if j < len(self.images.stamps) else None
        if known is not None and file_stamp(path) != known:
            reason = unreadable_reason(path)
            if reason:
                return np.zeros(0, np.uint8), reason
        try:
            return pipeline_bytes(path), ""
        except ValueError as exc:
            return np.zeros(0, np.uint8), str(exc)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        for offset in range(len(self.order)):
            j = int(self.order[(i + offset) % len(self.order)])
            data, reason = self._usable(j)
            if not reason:
                return data, self.images.labels[j]
            log.warning("%s: changed during the run and is no longer readable (%s); skipped", self.images.files[j], reason)
        raise UsageError(f"{self.images.files[0].parent.parent}: no image of the split is readable any more")


def epoch_order(num_images: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of 0-based `epoch`, a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(num_images)


def train_order(labels: np.ndarray, seed: int, epoch: int, class_balance: str = "none") -> np.ndarray:
    """The sample order of 0-based `epoch`: a shuffle of every image, or a class-balanced draw (`sampler`)."""
    if class_balance == "sampler":
        from ms_impl.trainer.balance import balanced_order

        return balanced_order(labels, np.random.default_rng([seed, epoch]))
    return epoch_order(len(labels), seed, epoch)


def train_dataset(images: ImageList, cfg, image_size: int, epoch: int, num_shards: int = 1, shard_id: int = 0):
    """Batches of epoch `epoch`: shuffled, augmented, normalised; the last partial batch is dropped.

    With `num_shards` > 1 (data parallel), this shard reads every num_shards-th
    sample of the epoch's order (`sharding.shard_train_order`).
    """
    import mindspore.dataset as ds

    from ms_impl.trainer.sharding import shard_train_order

    # Seeds the random crop/flip/jitter of this epoch (and shard: ranks draw
    # their own augmentations); with the map's ordered output the augmented
    # batches are the same on every run.
    seed_key = [cfg.seed, epoch, 1] + ([shard_id, num_shards] if num_shards > 1 else [])
    ds.config.set_seed(int(np.random.default_rng(seed_key).integers(2**31 - 1)))
    order = train_order(images.labels, cfg.seed, epoch, getattr(cfg, "class_balance", "none"))
    order = shard_train_order(order, num_shards, shard_id)
    source = _EncodedImages(images, order)
    data = ds.GeneratorDataset(source, ["image", "label"], shuffle=False)
    transforms = (train_transforms(image_size, scale=(cfg.crop_scale_min, 1.0), color_jitter=cfg.color_jitter, hflip_prob=cfg.hflip_prob,
                                   whole_prob=cfg.train_whole_prob)
                  if cfg.train_augment else eval_transforms(image_size))
    data = data.map(
        transforms,
        input_columns="image",
        num_parallel_workers=worker_count(cfg.num_workers),
    )
    return data.batch(cfg.batch_size, drop_remainder=True)


def eval_dataset(images: ImageList, image_size: int, batch_size: int, num_workers: int,
                 num_shards: int = 1, shard_id: int = 0, whole: bool = False):
    """Batches of `images` in file order: resize, center crop, normalise; every image is used.
    `whole`: the whole photo resized to a square instead (`transforms.whole_transforms`, for `tta: flip+whole`).

    With `num_shards` > 1, this shard's images only; the shards together hold
    every image exactly once (`sharding.shard_eval_indices`).
    """
    import mindspore.dataset as ds

    from ms_impl.trainer.sharding import shard_eval_indices

    source = _EncodedImages(images, shard_eval_indices(len(images), num_shards, shard_id))
    data = ds.GeneratorDataset(source, ["image", "label"], shuffle=False)
    data = data.map((whole_transforms if whole else eval_transforms)(image_size), input_columns="image", num_parallel_workers=worker_count(num_workers))
    return data.batch(batch_size, drop_remainder=False)


def resolve_data(cfg) -> Tuple[Path, int, bool]:
    """(dataset folder, network input size, is_synthetic) for the config.

    `data_path` "" means the embedded synthetic set, generated (or found in its
    cache) at `synthetic_image_size`, which is then the input size.
    """
    if cfg.data_path:
        path = Path(cfg.data_path).expanduser()
        if not path.is_dir():
            raise UsageError(f"{path}: --data-path not found (expected a folder with train/ and val/)")
        return path, int(cfg.image_size), False
    from ms_impl.trainer.synthetic import ensure_synthetic_dataset

    path = ensure_synthetic_dataset(
        [c.name for c in cfg.classes],
        image_size=cfg.synthetic_image_size,
        train_per_class=cfg.synthetic_train_per_class,
        val_per_class=cfg.synthetic_val_per_class,
        cache_dir=cfg.synthetic_cache_dir or None,
    )
    return path, int(cfg.synthetic_image_size), True
