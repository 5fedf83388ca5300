"""One spelling per command-line option: `--data-path` (shown by --help); `--data_path` is accepted as the same.

Every tool's parser is a `DashOptionParser` and declares its options with dashes only. Before parsing, an option
written with underscores is respelled with dashes, so both spellings reach the same option while --help lists one.
A misspelt option is answered with the closest real ones (`--epoch`: did you mean --epochs?).
MindSpore's own log is kept to its errors unless `--verbose` (`framework_log_level`), so a tool's first line is ours.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Iterable, List, Optional, Sequence


def dashed(argv: Sequence[str]) -> List[str]:
    """`argv` with every `--long_option` (and `--long_option=value`) spelt `--long-option`; values untouched.

    Arguments after a bare `--` are positional, so they are left as they are."""
    result: List[str] = []
    for position, item in enumerate(argv):
        if item == "--":
            return result + list(argv[position:])
        if item.startswith("--") and len(item) > 2:
            name, equals, value = item.partition("=")
            item = name.replace("_", "-") + equals + value
        result.append(item)
    return result


def option_names(parser: argparse.ArgumentParser) -> List[str]:
    """The long options of `parser` and of its subcommands."""
    names: List[str] = []
    for action in parser._actions:
        names += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names += option_names(sub)
    return sorted(set(names))


def unknown_options_text(unknown: Iterable[str], known: Sequence[str]) -> str:
    """`--epoch (did you mean --epochs?)`, one entry per unknown item (an option's `=value` left out)."""
    parts = []
    for item in unknown:
        name = item.split("=")[0]
        close = difflib.get_close_matches(name, known, n=2, cutoff=0.75) if name.startswith("--") else []
        parts.append(f"{name} (did you mean {' or '.join(close)}?)" if close else name)
    return ", ".join(parts)


class DashOptionParser(argparse.ArgumentParser):
    """argparse with both spellings of an option and near-miss suggestions; declare options with dashes.

    A parser with --help also takes --verbose (read by `framework_log_level` before the tool imports MindSpore)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.add_help:
            self.add_argument(VERBOSE, action="store_true", help=VERBOSE_HELP)

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):  # type: ignore[override]
        return super().parse_known_args(dashed(sys.argv[1:] if args is None else args), namespace)

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace=None):  # type: ignore[override]
        parsed, rest = self.parse_known_args(args, namespace)
        if rest:
            self.error(f"unrecognized arguments: {unknown_options_text(rest, option_names(self))}")
        return parsed


def framework_log_level(argv: Optional[Sequence[str]] = None) -> None:
    """MindSpore's own log messages: errors only, unless the command line has `--verbose` (then MindSpore's
    default, its warnings too) or the user set GLOG_v. Call it before mindspore is imported: it reads GLOG_v then."""
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("GLOG_v", "2" if VERBOSE in argv else "3")


VERBOSE = "--verbose"
VERBOSE_HELP = "also show MindSpore's own log messages (its warnings; by default only its errors)"
