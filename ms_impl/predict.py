"""Classify images with a trained MindSpore MobileNetV2: top-k classes and the garbage category.

    python ms_impl/predict.py --checkpoint best.ckpt photo.jpg more_photos/ [--top-k 5] [--json] \
        [--tta flip|flip+whole] [--sheet sheet.png]

The category is the one whose classes hold the most probability together (the
decision people act on), shown with that summed probability; it can differ
from the top-1 class's category. `--tta flip` averages the logits of each
image and its mirror image; `--tta flip+whole` also those of the whole photo
resized to a square (no crop) and its mirror image (the frozen recipe's evaluation). `--sheet FILE.png` draws a contact sheet: every
photo with its top class, category and probability; when a photo's folder is
named after a class (e.g. val/Battery/x.jpg) wrong predictions are framed red
and uncertain ones (probability below --uncertain-below) orange.
Preprocessing is the trainer's eval pipeline (`ms_impl.transforms.eval_transforms`).
An unreadable image is reported on its own line and the others are still
predicted; the exit status is non-zero only when the checkpoint is bad or no
image at all could be predicted.
"""
from __future__ import annotations

if not __package__:  # run as `python ms_impl/predict.py`: put the repo root on the import path
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

from parity.core import interrupts  # noqa: E402  before any import that starts a thread
from parity.core.options import framework_log_level  # noqa: E402

interrupts.watch_sigint(__name__, "mbv2-predict")  # Ctrl+C: one line, exit 130
framework_log_level()  # MindSpore's own log: errors only unless --verbose (before mindspore is imported)

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ms_impl.trainer.classes import ClassInfo, category_groups, load_classes
from ms_impl.trainer.errors import UsageError
from ms_impl.trainer.images import IMAGE_EXTENSIONS, list_regular_files, not_regular_reason, pipeline_bytes, unreadable_reason
from ms_impl.trainer.metrics import TTA_MODES, average_flip_logits, category_probabilities, softmax
from ms_impl.trainer.model_io import CheckpointError, load_model
from ms_impl.trainer.run_folder import recorded_tta
from parity.core.cli import run_cli
from parity.core.files import WriteError, one_line, path_problem, shown_path
from parity.core.options import DashOptionParser

EXIT_INPUT_ERROR = 2
DEFAULT_IMAGE_SIZE = 224


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def collect_images(inputs: Sequence[str]) -> Tuple[List[str], List[Dict[str, str]]]:
    """Files named directly, plus image files found (recursively, sorted) under named folders.
    A FIFO, socket or device is never opened: named directly it is an error, in a folder a warning."""
    files: List[str] = []
    errors: List[Dict[str, str]] = []
    for item in inputs:
        if path_problem(item):
            errors.append({"file": shown_path(item), "error": path_problem(item)})
        elif os.path.isdir(item):
            try:
                found = sorted(str(p) for p in list_regular_files(item, _warn, recursive=True, skip_hidden=False,
                                                                  suffixes=IMAGE_EXTENSIONS))
            except OSError as exc:
                errors.append({"file": item, "error": f"cannot list the folder ({exc.strerror or exc})"})
                continue
            if not found:
                errors.append({"file": item, "error": "folder holds no image files"})
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        elif os.path.lexists(item):
            errors.append({"file": item, "error": not_regular_reason(item)})
        else:
            errors.append({"file": item, "error": "no such file or folder"})
    return files, errors


def load_images(files: Sequence[str], image_size: int, whole: bool = False) -> Tuple[List[str], List[np.ndarray], List[Dict[str, str]]]:
    """Eval-preprocessed CHW arrays of the readable files; one error record per unreadable file.
    `whole`: the whole photo resized to a square instead of the eval crop (`transforms.whole_transforms`)."""
    from mindspore.dataset import transforms

    from ms_impl.transforms import eval_transforms, whole_transforms

    pipeline = transforms.Compose((whole_transforms if whole else eval_transforms)(image_size))
    good, arrays, errors = [], [], []
    for path in files:
        # PIL decides first (the trainer's check); only formats MindSpore's Decode reads reach it, so a
        # failed decode never dumps ./unsupported_image.* or ./abnormal_image.* into the current folder
        try:
            encoded = pipeline_bytes(path)  # "empty file", "cannot read file (...)"
        except ValueError as exc:
            errors.append({"file": path, "error": str(exc) if str(exc) == "empty file" or str(exc).startswith("cannot read")
                           else "cannot decode image"})
            continue
        if unreadable_reason(path):
            errors.append({"file": path, "error": "cannot decode image"})
            continue
        try:
            arrays.append(np.asarray(pipeline(encoded), dtype=np.float32))
        except RuntimeError:  # mindspore.dataset reports a failed decode as RuntimeError
            errors.append({"file": path, "error": "cannot decode image"})
            continue
        good.append(path)
    return good, arrays, errors


def top_k_records(probs: np.ndarray, classes: Sequence[ClassInfo], top_k: int) -> List[dict]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [
        {
            "rank": rank + 1,
            "index": int(i),
            "name": classes[i].name,
            "name_zh": classes[i].name_zh,
            "probability": float(probs[i]),
            "category_zh": classes[i].category_zh,
            "category": classes[i].category,
        }
        for rank, i in enumerate(order)
    ]


def true_class(path: str, classes: Sequence[ClassInfo]) -> Optional[int]:
    """The class index the photo's folder names (English or Chinese class name), else None."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    for c in classes:
        if folder in (c.name, c.name_zh):
            return c.index
    return None


def prediction_record(path: str, logits: np.ndarray, classes: Sequence[ClassInfo], top_k: int) -> dict:
    """Top-k classes, and the category by summed class probability, of one image's logits."""
    groups, names_zh, names_en = category_groups(classes)
    probs = softmax(logits[None])[0]
    category_probs = category_probabilities(logits[None], groups)[0]
    category = int(category_probs.argmax())
    record = {"file": path, "category_zh": names_zh[category], "category": names_en[category],
              "category_probability": float(category_probs[category]), "top_k": top_k_records(probs, classes, top_k)}
    truth = true_class(path, classes)
    if truth is not None:
        record["true_index"] = truth
        record["correct"] = bool(record["top_k"][0]["index"] == truth)
    return record


def predict_files(net, files: Sequence[str], classes: Sequence[ClassInfo], image_size: int, top_k: int, batch_size: int = 16,
                  tta: str = "none"):
    """(predictions, errors): one prediction per readable image, one error per unreadable one.
    `tta="flip"`: logits averaged over each image and its mirror image; `tta="flip+whole"`: also over
    the whole photo resized to a square and its mirror image (the frozen recipe's evaluation)."""
    import mindspore as ms

    good, arrays, errors = load_images(files, image_size)
    wholes = load_images(good, image_size, whole=True)[1] if tta == "flip+whole" else None

    def flip_mean(batch):  # CHW arrays: mirroring the crop = reversing the width axis
        return average_flip_logits(net(ms.Tensor(batch)).asnumpy(), net(ms.Tensor(np.ascontiguousarray(batch[..., ::-1]))).asnumpy())

    predictions = []
    for start in range(0, len(good), batch_size):
        batch = np.stack(arrays[start:start + batch_size])
        logits = net(ms.Tensor(batch)).asnumpy().astype(np.float64) if tta == "none" else flip_mean(batch)
        if wholes is not None:
            logits = (logits + flip_mean(np.stack(wholes[start:start + batch_size]))) / 2
        for path, row in zip(good[start:start + batch_size], logits):
            predictions.append(prediction_record(path, row, classes, top_k))
    return predictions, errors


def format_text(predictions: Sequence[dict]) -> str:
    lines = []
    for item in predictions:
        mark = "" if "correct" not in item else ("  [correct]" if item["correct"] else "  [WRONG]")
        lines.append(f"{item['file']}: {item['category_zh']} ({item['category']}) "
                     f"{100 * item['category_probability']:.2f}%{mark}")
        for entry in item["top_k"]:
            lines.append(
                f"  {entry['rank']}. {entry['name']} / {entry['name_zh']}  {100 * entry['probability']:6.2f}%"
                f"  [{entry['category_zh']} {entry['category']}]"
            )
    return "\n".join(lines)


def configured_image_size(config_path: Optional[str]) -> Optional[int]:
    """`image_size` of a trainer config (None for a classes file or CSV)."""
    if not config_path or config_path.lower().endswith(".csv"):
        return None
    from ms_impl.trainer.config import load_config
    from ms_impl.trainer.config_files import read_yaml

    if "classes" in read_yaml(Path(config_path)):
        return None
    return load_config(["--config", config_path]).image_size


def build_parser() -> argparse.ArgumentParser:
    parser = DashOptionParser(prog="mbv2-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="trained MindSpore checkpoint (.ckpt)")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="eval crop size (default: the config's image_size, else 224)")
    parser.add_argument("--config", default=None,
                        help="trainer config, classes YAML or CSV: class names (default configs/garbage26_classes.yaml)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--tta", choices=TTA_MODES, default=None,
                        help="test-time augmentation: flip = average the logits of each image and its mirror image, "
                             "flip+whole = also of the whole photo and its mirror (default: what the checkpoint's "
                             "run evaluated with, from its summary.json; none without one)")
    parser.add_argument("--sheet", default=None, metavar="FILE.png",
                        help="also draw a contact sheet of the photos with their predictions (PNG)")
    parser.add_argument("--uncertain-below", type=float, default=0.5,
                        help="on the sheet, mark predictions whose top-1 probability is below this (default 0.5)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --sheet file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _predict(args), interrupted="error: interrupted (SIGINT)")


def _predict(args: argparse.Namespace) -> int:
    try:
        for option, value in (("--checkpoint", args.checkpoint), ("--config", args.config), ("--sheet", args.sheet)):
            if value and path_problem(value):
                raise ValueError(f"{option} {shown_path(value)}: {path_problem(value)}")
        classes = load_classes(args.config)
        image_size = args.image_size or configured_image_size(args.config) or DEFAULT_IMAGE_SIZE
        if args.top_k < 1 or image_size < 32:
            raise ValueError("--top-k must be >= 1 and --image-size >= 32")
        if args.sheet is not None:
            check_sheet_path(args.sheet, args.force)
        if not 0.0 <= args.uncertain_below <= 1.0:
            raise ValueError("--uncertain-below must be in [0, 1]")
        net = load_model(args.checkpoint, fast_conv="auto")  # our CPU kernels where they build
    except (CheckpointError, UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if net.num_classes != len(classes):
        print(f"error: {args.checkpoint}: model has {net.num_classes} classes but the class list has {len(classes)}", file=sys.stderr)
        return EXIT_INPUT_ERROR

    tta = args.tta or recorded_tta(Path(args.checkpoint)) or "none"
    files, errors = collect_images(args.images)
    predictions, read_errors = predict_files(net, files, classes, image_size, min(args.top_k, len(classes)), tta=tta)
    errors += read_errors
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "tta": tta, "predictions": predictions, "errors": errors},
                         ensure_ascii=False, indent=2))
    elif predictions:
        print(format_text(predictions))
    for err in errors:
        print(f"error: {err['file']}: {err['error']}", file=sys.stderr)
    if args.sheet is not None and predictions:
        from ms_impl.trainer.contact_sheet import draw_contact_sheet

        try:
            draw_contact_sheet(args.sheet, predictions, classes, args.uncertain_below)
        except WriteError as exc:  # its text names the file
            print(f"error: {one_line(exc, with_type=False)}", file=sys.stderr)
            return EXIT_INPUT_ERROR
        print(f"predict: contact sheet of {len(predictions)} photo(s) written to {args.sheet}", file=sys.stderr)
    return 0 if predictions else EXIT_INPUT_ERROR


def check_sheet_path(path: str, force: bool) -> None:
    """Fail before any work: the sheet must be a new .png (or --force) in an existing folder."""
    if not path.lower().endswith(".png"):
        raise ValueError(f"--sheet {path}: expected a .png file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--sheet {path}: folder {folder} does not exist")
    if os.path.exists(path) and not force:
        raise ValueError(f"--sheet {path}: already exists; pass --force to overwrite it")


if __name__ == "__main__":
    sys.exit(main())
