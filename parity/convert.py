"""`python -m parity.convert SRC DST ...`: entry point of the converter's CLI (`parity.harness.convert_cli`).

The converter itself, framework-neutral, is `parity.core.converter`.
"""
import sys

from parity.core import interrupts  # noqa: E402  before any import that starts a thread

interrupts.watch_sigint(__name__, "mbv2-convert")  # Ctrl+C: one line, exit 130

from parity.harness.convert_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
