"""`python -m parity.convert SRC DST ...` (console script `mbv2-convert`): the converter's command line.

Exit 0 on success, 2 on bad input or usage (one-line message, nothing
written), 1 when `--verify` finds the twins disagree (nothing written).
Harness layer: `--verify` runs both twins (`parity.harness.verify`); when they disagree it prints
the first diverging stage (`parity.harness.diff`).
"""
from __future__ import annotations

from parity.core import interrupts  # noqa: E402  before any import that starts a thread
from parity.core.options import framework_log_level  # noqa: E402

interrupts.watch_sigint(__name__, "mbv2-convert")  # Ctrl+C: one line, exit 130
framework_log_level()  # MindSpore's own log: errors only unless --verbose (before mindspore is imported)

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from parity.core import tolerances
from parity.core.converter import (FRAMEWORK_OF_LAYOUT, LAYOUTS, Checkpoint, ConversionError, check_finite,
                                   format_of, group_skipped, convert, read_checkpoint, write_checkpoint)
from parity.core.files import path_problem, shown_path
from parity.core.options import DashOptionParser
from parity.harness.command import run_command
from parity.harness.diff import first_divergence_line
from parity.harness.verify import VerifyReport, verify_conversion

__all__ = ["main"]


def _default_to_layout(dst: Path, from_layout: str) -> str:
    fmt = format_of(dst)
    if fmt == "torch":
        return "torchvision"
    if fmt == "mindspore":
        return "ms-official"
    return "ms-official" if FRAMEWORK_OF_LAYOUT[from_layout] == "torch" else "torchvision"


def _describe(ckpt: Checkpoint) -> str:
    classes = "backbone only" if ckpt.num_classes is None else f"{ckpt.num_classes} classes"
    return f"layout {ckpt.layout}, width {ckpt.width_mult}, {classes}, {len(ckpt.tensors)} tensors"


def _parser() -> argparse.ArgumentParser:
    parser = DashOptionParser(
        prog="mbv2-convert",
        description="Convert a MobileNetV2 checkpoint between torchvision (.pth), official MindSpore and mindcv "
                    "(.ckpt) layouts; .safetensors holds any layout. Exit 2 on bad input, 1 if --verify fails.")
    parser.add_argument("src", type=Path, help="source checkpoint (.pth, .pt, .ckpt, .safetensors)")
    parser.add_argument("dst", type=Path, help="destination file; its extension picks the format")
    parser.add_argument("--from-layout", choices=LAYOUTS, help="source layout (default: detected)")
    parser.add_argument("--to-layout", choices=LAYOUTS,
                        help="destination layout (default: torchvision for .pth/.pt, ms-official for .ckpt, "
                             "the other framework's for .safetensors)")
    parser.add_argument("--num-classes", type=int, help="expected class count; a different one needs --drop-head")
    parser.add_argument("--drop-head", action="store_true", help="write the backbone only (no classifier)")
    parser.add_argument("--force", action="store_true", help="overwrite DST (and allow DST == SRC)")
    parser.add_argument("--keep-dtype", action="store_true",
                        help="keep float16/bfloat16 tensors in half precision (default: write them as float32)")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="convert even when a tensor holds NaN or Inf (default: refuse, naming the tensor)")
    parser.add_argument("--verify", action="store_true",
                        help="compare the source twin's and the destination twin's eval outputs on a random batch, "
                             "each against the PyTorch twin in float64; fail above "
                             f"{tolerances.NOISE_MULTIPLE:g}x the float32 noise floor")
    parser.add_argument("--verify-image-size", type=int, default=224, metavar="PX",
                        help="side of the random images --verify runs (default 224)")
    return parser


def _run(args: argparse.Namespace) -> int:
    src, dst = args.src, args.dst
    for path in (src, dst):
        if path_problem(path):
            raise ConversionError(f"{shown_path(path)}: {path_problem(path)}")
    format_of(src)
    format_of(dst)
    if dst.is_dir():
        raise ConversionError(f"{dst}: is a folder; name the destination file")
    if dst.exists() and not args.force:
        same = src.exists() and os.path.samefile(src, dst)
        raise ConversionError(f"{dst}: {'is the source file' if same else 'already exists'}; "
                              f"pass --force to overwrite")
    source = read_checkpoint(src, layout=args.from_layout)
    line = f"read {src}: {_describe(source)}"
    if source.skipped:
        line += f"; skipped {len(source.skipped)} non-model entries: {group_skipped(source.skipped)}"
    print(line)
    if not args.allow_nonfinite:
        check_finite(source)
    half = sorted(set(source.dtypes.values()))
    if half:
        kept = "kept" if args.keep_dtype else "written as float32 (--keep-dtype keeps them)"
        print(f"{len(source.dtypes)} tensors in {'/'.join(half)}: {kept}")
    to_layout = args.to_layout or _default_to_layout(dst, source.layout)
    result = convert(source, to_layout, num_classes=args.num_classes, drop_head=args.drop_head)
    failed: List[VerifyReport] = []

    def verify_written(temp: Path) -> None:
        # Read back what was written, so the check covers the file and not just the arrays in memory.
        report = verify_conversion(source, read_checkpoint(temp, layout=result.layout),
                                   image_size=args.verify_image_size)
        print(f"verify: {report.reference} vs {report.candidate}, {report.compared}: "
              f"max abs diff {report.max_abs:.3e}, max rel diff {report.max_rel:.3e}; {report.verdict_text()}")
        if not report.ok:
            failed.append(report)
            # Where the two twins part ways, stage by stage (`python -m parity diff`'s machinery).
            written = read_checkpoint(temp, layout=result.layout)
            print(f"verify: {first_divergence_line(source, written, args.verify_image_size)}")
            raise ConversionError(f"{dst}: verification failed, nothing written")

    if args.verify:
        os.environ.setdefault("GLOG_v", "3")
        _use_cpu_pynative()
    try:
        write_checkpoint(result, dst, force=args.force, keep_dtype=args.keep_dtype,
                         before_replace=verify_written if args.verify else None)
    except ConversionError:
        if failed:
            print(f"error: {dst}: the twins disagree: {failed[0].verdict_text()}; nothing written", file=sys.stderr)
            return 1
        raise
    print(f"wrote {dst}: {_describe(result)}")
    return 0


def _use_cpu_pynative() -> None:
    # Verification runs a tiny batch: CPU and PyNative start fastest and need no device.
    import mindspore as ms

    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(_parser(), _run, argv)
