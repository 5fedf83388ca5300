"""`python -m parity {check,bench,diff} ...`: the parity suite, the side-by-side benchmark, the stage-by-stage diff."""
from __future__ import annotations

import sys
from typing import List, Optional

from parity.core import interrupts  # noqa: E402  before any import that starts a thread
from parity.core.options import framework_log_level  # noqa: E402

interrupts.watch_sigint(__name__, "mbv2-parity")  # Ctrl+C: one line, exit 130
framework_log_level()  # MindSpore's own log: errors only unless --verbose (before mindspore is imported)

import importlib  # noqa: E402

from parity.core.cli import run_cli  # noqa: E402

COMMANDS = {
    "check": ("parity.harness.compare", "compare the twins: forward, gradients, BN stats, optimizer steps, loss, LR, preprocessing"),
    "bench": ("parity.harness.bench", "time the MindSpore twin against the PyTorch twin, side by side"),
    "diff": ("parity.harness.diff", "name the first stage where two checkpoints (or two frameworks) part ways"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m parity {check,bench,diff} [options]", file=sys.stderr)
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:6s} {help_text}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    def run() -> int:
        return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])

    return run_cli(run, interrupted=f"error: interrupted (SIGINT): python -m parity {argv[0]} stopped")


if __name__ == "__main__":
    sys.exit(main())
