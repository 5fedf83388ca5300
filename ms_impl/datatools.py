"""Dataset tools: a report (images per class, resolutions, corrupt files) and per-channel mean/std.

    python -m ms_impl.datatools report DATA_DIR --output REPORT_DIR [--force]
    python -m ms_impl.datatools stats DATA_DIR [--image-size S] [--json]

DATA_DIR is either `<root>/{train,val,...}/<class>/*.jpg` or `<root>/<class>/*.jpg`.
The report writes `report.png` (bar chart of images per class and split,
scatter of image width x height) and `report.txt` (counts, resolutions,
every corrupt file with the reason).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ms_impl.trainer.images import IMAGE_EXTENSIONS, read_rgb
from parity.core.files import WriteError, atomic_path, atomic_write_text, check_writable_folder

SPLIT_NAMES = ("train", "val", "test", "eval")
EXIT_INPUT_ERROR = 2


@dataclass
class ImageRecord:
    split: str
    class_name: str
    path: str
    size: Optional[Tuple[int, int]] = None  # (width, height) when readable
    error: Optional[str] = None


@dataclass
class DatasetScan:
    root: str
    splits: List[str]
    classes: List[str]
    records: List[ImageRecord] = field(default_factory=list)

    @property
    def corrupt(self) -> List[ImageRecord]:
        return [r for r in self.records if r.error is not None]

    def counts(self) -> Dict[str, Counter]:
        per_split: Dict[str, Counter] = {split: Counter() for split in self.splits}
        for r in self.records:
            if r.error is None:
                per_split[r.split][r.class_name] += 1
        return per_split


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None


def _subdirs(path: str) -> List[str]:
    return sorted(d for d in _listdir(path) if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))


def find_images(root: str) -> List[Tuple[str, str, str]]:
    """(split, class, path) for every image file; split is '' for a flat <root>/<class>/ layout."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a folder")
    top = _subdirs(root)
    splits = [d for d in top if d.lower() in SPLIT_NAMES]
    layout = [(s, os.path.join(root, s)) for s in splits] if splits else [("", root)]
    found = []
    for split, split_dir in layout:
        for class_name in _subdirs(split_dir):
            class_dir = os.path.join(split_dir, class_name)
            for name in sorted(_listdir(class_dir)):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append((split, class_name, os.path.join(class_dir, name)))
    if not found:
        raise ValueError(f"{root}: no images found (expected <root>/[train|val/]<class>/*.jpg)")
    return found


def read_image(path: str):
    """The image as an RGB PIL image; raises ValueError with the reason when it cannot be decoded."""
    return read_rgb(path)


def scan_dataset(root: str) -> DatasetScan:
    found = find_images(root)
    splits = sorted({s for s, _, _ in found}, key=lambda s: (SPLIT_NAMES.index(s.lower()) if s.lower() in SPLIT_NAMES else 99, s))
    classes = sorted({c for _, c, _ in found})
    scan = DatasetScan(root=root, splits=splits, classes=classes)
    for split, class_name, path in found:
        record = ImageRecord(split, class_name, path)
        try:
            record.size = read_image(path).size
        except ValueError as exc:
            record.error = str(exc)
        scan.records.append(record)
    return scan


def report_text(scan: DatasetScan) -> str:
    counts = scan.counts()
    sizes = [r.size for r in scan.records if r.size is not None]
    lines = [f"dataset: {os.path.abspath(scan.root)}",
             f"images: {len(scan.records)} files, {len(sizes)} readable, {len(scan.corrupt)} corrupt",
             f"classes: {len(scan.classes)}", ""]
    split_names = [s or "all" for s in scan.splits]
    lines.append(f"{'class':<32}" + "".join(f"{name:>8}" for name in split_names))
    for class_name in scan.classes:
        lines.append(f"{class_name:<32}" + "".join(f"{counts[s][class_name]:>8}" for s in scan.splits))
    lines.append(f"{'total':<32}" + "".join(f"{sum(counts[s].values()):>8}" for s in scan.splits))
    if sizes:
        arr = np.asarray(sizes)
        common = Counter(sizes).most_common(3)
        lines += ["", "resolution (width x height):",
                  f"  min {arr[:, 0].min()}x{arr[:, 1].min()}, max {arr[:, 0].max()}x{arr[:, 1].max()}, "
                  f"median {int(np.median(arr[:, 0]))}x{int(np.median(arr[:, 1]))}",
                  "  most common: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in common)]
    lines += ["", f"corrupt files: {len(scan.corrupt)}"]
    lines += [f"  {r.path}: {r.error}" for r in scan.corrupt]
    return "\n".join(lines) + "\n"


def report_figure(scan: DatasetScan):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = scan.counts()
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(16, 6), gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(scan.classes))
    bottom = np.zeros(len(scan.classes))
    for split in scan.splits:
        values = np.array([counts[split][c] for c in scan.classes], dtype=float)
        bars.bar(x, values, bottom=bottom, label=split or "all")
        bottom += values
    bars.set_xticks(x)
    bars.set_xticklabels(scan.classes, rotation=75, ha="right", fontsize=8)
    bars.set_ylabel("images")
    bars.set_title(f"images per class ({len(scan.records) - len(scan.corrupt)} readable, {len(scan.corrupt)} corrupt)")
    bars.legend()
    sizes = np.asarray([r.size for r in scan.records if r.size is not None] or np.zeros((0, 2)))
    scatter.scatter(sizes[:, 0], sizes[:, 1], s=10, alpha=0.4)
    scatter.set_xlabel("width (px)")
    scatter.set_ylabel("height (px)")
    scatter.set_title("image resolution")
    fig.tight_layout()
    return fig


def write_report(scan: DatasetScan, output_dir: str) -> Tuple[str, str]:
    import matplotlib.pyplot as plt

    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{output_dir}: cannot create the report folder ({exc.strerror or exc})") from None
    png, txt = os.path.join(output_dir, "report.png"), os.path.join(output_dir, "report.txt")
    fig = report_figure(scan)
    try:
        with atomic_path(png) as temp:
            fig.savefig(temp, dpi=100, format="png")
    finally:
        plt.close(fig)
    atomic_write_text(txt, report_text(scan))
    return png, txt


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
            image = read_image(path)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbv2-datatools", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="images per class, resolution scatter, corrupt files -> report.png + report.txt")
    report.add_argument("data_dir")
    report.add_argument("--output", required=True, help="folder for report.png and report.txt")
    report.add_argument("--force", action="store_true", help="overwrite an existing report")
    stats = sub.add_parser("stats", help="per-channel mean/std of all images")
    stats.add_argument("data_dir")
    stats.add_argument("--split", default=None, help="only this split (e.g. train)")
    stats.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=None, help="resize to SxS first")
    stats.add_argument("--json", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ValueError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted (SIGINT); no partial file was left", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "stats" and args.image_size is not None and not 1 <= args.image_size <= 4096:
        raise ValueError(f"--image-size: must be in [1, 4096], got {args.image_size}")
    if args.command == "report":
        existing = [p for p in ("report.png", "report.txt") if os.path.exists(os.path.join(args.output, p))]
        if existing and not args.force:
            print(f"error: {os.path.join(args.output, existing[0])}: already exists (use --force to overwrite)", file=sys.stderr)
            return EXIT_INPUT_ERROR
        check_writable_folder(args.output, "--output")
        scan = scan_dataset(args.data_dir)
        png, txt = write_report(scan, args.output)
        print(report_text(scan), end="")
        print(f"wrote {png} and {txt}")
        return 0
    found = find_images(args.data_dir)
    paths = [p for split, _, p in found if args.split is None or split == args.split]
    if not paths:
        print(f"error: {args.data_dir}: no images in split {args.split!r}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    result = channel_stats(paths, args.image_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        fmt = lambda values: "(" + ", ".join(f"{v:.3f}" for v in values) + ")"  # noqa: E731
        print(f"images: {result['images']}  pixels: {result['pixels']}")
        print(f"mean RGB (0-255): {fmt(result['mean'])}   std: {fmt(result['std'])}")
        print(f"mean RGB (0-1):   {fmt(result['mean_01'])}   std: {fmt(result['std_01'])}")
        for item in result["skipped"]:
            print(f"datatools: {item['file']}: skipped ({item['error']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
