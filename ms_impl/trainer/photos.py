"""A folder of photos before training: find them, hash them, group duplicates, plan a train/val split.

The engine behind `python -m ms_impl.datatools check` and `split`.

Layouts: `<root>/<class>/*` (a folder per class) or `<root>/{train,val,...}/<class>/*`.
Every non-hidden regular file in a class folder is a candidate, as in the trainer's
scan (`dataset.scan_split`; both list with `images.list_regular_files`); the ones the pipeline cannot decode
(`images.unreadable_reason`) are reported, never hashed or split.

Duplicates:
- exact: same SHA-256 of the file bytes;
- near: a perceptual hash (DCT pHash: grayscale 32x32, the 8x8 lowest
  frequencies of its 2-D DCT, one bit per coefficient above their median = 64
  bits) taken of the whole photo and of its central 95% and 90%
  (`HASH_SCALES`). The distance of two photos is the smallest Hamming distance
  over those 3 x 3 pairs, so a copy with a few percent cropped off all round
  lands near 0 instead of ~6-14 bits away; resizing and JPEG re-encoding move
  it by 0-2 bits. A crop taken off one side only moves it more (5% of the
  width: 5 bits on average over garbage26 photos, up to 14), so such copies
  are found most of the time, not always. Two photos are near-duplicates at distance <=
  `DEFAULT_THRESHOLD` (8 of 64). On the garbage26 photos (1040) every pair at
  <= 8 is the same object photographed or cropped twice; from 10 on, unrelated
  photos with plain backgrounds start to match.
- groups: photos linked by either relation, closed transitively (union-find).
"""
from __future__ import annotations

import hashlib
import os
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ms_impl.trainer.images import list_regular_files, read_rgb, unreadable_reason

__all__ = ["SPLIT_NAMES", "HASH_SCALES", "HASH_BITS", "DEFAULT_THRESHOLD", "Photo", "PhotoSet", "DuplicateGroup",
           "find_photos", "scan_photos", "perceptual_hash", "hamming", "pairwise_distances", "duplicate_groups",
           "plan_split"]

SPLIT_NAMES = ("train", "val", "test", "eval")
HASH_SCALES = (1.0, 0.95, 0.9)  # the whole photo and two centre crops: robust to small crops
HASH_BITS = 64
DEFAULT_THRESHOLD = 8
_HASH_SIDE = 32  # grayscale size before the DCT
_HASH_FREQUENCIES = 8  # 8 x 8 lowest frequencies = 64 bits
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass
class Photo:
    """One file of a class folder. `split` is '' for a folder-per-class layout."""

    split: str
    class_name: str
    path: Path
    sha256: str = ""
    size: Optional[Tuple[int, int]] = None  # (width, height) when readable
    hashes: Optional[np.ndarray] = None  # one uint64 per HASH_SCALES entry, when readable
    error: str = ""  # why the pipeline cannot use it; '' when it can

    @property
    def readable(self) -> bool:
        return not self.error

    def relative(self, root: Path) -> str:
        return Path(os.path.relpath(self.path, root)).as_posix()


@dataclass
class PhotoSet:
    root: Path
    splits: List[str]  # [''] for a folder-per-class layout
    classes: List[str]
    photos: List[Photo] = field(default_factory=list)

    @property
    def has_splits(self) -> bool:
        return self.splits != [""]

    @property
    def unreadable(self) -> List[Photo]:
        return [p for p in self.photos if not p.readable]

    @property
    def readable(self) -> List[Photo]:
        return [p for p in self.photos if p.readable]

    def counts(self) -> Dict[str, Counter]:
        """Readable photos per class, per split."""
        per_split: Dict[str, Counter] = {split: Counter() for split in self.splits}
        for photo in self.readable:
            per_split[photo.split][photo.class_name] += 1
        return per_split


def _entries(path: Path) -> List[Path]:
    try:
        return list(path.iterdir())
    except OSError as exc:
        raise ValueError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None


def _subfolders(path: Path) -> List[str]:
    return sorted(p.name for p in _entries(path) if p.is_dir() and not p.name.startswith("."))


def _split_rank(name: str) -> Tuple[int, str]:
    lowered = name.lower()
    return (SPLIT_NAMES.index(lowered) if lowered in SPLIT_NAMES else len(SPLIT_NAMES), name)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def find_photos(root, warn: Callable[[str], None] = _warn) -> PhotoSet:
    """Every non-hidden regular file under `root/[split/]class/`, unread; ValueError naming `root` when there are none.
    FIFOs, sockets and devices are left out unopened, with one `warn(message)` each."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    top = _subfolders(root)
    splits = sorted((d for d in top if d.lower() in SPLIT_NAMES), key=_split_rank)
    layout = [(s, root / s) for s in splits] if splits else [("", root)]
    photos: List[Photo] = []
    for split, split_dir in layout:
        for class_name in _subfolders(split_dir):
            class_dir = split_dir / class_name
            try:
                found = list_regular_files(class_dir, warn)
            except OSError as exc:
                raise ValueError(f"{class_dir}: cannot list the folder ({exc.strerror or exc})") from None
            photos += [Photo(split, class_name, path) for path in found]
    if not photos:
        raise ValueError(f"{root}: no files found (expected {root}/<class>/*.jpg or {root}/train/<class>/*.jpg)")
    return PhotoSet(root, [s for s, _ in layout], sorted({p.class_name for p in photos}), photos)


def _centre_crop(image, fraction: float):
    if fraction >= 1.0:
        return image
    width, height = image.size
    dx, dy = round(width * (1 - fraction) / 2), round(height * (1 - fraction) / 2)
    return image.crop((dx, dy, width - dx, height - dy))


def _dct_hash(image) -> np.uint64:
    from PIL import Image
    from scipy.fft import dctn

    gray = np.asarray(image.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.LANCZOS), dtype=np.float64)
    low = dctn(gray, norm="ortho")[:_HASH_FREQUENCIES, :_HASH_FREQUENCIES].ravel()
    return np.packbits(low > np.median(low)).view(">u8")[0].astype(np.uint64)


def perceptual_hash(image) -> np.ndarray:
    """The photo's 64-bit DCT hashes at each of `HASH_SCALES` (uint64 array)."""
    return np.array([_dct_hash(_centre_crop(image, scale)) for scale in HASH_SCALES], dtype=np.uint64)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_photo(photo: Photo) -> Photo:
    """Fill in sha256, and size and hashes when the pipeline can decode it (else `error`)."""
    try:
        photo.sha256 = _file_sha256(photo.path)
    except OSError as exc:
        photo.error = f"cannot read ({exc.strerror or exc})"
        return photo
    photo.error = unreadable_reason(photo.path)  # the trainer's rule, whatever decoder it uses
    if photo.error:
        return photo
    try:
        image = read_rgb(photo.path)
    except ValueError as exc:
        photo.error = str(exc)
        return photo
    photo.size = image.size
    photo.hashes = perceptual_hash(image)
    return photo


def scan_photos(root, progress: bool = False) -> PhotoSet:
    """`find_photos` with every file inspected (hashed once)."""
    found = find_photos(root)
    items: Iterable[Photo] = found.photos
    if progress:
        from tqdm import tqdm

        items = tqdm(found.photos, desc="hashing", unit="photo", leave=False)
    for photo in items:
        inspect_photo(photo)
    return found


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance of broadcastable uint64 arrays."""
    xor = np.ascontiguousarray(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))
    return _POPCOUNT[xor.view(np.uint8)].reshape(xor.shape + (8,)).sum(axis=-1, dtype=np.int64)


def pairwise_distances(hashes: np.ndarray, rows: Optional[slice] = None) -> np.ndarray:
    """Distance matrix (rows x N) of photos given their (N, len(HASH_SCALES)) hashes: min over every scale pair."""
    hashes = np.asarray(hashes, np.uint64)
    top = hashes[rows] if rows is not None else hashes
    best = np.full((len(top), len(hashes)), HASH_BITS, dtype=np.int64)
    for i in range(hashes.shape[1]):
        for j in range(hashes.shape[1]):
            np.minimum(best, hamming(top[:, i][:, None], hashes[:, j][None, :]), out=best)
    return best


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


@dataclass
class DuplicateGroup:
    """Photos that are copies or near-copies of each other (indices into the list given to `duplicate_groups`)."""

    members: List[int]
    exact: bool  # every member has the same bytes
    max_distance: int  # largest perceptual distance between two members (0 for exact)
    classes: List[str]
    splits: List[str]

    @property
    def label_conflict(self) -> bool:
        return len(self.classes) > 1

    @property
    def leakage(self) -> bool:
        return len(self.splits) > 1

    @property
    def kind(self) -> str:
        kinds = [k for k, on in (("label conflict", self.label_conflict), ("train/val leakage", self.leakage)) if on]
        return " + ".join(kinds) or "within class"


def duplicate_groups(photos: Sequence[Photo], threshold: int = DEFAULT_THRESHOLD,
                     block: int = 512) -> List[DuplicateGroup]:
    """Groups (2+ members) of readable photos linked by equal bytes or perceptual distance <= threshold."""
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"threshold must be in [0, {HASH_BITS}), got {threshold}")
    if any(not p.readable for p in photos):
        raise ValueError("duplicate_groups takes readable photos only")
    links = _UnionFind(len(photos))
    first_with_digest: Dict[str, int] = {}
    for i, photo in enumerate(photos):
        links.union(first_with_digest.setdefault(photo.sha256, i), i)
    if photos:
        hashes = np.stack([p.hashes for p in photos])
        for start in range(0, len(photos), block):  # rows in blocks: memory stays O(block x N)
            distances = pairwise_distances(hashes, slice(start, start + block))
            for i, j in zip(*np.nonzero(distances <= threshold)):
                if start + i < j:
                    links.union(start + int(i), int(j))
    members: Dict[int, List[int]] = {}
    for i in range(len(photos)):
        members.setdefault(links.find(i), []).append(i)
    groups = []
    for indices in members.values():
        if len(indices) < 2:
            continue
        chosen = [photos[i] for i in indices]
        exact = len({p.sha256 for p in chosen}) == 1
        distances = pairwise_distances(np.stack([p.hashes for p in chosen]))
        groups.append(DuplicateGroup(indices, exact, 0 if exact else int(distances.max()),
                                     sorted({p.class_name for p in chosen}),
                                     sorted({p.split for p in chosen}, key=_split_rank)))
    groups.sort(key=lambda g: (not g.label_conflict, not g.leakage, g.members[0]))
    return groups


def _class_seed(seed: int, class_name: str) -> List[int]:
    """RNG key of one class: independent of which other classes exist (crc32 of the name, not its position)."""
    return [seed, zlib.crc32(class_name.encode("utf-8"))]


def plan_split(photos: Sequence[Photo], groups: Sequence[DuplicateGroup], val_fraction: float, seed: int) -> List[str]:
    """'train' or 'val' for each readable photo: stratified per class, duplicate groups on one side.

    Each group (or single photo) belongs to the class most of its members
    have. Per class, its units are shuffled with a generator keyed by (seed,
    class name) and taken into val while that keeps the class's val count at
    or under round(val_fraction x photos), at least one when the class has
    two photos or more, never all of them. Same photos and seed, same plan.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val fraction must be in (0, 1), got {val_fraction}")
    grouped = {i for g in groups for i in g.members}
    units = [list(g.members) for g in groups] + [[i] for i in range(len(photos)) if i not in grouped]
    by_class: Dict[str, List[List[int]]] = {}
    for unit in units:
        names = Counter(photos[i].class_name for i in unit)
        home = min(names, key=lambda name: (-names[name], name))
        by_class.setdefault(home, []).append(sorted(unit, key=lambda i: str(photos[i].path)))
    assignment = ["train"] * len(photos)
    for class_name in sorted(by_class):
        class_units = sorted(by_class[class_name], key=lambda unit: str(photos[unit[0]].path))
        total = sum(len(u) for u in class_units)
        target = min(max(round(val_fraction * total), 1 if total >= 2 else 0), total - 1)
        val_count = 0
        for position in np.random.default_rng(_class_seed(seed, class_name)).permutation(len(class_units)):
            unit = class_units[int(position)]
            if val_count + len(unit) <= target:
                val_count += len(unit)
                for i in unit:
                    assignment[i] = "val"
    return assignment
