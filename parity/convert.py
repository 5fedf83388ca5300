"""`python -m parity.convert SRC DST ...`: entry point of the converter's CLI (`parity.harness.convert_cli`).

The converter itself, framework-neutral, is `parity.core.converter`.
"""
import sys

from parity.harness.convert_cli import main

if __name__ == "__main__":
    sys.exit(main())
