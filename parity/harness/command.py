"""The one way the harness's command-line tools run: parse, run, turn failures into exit codes.

Exit codes: 2 with one `error: --option: problem` line for a usage error (`OneLineErrorParser`;
0 for --help), then `run` under `parity.core.cli.run_cli`: its own code, 2 with one `error:`
line for a ConversionError or any other UserError (bad input or an unusable destination) or
a path no system call accepts, 130 for Ctrl+C (the writers are atomic, so nothing
half-written is left behind).

Option types shared by `check`, `diff` and `bench` (every value range-checked when parsed,
as the trainer's config schema does): `int_in`, `float_in`, `existing_file`, `existing_folder`
and `path_argument` (parity.core.files).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Optional, Sequence

from parity.core.cli import run_cli
from parity.core.files import path_argument, shown_path
from parity.core.options import DashOptionParser, framework_log_level

__all__ = ["run_command", "OneLineErrorParser", "int_in", "float_in", "existing_file", "existing_folder", "path_argument",
           "SEED_RANGE", "IMAGE_SIZE_RANGE", "BATCH_RANGE", "WIDTH_RANGE", "CLASSES_RANGE"]

# Ranges shared by the tools (the trainer's where it has one: trainer/schema.py OPTIONS).
SEED_RANGE = (0, 2**31 - 1)  # MindSpore's and numpy's seeds are 32-bit
IMAGE_SIZE_RANGE = (32, 4096)  # below 32 px MobileNetV2's stride-32 features vanish
BATCH_RANGE = (1, 65536)
WIDTH_RANGE = (0.0, 10.0)  # (0, 10]: the width multiplier
CLASSES_RANGE = (1, 100_000)


class OneLineErrorParser(DashOptionParser):
    """Usage errors as one line, `error: --option: problem`, exit 2; both option spellings, dashes shown."""

    def error(self, message: str) -> None:  # type: ignore[override]
        text = message[len("argument "):] if message.startswith("argument ") else message
        print(f"error: {' '.join(text.split())}", file=sys.stderr)
        sys.exit(2)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """argparse `type=`: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    return parse


def float_in(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """argparse `type=`: a finite number in [low, high] ((low, high] with `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            shown = f"{'(' if low_open else '['}{low:g}, {'inf)' if math.isinf(high) else f'{high:g}]'}"
            raise argparse.ArgumentTypeError(f"must be a finite number in {shown}, got {text}")
        return value

    return parse


def existing_file(text: str) -> str:
    """argparse `type=`: a path naming a regular file (checked by `stat`; a FIFO is never opened); '' for none."""
    if not text:  # argparse passes a string default through `type` too
        return text
    path_argument(text)
    if not os.path.isfile(text):
        what = "is a folder" if os.path.isdir(text) else "not a regular file" if os.path.exists(text) else "no such file"
        raise argparse.ArgumentTypeError(f"{shown_path(text)}: {what}")
    return text


def existing_folder(text: str) -> str:
    """argparse `type=`: a path naming a folder; '' for none."""
    if not text:
        return text
    path_argument(text)
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{shown_path(text)}: {'not a folder' if os.path.exists(text) else 'no such folder'}")
    return text


def run_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
                argv: Optional[Sequence[str]] = None) -> int:
    framework_log_level(argv)  # before mindspore is first imported
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return run_cli(lambda: run(args))
