"""Dataset tools: check a folder of photos, split it into train/val, report on it, per-channel mean/std.

    python -m ms_impl.datatools check DATA_DIR [--threshold 8] [--json FILE] [--force]
    python -m ms_impl.datatools split SRC DST --val 0.2 [--seed 1] [--copy] [--threshold 8] [--force]
    python -m ms_impl.datatools report DATA_DIR --output REPORT_DIR [--threshold 8] [--force]
    python -m ms_impl.datatools stats DATA_DIR [--split train] [--image-size S] [--json]

DATA_DIR is either `<root>/<class>/*.jpg` (a folder per class) or
`<root>/{train,val,...}/<class>/*.jpg`. Every non-hidden file of a class
folder counts, as in the trainer; the ones it cannot decode are listed.

`check` lists unreadable files, exact duplicates (SHA-256) and
near-duplicates (perceptual hash, `ms_impl/trainer/photos.py`) within a
class, across classes (label conflicts) and across splits (train/val
leakage), and the class balance. Exit status: 0 no leakage and no label
conflict (duplicates within a class and unreadable files are reported), 1
leakage or label conflicts found, 2 bad input (also: no readable photo at all).

`split` writes `DST/{train,val}/<class>/` from SRC (a folder per class, or a
train/val tree to re-split), stratified per class, the same for the same
seed, every near-duplicate group on one side, unreadable files left out;
files are hard links to SRC's (copies with --copy; SRC is never changed) and
`DST/manifest.csv` lists every file (file, class, split, group, sha256, source).
An existing DST is replaced only with --force and only when it is an earlier
split (it holds that manifest); it is then moved aside to `DST.old-<time>`,
never deleted.

`report` writes `report.png` (images per class and split, width x height
scatter, duplicate groups as thumbnails side by side) and `report.txt`.
"""
from __future__ import annotations

from parity.core import interrupts  # noqa: E402  before any import that starts a thread
from parity.core.options import framework_log_level  # noqa: E402

interrupts.watch_sigint(__name__, "mbv2-datatools")  # Ctrl+C: one line, exit 130
framework_log_level()  # MindSpore's own log: errors only unless --verbose (before mindspore is imported)

import argparse
import csv
import errno
import io
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ms_impl.trainer.images import not_regular_reason, read_rgb
from ms_impl.trainer.photos import (DEFAULT_THRESHOLD, HASH_BITS, DuplicateGroup, Photo, PhotoSet,
                                    duplicate_groups, find_photos, plan_split, scan_photos)
from ms_impl.trainer.run_folder import aside_path
from parity.core.cli import run_cli
from parity.core.errors import UserError
from parity.core.files import (WriteError, atomic_folder, atomic_path, atomic_write_text, check_writable_folder,
                               path_argument)
from parity.core.options import DashOptionParser

EXIT_CLEAN = 0
EXIT_FOUND_PROBLEMS = 1
EXIT_INPUT_ERROR = 2
MANIFEST = "manifest.csv"
MANIFEST_FIELDS = ("file", "class", "split", "group", "sha256", "source")
THUMBNAIL_ROWS = 12  # duplicate groups drawn in report.png (the text lists all)
THUMBNAILS_PER_ROW = 6


class InputError(UserError):
    """Bad input: the message names the file or option and the problem."""


# ---------------------------------------------------------------- scanning


def scan(root: str, threshold: int) -> Tuple[PhotoSet, List[DuplicateGroup]]:
    """Every photo of `root` inspected once, and its duplicate groups (indices into `photo_set.readable`)."""
    try:
        photo_set = scan_photos(root, progress=sys.stderr.isatty())
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not photo_set.readable:  # nothing to check, split or report on: the trainer refuses such a set too
        first = photo_set.photos[0]
        raise InputError(f"{root}: no readable photo among {len(photo_set.photos)} file(s) "
                         f"(e.g. {_name(first, photo_set.root)}: {first.error})")
    return photo_set, duplicate_groups(photo_set.readable, threshold)


def _name(photo: Photo, root: Path) -> str:
    return photo.relative(root)


def balance_lines(photo_set: PhotoSet) -> List[str]:
    counts = photo_set.counts()
    lines = []
    for split in photo_set.splits:
        per_class = [counts[split][c] for c in photo_set.classes]
        smallest, largest = int(np.argmin(per_class)), int(np.argmax(per_class))
        ratio = f"{per_class[largest] / per_class[smallest]:.2f}" if per_class[smallest] else "inf"
        spread = (f"{per_class[0]} each" if per_class[smallest] == per_class[largest] else
                  f"min {per_class[smallest]} ({photo_set.classes[smallest]}), "
                  f"max {per_class[largest]} ({photo_set.classes[largest]}), max/min {ratio}")
        lines.append(f"  {split or 'all':<6} {sum(per_class)} photos, {len(per_class)} classes: {spread}")
        empty = [c for c, n in zip(photo_set.classes, per_class) if n == 0]
        if empty:
            lines.append(f"  {split or 'all':<6} classes with no readable photo: {', '.join(empty)}")
    if photo_set.has_splits and len(photo_set.splits) > 1:
        total = {c: sum(counts[s][c] for s in photo_set.splits) for c in photo_set.classes}
        shares = {c: counts[photo_set.splits[-1]][c] / total[c] for c in photo_set.classes if total[c]}
        low, high = min(shares, key=shares.get), max(shares, key=shares.get)
        spread = (f"{shares[low]:.2f} in every class" if shares[low] == shares[high] else
                  f"{shares[low]:.2f} ({low}) .. {shares[high]:.2f} ({high})")
        lines.append(f"  {photo_set.splits[-1]} share per class: {spread}")
    return lines


def group_lines(photo_set: PhotoSet, groups: Sequence[DuplicateGroup], limit: Optional[int] = None) -> List[str]:
    readable = photo_set.readable
    lines = []
    for number, group in enumerate(groups[:limit], 1):
        how = "exact copies" if group.exact else f"near-duplicates, distance up to {group.max_distance}"
        lines.append(f"  [{group.kind}] group {number} ({how}):")
        lines += [f"      {_name(readable[i], photo_set.root)}" for i in group.members]
    if limit is not None and len(groups) > limit:
        lines.append(f"  ... {len(groups) - limit} more groups")
    return lines


def exact_duplicate_sets(photo_set: PhotoSet) -> List[List[Photo]]:
    by_digest: Dict[str, List[Photo]] = {}
    for photo in photo_set.readable:
        by_digest.setdefault(photo.sha256, []).append(photo)
    return [same for same in by_digest.values() if len(same) > 1]


# ---------------------------------------------------------------- check


def check_summary(photo_set: PhotoSet, groups: Sequence[DuplicateGroup], threshold: int) -> Dict[str, object]:
    readable = photo_set.readable
    exact_sets = exact_duplicate_sets(photo_set)
    return {
        "dataset": str(Path(photo_set.root).resolve()),
        "layout": "train/val" if photo_set.has_splits else "folder per class",
        "splits": photo_set.splits,
        "classes": photo_set.classes,
        "files": len(photo_set.photos),
        "readable": len(readable),
        "threshold_bits": threshold,
        "unreadable": [{"file": _name(p, photo_set.root), "reason": p.error} for p in photo_set.unreadable],
        "exact_duplicates": [[_name(p, photo_set.root) for p in same] for same in exact_sets],
        "groups": [{"kind": g.kind, "exact": g.exact, "max_distance": g.max_distance, "classes": g.classes,
                    "splits": g.splits, "files": [_name(readable[i], photo_set.root) for i in g.members]}
                   for g in groups],
        "counts": {"groups": len(groups),
                   "within_class": sum(1 for g in groups if g.kind == "within class"),
                   "label_conflicts": sum(1 for g in groups if g.label_conflict),
                   "leakage": sum(1 for g in groups if g.leakage),
                   "exact_duplicate_sets": len(exact_sets),
                   "exact_duplicate_files": sum(len(s) for s in exact_sets)},
        "balance": {split or "all": dict(counter) for split, counter in photo_set.counts().items()},
    }


def check_text(photo_set: PhotoSet, groups: Sequence[DuplicateGroup], summary: Dict[str, object]) -> str:
    counts = summary["counts"]
    lines = [f"dataset: {summary['dataset']} ({summary['layout']}, {len(photo_set.classes)} classes, "
             f"{summary['files']} files)",
             f"unreadable files (the trainer would skip them): {len(summary['unreadable'])}"]
    lines += [f"  {u['file']}: {u['reason']}" for u in summary["unreadable"]]
    lines.append(f"exact duplicates (same SHA-256): {counts['exact_duplicate_sets']} set(s), "
                 f"{counts['exact_duplicate_files']} files")
    lines.append(f"duplicate groups (exact or perceptual distance <= {summary['threshold_bits']} of {HASH_BITS} bits): "
                 f"{counts['groups']}, of which within a class {counts['within_class']}, "
                 f"across classes (label conflicts) {counts['label_conflicts']}, "
                 f"across splits (train/val leakage) {counts['leakage']}")
    lines += group_lines(photo_set, groups)
    lines.append("class balance (readable photos):")
    lines += balance_lines(photo_set)
    problems = [f"{counts['leakage']} leakage group(s)" if counts["leakage"] else "",
                f"{counts['label_conflicts']} label conflict(s)" if counts["label_conflicts"] else ""]
    problems = [p for p in problems if p]
    lines.append(f"result: {' and '.join(problems)} (exit 1)" if problems else
                 "result: no train/val leakage, no label conflict (exit 0)")
    return "\n".join(lines) + "\n"


def run_check(args) -> int:
    if args.json:
        if Path(args.json).is_dir():
            raise InputError(f"{args.json}: is a folder, not a file")
        if Path(args.json).exists() and not args.force:
            raise InputError(f"{args.json}: already exists (use --force to overwrite)")
        if not Path(args.json).resolve().parent.is_dir():
            raise InputError(f"{args.json}: folder {Path(args.json).resolve().parent} does not exist")
    photo_set, groups = scan(args.data_dir, args.threshold)
    summary = check_summary(photo_set, groups, args.threshold)
    print(check_text(photo_set, groups, summary), end="")
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}")
    found = summary["counts"]["leakage"] or summary["counts"]["label_conflicts"]
    return EXIT_FOUND_PROBLEMS if found else EXIT_CLEAN


# ---------------------------------------------------------------- split


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def is_earlier_split(folder: Path) -> bool:
    """True when `folder` holds a split this tool wrote: its manifest.csv, starting with the manifest's header."""
    manifest = folder / MANIFEST
    if not_regular_reason(manifest):
        return False
    try:
        with open(manifest, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), None) == list(MANIFEST_FIELDS)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def validate_split_paths(src: Path, dst: Path, force: bool) -> None:
    if not src.is_dir():
        raise InputError(f"{src}: not a folder")
    src_real, dst_real = src.resolve(), dst.resolve()
    if _inside(dst_real, src_real) or _inside(src_real, dst_real):
        raise InputError(f"{dst}: must lie outside SRC {src} (and not contain it)")
    if dst.exists() or dst.is_symlink():
        if not dst.is_dir() or dst.is_symlink():
            raise InputError(f"{dst}: exists and is not a folder")
        if not force:
            raise InputError(f"{dst}: already exists (use --force to replace an earlier split; it is moved aside)")
        try:
            holds_something = any(dst.iterdir())
        except OSError as exc:
            raise InputError(f"{dst}: cannot list the folder ({exc.strerror or exc})") from None
        if holds_something and not is_earlier_split(dst):
            raise InputError(f"{dst}: not a split written by this tool (no {MANIFEST} of one); refusing to replace "
                             "it, even with --force: choose a new DST")
    if not dst_real.parent.is_dir():
        raise InputError(f"{dst}: parent folder {dst_real.parent} does not exist")


def _place(source: Path, target: Path, copy: bool) -> bool:
    """Hard-link (or copy) `source` to `target`; True when it had to copy (another file system)."""
    if not copy:
        try:
            os.link(source, target)
            return False
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copy2(source, target)
    return True


def split_plan(photo_set: PhotoSet, groups: Sequence[DuplicateGroup], val_fraction: float,
               seed: int) -> List[Tuple[Photo, str, str, int]]:
    """(photo, split, path in DST, group number or 0) for every readable photo, in a stable order."""
    readable = photo_set.readable
    sides = plan_split(readable, groups, val_fraction, seed)
    group_of = {i: number for number, g in enumerate(groups, 1) for i in g.members}
    taken: set = set()
    rows = []
    for i, photo in enumerate(readable):
        folder = f"{sides[i]}/{photo.class_name}"
        name = photo.path.name
        if f"{folder}/{name}".lower() in taken:  # same name in two source splits of a re-split
            name = f"{photo.split}-{name}"
            stem, suffix = os.path.splitext(name)
            counter = 2
            while f"{folder}/{name}".lower() in taken:
                name, counter = f"{stem}-{counter}{suffix}", counter + 1
        taken.add(f"{folder}/{name}".lower())
        rows.append((photo, sides[i], f"{folder}/{name}", group_of.get(i, 0)))
    return rows


def write_split(photo_set: PhotoSet, rows, dst: Path, copy: bool) -> Tuple[int, int, Optional[Path]]:
    """Build the tree in a staging folder beside DST that becomes DST when complete (`atomic_folder`): an
    earlier split at DST (--force, checked by `validate_split_paths`) is moved aside to `DST.old-<time>`,
    an empty folder replaced; on any failure DST is as it was.

    Returns (files placed, of which copied, where the earlier split went or None).
    """
    aside = aside_path(dst)
    copied = 0
    with atomic_folder(dst, aside=aside) as staging:
        for split in ("train", "val"):
            for class_name in photo_set.classes:
                (staging / split / class_name).mkdir(parents=True, exist_ok=True)
        for photo, _, relative, _ in rows:
            copied += _place(photo.path, staging / relative, copy)
        with open(staging / MANIFEST, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(MANIFEST_FIELDS)
            for photo, split, relative, group in rows:
                writer.writerow([relative, photo.class_name, split, group or "", photo.sha256,
                                 _name(photo, photo_set.root)])
            for photo in photo_set.unreadable:
                writer.writerow(["", photo.class_name, "excluded", "", photo.sha256, _name(photo, photo_set.root)])
    return len(rows), copied, aside if aside.is_dir() else None


def run_split(args) -> int:
    if not 0.0 < args.val < 1.0:
        raise InputError(f"--val: expected a fraction in (0, 1), got {args.val}")
    src, dst = Path(args.src), Path(args.dst)
    validate_split_paths(src, dst, args.force)
    photo_set, groups = scan(args.src, args.threshold)
    rows = split_plan(photo_set, groups, args.val, args.seed)
    placed, copied, moved = write_split(photo_set, rows, dst, args.copy)

    per_class = {c: Counter() for c in photo_set.classes}
    for photo, split, _, _ in rows:
        per_class[photo.class_name][split] += 1
    print(f"{'class':<32}{'train':>7}{'val':>7}")
    for class_name, counter in per_class.items():
        print(f"{class_name:<32}{counter['train']:>7}{counter['val']:>7}")
    print(f"{'total':<32}{sum(c['train'] for c in per_class.values()):>7}{sum(c['val'] for c in per_class.values()):>7}")
    kept = sum(len(g.members) for g in groups)
    print(f"duplicate groups kept on one side: {len(groups)} ({kept} photos, perceptual distance <= {args.threshold})")
    conflicts = [g for g in groups if g.label_conflict]
    if conflicts:
        print(f"warning: {len(conflicts)} group(s) hold photos of different classes (label conflicts); "
              f"run `check` to list them", file=sys.stderr)
    for class_name, counter in per_class.items():
        if counter["val"] == 0 or counter["train"] == 0:
            print(f"warning: {class_name}: {counter['train']} train / {counter['val']} val photos; "
                  f"the trainer needs at least one of each", file=sys.stderr)
    print(f"left out (unreadable): {len(photo_set.unreadable)}")
    for photo in photo_set.unreadable:
        print(f"  {_name(photo, photo_set.root)}: {photo.error}")
    how = "copies" if args.copy else ("hard links" if not copied else f"hard links, {copied} copied (other file system)")
    print(f"wrote {dst}: {placed} files ({how}), {dst / MANIFEST}")
    if moved is not None:
        print(f"the earlier split was moved to {moved} (nothing deleted)")
    return EXIT_CLEAN


# ---------------------------------------------------------------- report


def report_text(photo_set: PhotoSet, groups: Sequence[DuplicateGroup], threshold: int) -> str:
    counts = photo_set.counts()
    sizes = [p.size for p in photo_set.readable]
    lines = [f"dataset: {os.path.abspath(photo_set.root)}",
             f"images: {len(photo_set.photos)} files, {len(sizes)} readable, {len(photo_set.unreadable)} corrupt",
             f"classes: {len(photo_set.classes)}", ""]
    split_names = [s or "all" for s in photo_set.splits]
    lines.append(f"{'class':<32}" + "".join(f"{name:>8}" for name in split_names))
    for class_name in photo_set.classes:
        lines.append(f"{class_name:<32}" + "".join(f"{counts[s][class_name]:>8}" for s in photo_set.splits))
    lines.append(f"{'total':<32}" + "".join(f"{sum(counts[s].values()):>8}" for s in photo_set.splits))
    if sizes:
        arr = np.asarray(sizes)
        common = Counter(sizes).most_common(3)
        lines += ["", "resolution (width x height):",
                  f"  min {arr[:, 0].min()}x{arr[:, 1].min()}, max {arr[:, 0].max()}x{arr[:, 1].max()}, "
                  f"median {int(np.median(arr[:, 0]))}x{int(np.median(arr[:, 1]))}",
                  "  most common: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in common)]
    lines += ["", f"corrupt files: {len(photo_set.unreadable)}"]
    lines += [f"  {p.path}: {p.error}" for p in photo_set.unreadable]
    lines += ["", f"duplicate groups (exact or perceptual distance <= {threshold}): {len(groups)}"]
    lines += group_lines(photo_set, groups)
    return "\n".join(lines) + "\n"


def report_figure(photo_set: PhotoSet, groups: Sequence[DuplicateGroup]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = photo_set.counts()
    shown = list(groups[:THUMBNAIL_ROWS])
    fig = plt.figure(figsize=(16, 6 + 2.2 * len(shown)))
    outer = fig.add_gridspec(1 + bool(shown), 1, height_ratios=[6] + ([2.2 * len(shown)] if shown else []), hspace=0.3)
    charts = outer[0].subgridspec(1, 2, width_ratios=[2, 1], wspace=0.15)
    bars = fig.add_subplot(charts[0])
    scatter = fig.add_subplot(charts[1])
    x = np.arange(len(photo_set.classes))
    bottom = np.zeros(len(photo_set.classes))
    for split in photo_set.splits:
        values = np.array([counts[split][c] for c in photo_set.classes], dtype=float)
        bars.bar(x, values, bottom=bottom, label=split or "all")
        bottom += values
    bars.set_xticks(x)
    bars.set_xticklabels(photo_set.classes, rotation=75, ha="right", fontsize=8)
    bars.set_ylabel("images")
    bars.set_title(f"images per class ({len(photo_set.readable)} readable, {len(photo_set.unreadable)} corrupt)")
    bars.legend()
    sizes = np.asarray([p.size for p in photo_set.readable] or np.zeros((0, 2)))
    scatter.scatter(sizes[:, 0], sizes[:, 1], s=10, alpha=0.4)
    scatter.set_xlabel("width (px)")
    scatter.set_ylabel("height (px)")
    scatter.set_title("image resolution")
    readable = photo_set.readable
    thumbnails = outer[1].subgridspec(len(shown), THUMBNAILS_PER_ROW, hspace=0.7) if shown else None
    for row, group in enumerate(shown, 1):
        for column, index in enumerate(group.members[:THUMBNAILS_PER_ROW]):
            photo = readable[index]
            axis = fig.add_subplot(thumbnails[row - 1, column])
            thumbnail = read_rgb(photo.path)
            thumbnail.thumbnail((160, 160))
            axis.imshow(np.asarray(thumbnail))
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_xlabel(f"{photo.split + '/' if photo.split else ''}{photo.class_name}\n{photo.path.name}", fontsize=7)
            if column == 0:
                how = "exact" if group.exact else f"d<={group.max_distance}"
                extra = f" +{len(group.members) - THUMBNAILS_PER_ROW}" if len(group.members) > THUMBNAILS_PER_ROW else ""
                axis.set_title(f"group {row}: {group.kind} ({how}){extra}", fontsize=8, loc="left")
    return fig


def write_report(photo_set: PhotoSet, groups: Sequence[DuplicateGroup], threshold: int,
                 output_dir: str) -> Tuple[str, str]:
    import matplotlib.pyplot as plt

    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{output_dir}: cannot create the report folder ({exc.strerror or exc})") from None
    png, txt = os.path.join(output_dir, "report.png"), os.path.join(output_dir, "report.txt")
    fig = report_figure(photo_set, groups)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=100, format="png")
    finally:
        plt.close(fig)
    with atomic_path(png) as temp:
        temp.write_bytes(buffer.getvalue())
    atomic_write_text(txt, report_text(photo_set, groups, threshold))
    return png, txt


def run_report(args) -> int:
    existing = [p for p in ("report.png", "report.txt") if os.path.exists(os.path.join(args.output, p))]
    if existing and not args.force:
        raise InputError(f"{os.path.join(args.output, existing[0])}: already exists (use --force to overwrite)")
    check_writable_folder(args.output, "--output")  # fail before the long scan, not after it
    photo_set, groups = scan(args.data_dir, args.threshold)
    png, txt = write_report(photo_set, groups, args.threshold, args.output)
    print(report_text(photo_set, groups, args.threshold), end="")
    print(f"wrote {png} and {txt}")
    return EXIT_CLEAN


# ---------------------------------------------------------------- stats


def channel_stats(paths: Sequence[str], image_size: Optional[int] = None) -> Dict[str, object]:
    """Per-channel (R, G, B) mean and std over all pixels of all readable images, 0-255 scale.

    With `image_size`, each image is first resized to image_size x image_size (bicubic).
    """
    from PIL import Image

    total = np.zeros(3, np.float64)
    total_sq = np.zeros(3, np.float64)
    pixels = 0
    skipped = []
    for path in paths:
        try:
            image = read_rgb(path)
        except ValueError as exc:
            skipped.append({"file": path, "error": str(exc)})
            continue
        if image_size:
            image = image.resize((image_size, image_size), Image.BICUBIC)
        arr = np.asarray(image, dtype=np.float64).reshape(-1, 3)
        total += arr.sum(axis=0)
        total_sq += np.square(arr).sum(axis=0)
        pixels += arr.shape[0]
    if pixels == 0:
        raise ValueError("no readable images")
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - np.square(mean), 0.0))
    return {"images": len(paths) - len(skipped), "pixels": pixels, "mean": mean.tolist(), "std": std.tolist(),
            "mean_01": (mean / 255).tolist(), "std_01": (std / 255).tolist(), "skipped": skipped}


def run_stats(args) -> int:
    if args.image_size is not None and not 1 <= args.image_size <= 4096:
        raise InputError(f"--image-size: must be in [1, 4096], got {args.image_size}")
    try:
        found = find_photos(args.data_dir)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    paths = [str(p.path) for p in found.photos if args.split is None or p.split == args.split]
    if not paths:
        raise InputError(f"{args.data_dir}: no images in split {args.split!r}")
    try:
        result = channel_stats(paths, args.image_size)
    except ValueError as exc:
        raise InputError(f"{args.data_dir}: {exc}") from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        fmt = lambda values: "(" + ", ".join(f"{v:.3f}" for v in values) + ")"  # noqa: E731
        print(f"images: {result['images']}  pixels: {result['pixels']}")
        print(f"mean RGB (0-255): {fmt(result['mean'])}   std: {fmt(result['std'])}")
        print(f"mean RGB (0-1):   {fmt(result['mean_01'])}   std: {fmt(result['std_01'])}")
        for item in result["skipped"]:
            print(f"datatools: {item['file']}: skipped ({item['error']})", file=sys.stderr)
    return EXIT_CLEAN


# ---------------------------------------------------------------- command line


def _threshold(text: str) -> int:
    value = int(text)
    if not 0 <= value < HASH_BITS:
        raise argparse.ArgumentTypeError(f"expected 0..{HASH_BITS - 1} bits, got {value}")
    return value


class _Parser(DashOptionParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_INPUT_ERROR, f"error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mbv2-datatools", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    threshold_help = (f"near-duplicate threshold: perceptual-hash distance in bits of {HASH_BITS} "
                      f"(default {DEFAULT_THRESHOLD}; higher finds more, and more false matches)")

    check = sub.add_parser("check", help="unreadable files, duplicates, near-duplicates, leakage, label conflicts, balance")
    check.add_argument("data_dir", type=path_argument, help="<root>/<class>/ or <root>/{train,val}/<class>/")
    check.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD, help=threshold_help)
    check.add_argument("--json", type=path_argument, default=None, help="also write the findings to this JSON file")
    check.add_argument("--force", action="store_true", help="overwrite an existing --json file")

    split = sub.add_parser("split", help="write DST/{train,val}/<class>/ from a folder per class (or re-split a tree)")
    split.add_argument("src", type=path_argument, help="<root>/<class>/ or <root>/{train,val}/<class>/ (never changed)")
    split.add_argument("dst", type=path_argument, help="new folder for {train,val}/<class>/ and manifest.csv")
    split.add_argument("--val", type=float, default=0.2, help="fraction of each class for val (default 0.2)")
    split.add_argument("--seed", type=int, default=1, help="the same seed gives the same split (default 1)")
    split.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    split.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD, help=threshold_help)
    split.add_argument("--force", action="store_true",
                       help="replace an earlier split at DST (moved aside to DST.old-<time>, never deleted)")

    report = sub.add_parser("report", help="images per class, resolution scatter, corrupt files, duplicate groups "
                                           "-> report.png + report.txt")
    report.add_argument("data_dir", type=path_argument)
    report.add_argument("--output", type=path_argument, required=True, help="folder for report.png and report.txt")
    report.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD, help=threshold_help)
    report.add_argument("--force", action="store_true", help="overwrite an existing report")

    stats = sub.add_parser("stats", help="per-channel mean/std of all images")
    stats.add_argument("data_dir", type=path_argument)
    stats.add_argument("--split", default=None, help="only this split (e.g. train)")
    stats.add_argument("--image-size", type=int, default=None, help="resize to SxS first")
    stats.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


COMMANDS = {"check": run_check, "split": run_split, "report": run_report, "stats": run_stats}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
