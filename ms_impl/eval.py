"""Evaluate a MobileNetV2 checkpoint on a dataset's val split: top-1/top-5, loss, per-class report.

    python ms_impl/eval.py --checkpoint runs/garbage26_cpu/checkpoints/mobilenetv2-best.ckpt \
        --data-path /path/to/garbage26 [--tta flip] [--report-dir DIR] [--device CPU] [--key value ...]

Model and data keys (width_mult, image_size, classes...) come from the same
configs as training. Also reports the garbage-category accuracy (category =
the one whose classes hold the most probability) and its confusion matrix.
`--tta flip` averages the logits of each image and its mirror image,
`--tta flip+whole` also those of the whole photo and its mirror; without
`--tta`, the mode the checkpoint's run evaluated with (its summary.json). With
`--report-dir`, writes per_class.csv, confusion_matrix.png,
category_confusion.txt/.png and eval.json there.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: put the repository root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parity.core import interrupts  # noqa: E402  before any import that starts a thread
from parity.core.options import framework_log_level  # noqa: E402

interrupts.watch_sigint(__name__, "mbv2-eval")  # Ctrl+C: one line, exit 130
framework_log_level()  # MindSpore's own log: errors only unless --verbose (before mindspore is imported)


from ms_impl.trainer import report
from ms_impl.trainer.metrics import evaluate
from parity.core.cli import run_cli
from parity.core.files import WriteError, atomic_write_text, check_writable_folder, path_argument
from parity.core.options import DashOptionParser

log = logging.getLogger("ms_impl.eval")


def _path(text: str) -> Path:
    return Path(path_argument(text))


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = DashOptionParser(add_help=False)  # --help: config.parse_config lists these and every config key
    parser.add_argument("--checkpoint", type=_path, required=True, help="a .ckpt written by ms_impl/train.py")
    parser.add_argument("--report-dir", type=_path, help="write per_class.csv, confusion_matrix.png, eval.json here")
    return run_cli(lambda: _evaluate(argv, parser))


def _evaluate(argv: Optional[List[str]], parser: argparse.ArgumentParser) -> int:
    from ms_impl.trainer import checkpoint, dataset
    from ms_impl.trainer.classes import category_groups
    from ms_impl.trainer.config import parse_config
    from ms_impl.trainer.device import set_device
    from ms_impl.trainer.run_folder import recorded_tta

    cfg, known = parse_config(argv, description=__doc__.split("\n\n")[0], parents=[parser])
    if known.report_dir is not None:  # checked before the (long) evaluation
        check_writable_folder(known.report_dir, "--report-dir")
    if "tta" not in known.command_line_keys:
        cfg.tta = recorded_tta(known.checkpoint) or cfg.tta  # the checkpoint's run's own evaluation, when known
    set_device(cfg.device, cfg.mode)
    data_path, image_size, synthetic = dataset.resolve_data(cfg)
    images = dataset.scan_split(data_path, "val", [c.name for c in cfg.classes])
    from ms_impl.mobilenetv2 import MobileNetV2

    network = MobileNetV2(len(cfg.classes), cfg.width_mult, dropout=cfg.dropout, fast_conv=cfg.fast_conv)
    checkpoint.load_network_weights(known.checkpoint, {p.name: p for p in network.get_parameters()})
    data = dataset.eval_dataset(images, image_size, cfg.batch_size, cfg.num_workers)
    groups, category_names, category_names_en = category_groups(cfg.classes)
    whole = dataset.eval_dataset(images, image_size, cfg.batch_size, cfg.num_workers, whole=True) if cfg.tta == "flip+whole" else None
    result = evaluate(network, data, len(cfg.classes), cfg.label_smoothing, groups=groups, tta=cfg.tta, whole_dataset=whole)

    source = "synthetic set" if synthetic else str(data_path)
    log.info("%s on %s val (%d images%s): top-1 %.4f  top-5 %.4f  loss %.4f  category %.4f",
             known.checkpoint, source, result.num_images, f", --tta {cfg.tta}" if cfg.tta != "none" else "",
             result.top1, result.top5, result.loss, result.category_acc)
    log.info("%s", report.per_class_table(result.confusion, cfg.classes))
    log.info("confusion matrix (rows: true class index, columns: predicted):\n%s", result.confusion)
    category_text = report.category_table(result.category_confusion, category_names)
    log.info("category confusion matrix:\n%s", category_text)
    if known.report_dir:
        try:
            known.report_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"{known.report_dir}: --report-dir cannot be created ({e.strerror or e})") from None
        report.write_per_class_csv(known.report_dir / "per_class.csv", result.confusion, cfg.classes)
        report.plot_confusion_matrix(known.report_dir / "confusion_matrix.png", result.confusion, cfg.classes, f"{known.checkpoint.name}: top-1 {result.top1:.3f}")
        atomic_write_text(known.report_dir / "category_confusion.txt", category_text + "\n")
        report.plot_category_confusion(known.report_dir / "category_confusion.png", result.category_confusion, category_names,
                                       category_names_en, f"{known.checkpoint.name}: category accuracy {result.category_acc:.3f}")
        report.write_json(known.report_dir / "eval.json", {
            "checkpoint": str(known.checkpoint), "data": source, "num_images": result.num_images, "tta": cfg.tta,
            "top1": result.top1, "top5": result.top5, "loss": result.loss, "category_acc": result.category_acc,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())

