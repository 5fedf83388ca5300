"""Frozen-backbone features, extracted once and cached on disk under a key that cannot go stale.

The head of a frozen-backbone run only ever sees the backbone's pooled
features, so they are computed once per (data, transform, weights) and reused.
The cache key is a SHA-256 over everything that changes those numbers:

- every image file: path, size in bytes, modification time (ns), and its label;
- the transform settings: image size, number of views, and when views > 1
  the augmentation settings and the seed;
- a hash of the backbone's weights (parameters and BatchNorm statistics);
- a format version of this module.

The key is part of the file name and stored inside the file; a file is used
only when its stored key equals the key computed now, so any change means a
new extraction. Files are written to a temp file in the cache folder and
renamed into place, so a crash never leaves a half-written cache.

`feature_views == 1`: eval transforms (resize + center crop), or with `whole`
the whole photo resized to a square. `feature_views > 1`:
that many augmented views per image (train transforms, seeded), a fixed set
of augmentations the head then trains on. `hflip`: every view mirrored left-right.

Progress: a tqdm bar on a terminal; otherwise (a log file, a pipe) a few plain
log lines per extraction, never carriage-return frames.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ms_impl.trainer.images import pipeline_bytes
from parity.core import interrupts
from parity.core.files import atomic_path

CACHE_FORMAT_VERSION = 1
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSettings:
    """Everything about the input pipeline that changes the cached features."""

    image_size: int
    feature_views: int = 1
    seed: int = 0
    # train-transform settings, used only when feature_views > 1
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    color_jitter: float = 0.4
    hflip_prob: float = 0.5
    # mirror every image left-right (the flipped twin of the eval crop, for flip views and flip TTA)
    hflip: bool = False
    # the whole photo resized to image_size x image_size instead of the eval crop (`transforms.whole_transforms`)
    whole: bool = False

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if self.feature_views < 1:
            raise ValueError(f"feature_views must be >= 1, got {self.feature_views}")
        if self.whole and self.feature_views > 1:
            raise ValueError("whole-photo features are one eval view per image: feature_views must be 1")

    def key_fields(self) -> Dict[str, object]:
        fields = {"image_size": self.image_size, "feature_views": self.feature_views}
        if self.feature_views > 1:  # augmentation only matters when it is used
            fields.update(seed=self.seed, crop_scale=list(self.crop_scale), color_jitter=self.color_jitter, hflip_prob=self.hflip_prob)
        if self.hflip:  # only when set: keys of unflipped caches stay as they were
            fields["hflip"] = True
        if self.whole:  # likewise: keys of eval-crop caches stay as they were
            fields["whole"] = True
        return fields


@dataclass
class CachedFeatures:
    """Pooled features (N * views, C), their labels, and where they came from."""

    features: np.ndarray
    labels: np.ndarray
    path: str
    key: str
    reused: bool
    images_per_second: Optional[float] = field(default=None)


def file_fingerprint(files: Sequence[str], labels: Sequence[int]) -> List[List[object]]:
    """[path, size, mtime_ns, label] per image; raises ValueError naming a missing file."""
    rows = []
    for path, label in zip(files, labels):
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read image file ({exc.strerror or exc})") from None
        rows.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns, int(label)])
    return rows


def weights_hash(backbone) -> str:
    """SHA-256 of the backbone's tensors (names, dtypes, shapes, values), in name order (`ms_impl.weights.digest`)."""
    from ms_impl.weights import digest

    return digest(backbone.parameters_and_names())


def cache_key(files: Sequence[str], labels: Sequence[int], settings: FeatureSettings, backbone_hash: str) -> str:
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "files": file_fingerprint(files, labels),
        "transform": settings.key_fields(),
        "backbone": backbone_hash,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _eval_batches(encoded: Sequence[np.ndarray], files: Sequence[str], settings: FeatureSettings, batch_size: int) -> Iterator[np.ndarray]:
    """Eval-transformed batches, one image at a time so a bad file is named."""
    from mindspore.dataset import transforms, vision

    from ms_impl.transforms import eval_transforms, whole_transforms

    ops = (whole_transforms if settings.whole else eval_transforms)(settings.image_size)
    if settings.hflip:
        ops.insert(-1, vision.HorizontalFlip())  # before HWC2CHW: mirrors the width axis
    pipeline = transforms.Compose(ops)
    for start in range(0, len(encoded), batch_size):
        batch = []
        for path, data in zip(files[start:start + batch_size], encoded[start:start + batch_size]):
            try:
                batch.append(np.asarray(pipeline(data), dtype=np.float32))
            except RuntimeError:  # mindspore.dataset reports a failed decode as RuntimeError
                raise ValueError(f"{path}: cannot decode image") from None
        yield np.stack(batch)


def _augmented_batches(encoded: Sequence[np.ndarray], settings: FeatureSettings, batch_size: int) -> Iterator[np.ndarray]:
    """`feature_views` passes over the images through the trainer's train transforms, seeded.

    Runs as a one-worker mindspore.dataset pipeline: eager random ops repeat the
    same draw on every call once a seed is set, a pipeline advances its generator.
    """
    import mindspore.dataset as ds

    from ms_impl.transforms import train_transforms

    count = len(encoded)

    def rows():
        for i in range(count * settings.feature_views):
            yield (encoded[i % count],)

    previous_seed = ds.config.get_seed()
    ds.config.set_seed(settings.seed)
    try:
        data = ds.GeneratorDataset(rows, column_names=["image"], shuffle=False, num_parallel_workers=1)
        ops = train_transforms(settings.image_size, scale=settings.crop_scale, color_jitter=settings.color_jitter, hflip_prob=settings.hflip_prob)
        if settings.hflip:
            from mindspore.dataset import vision

            ops.insert(-1, vision.HorizontalFlip())
        data = data.map(operations=ops, input_columns=["image"], num_parallel_workers=1)
        data = data.batch(batch_size, drop_remainder=False)
        for (images,) in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
            yield np.asarray(images, dtype=np.float32)
    finally:
        ds.config.set_seed(previous_seed)


def _check_decodable(encoded: Sequence[np.ndarray], files: Sequence[str]) -> None:
    from mindspore.dataset import vision

    decode = vision.Decode()
    for path, data in zip(files, encoded):
        try:
            decode(data)
        except RuntimeError:
            raise ValueError(f"{path}: cannot decode image") from None


def _pooled_backbone(backbone):
    """A cell returning the backbone's features pooled as the head pools them: (N, C)."""
    from mindspore import nn

    from ms_impl.mobilenetv2 import global_average_pool

    class PooledBackbone(nn.Cell):
        def __init__(self, inner) -> None:
            super().__init__(auto_prefix=False)
            self.inner = inner

        def construct(self, x):
            return global_average_pool(self.inner(x))

    return PooledBackbone(backbone)


def extract_features(backbone, files: Sequence[str], settings: FeatureSettings, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """Pooled features of shape (views * N, C): view v of image i at row v * N + i.

    Raises ValueError naming the first file that cannot be decoded.
    """
    import mindspore as ms
    from tqdm import tqdm

    encoded = []
    for path in files:
        try:
            encoded.append(pipeline_bytes(path))  # WebP, GIF, ... converted for MindSpore's Decode
        except ValueError as exc:
            raise ValueError(f"{path}: cannot decode image ({exc})") from None
    if settings.feature_views > 1:
        _check_decodable(encoded, files)
        batches = _augmented_batches(encoded, settings, batch_size)
    else:
        batches = _eval_batches(encoded, files, settings, batch_size)

    rows: List[np.ndarray] = []
    was_training = backbone.training
    pooled = _pooled_backbone(backbone)
    pooled.set_train(False)  # also puts the backbone's BatchNorm in eval mode
    total = len(files) * settings.feature_views
    on_terminal = sys.stderr.isatty()
    next_log = 0.25  # without a terminal: one log line per quarter
    try:
        with tqdm(total=total, unit="img", desc="extracting features",
                  disable=not (progress and on_terminal), dynamic_ncols=True) as bar:
            done = 0
            for batch in batches:
                count = len(batch)
                if count < batch_size:
                    # pad to a full batch: one compiled shape in graph mode (BN is in eval
                    # mode, so padding rows do not change the others)
                    batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
                with interrupts.deferred():  # the first batch compiles the graph
                    rows.append(pooled(ms.Tensor(batch)).asnumpy()[:count].astype(np.float32))
                bar.update(count)
                done += count
                if progress and not on_terminal and done >= next_log * total:
                    LOG.info("extracting features: %d/%d images (%d%%)", done, total, 100 * done // max(total, 1))
                    while next_log * total <= done:
                        next_log += 0.25
    finally:
        backbone.set_train(was_training)
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, backbone.num_features), np.float32)


def _write_cache(path: str, features: np.ndarray, labels: np.ndarray, key: str) -> None:
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, features=features, labels=labels, key=np.asarray(key))


def _read_if_valid(path: str, key: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(features, labels) when `path` holds a complete cache for exactly `key`, else None."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            features, labels = data["features"], data["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        LOG.warning("feature cache %s is unreadable; extracting again", path)
        return None
    if features.ndim != 2 or len(features) != len(labels):
        return None
    return features, labels


def load_or_extract(
    cache_dir: str,
    backbone,
    files: Sequence[str],
    labels: Sequence[int],
    settings: FeatureSettings,
    batch_size: int = 32,
    progress: bool = True,
    name: str = "features",
) -> CachedFeatures:
    """Cached features for exactly these files, settings and weights; extracts (and caches) when needed."""
    import time

    key = cache_key(files, labels, settings, weights_hash(backbone))
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{name}-{key[:24]}.npz")
    cached = _read_if_valid(path, key)
    if cached is not None:
        LOG.info("feature cache hit: %s (%d rows)", path, len(cached[0]))
        return CachedFeatures(cached[0], cached[1], path, key, reused=True)
    start = time.perf_counter()
    features = extract_features(backbone, files, settings, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    view_labels = np.tile(np.asarray(labels, dtype=np.int32), settings.feature_views)
    _write_cache(path, features, view_labels, key)
    rate = len(features) / seconds if seconds > 0 else None
    LOG.info("extracted %d feature rows in %.1f s -> %s", len(features), seconds, path)
    return CachedFeatures(features, view_labels, path, key, reused=False, images_per_second=rate)


def settings_dict(settings: FeatureSettings) -> Dict[str, object]:
    return asdict(settings)
