"""`python -m parity.convert SRC DST ...`: entry point of the converter's CLI (`parity.harness.convert_cli`).

The converter itself, framework-neutral, is `parity.core.converter`.
"""
import sys

from parity.core import interrupts  # noqa: E402  before any import that starts a thread
from parity.core.options import framework_log_level  # noqa: E402

interrupts.watch_sigint(__name__, "mbv2-convert")  # Ctrl+C: one line, exit 130
framework_log_level()  # MindSpore's own log: errors only unless --verbose (before mindspore is imported)

from parity.harness.convert_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
