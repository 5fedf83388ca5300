"""Export a trained MindSpore MobileNetV2 to MINDIR or ONNX for deployment.

    python ms_impl/export.py --checkpoint best.ckpt --format MINDIR [--image-size 224] [--output net.mindir] [--force]

The exported graph takes one float32 NCHW batch of eval-preprocessed images
(`ms_impl.transforms.eval_transforms`) and returns logits. MINDIR reloads with
`nn.GraphCell(mindspore.load(path))`; ONNX runs in onnxruntime. AIR needs an
Ascend device and is refused here with that reason.
"""
from __future__ import annotations

if not __package__:  # run as `python ms_impl/export.py`: put the repo root on the import path
    import os as _os
    import sys as _sys

    _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))

from parity.core import interrupts  # noqa: E402  before any import that starts a thread
from parity.core.options import framework_log_level  # noqa: E402

interrupts.watch_sigint(__name__, "mbv2-export")  # Ctrl+C: one line, exit 130
framework_log_level()  # MindSpore's own log: errors only unless --verbose (before mindspore is imported)

import argparse
import os
import sys
from typing import Optional, Sequence

from ms_impl.export_model import SUFFIX, UNSUPPORTED, export_model
from ms_impl.trainer.model_io import load_model
from parity.core.cli import run_cli
from parity.core.files import path_problem, shown_path
from parity.core.options import DashOptionParser

EXIT_INPUT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = DashOptionParser(prog="mbv2-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="trained MindSpore checkpoint (.ckpt)")
    parser.add_argument("--format", required=True, type=str.upper, help="MINDIR or ONNX")
    parser.add_argument("--image-size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--batch-size", type=int, default=1, help="fixed batch dimension of the graph (default 1)")
    parser.add_argument("--output", default=None, help="output file (default: the checkpoint's name with .mindir / .onnx)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    if args.format in UNSUPPORTED:
        print(f"error: format {args.format} is not supported here: {UNSUPPORTED[args.format]}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if args.format not in SUFFIX:
        print(f"error: unknown format {args.format!r}; choose MINDIR or ONNX", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if args.image_size < 32 or args.batch_size < 1:
        print("error: --image-size must be >= 32 and --batch-size >= 1", file=sys.stderr)
        return EXIT_INPUT_ERROR
    for option, value in (("--checkpoint", args.checkpoint), ("--output", args.output)):
        if value and path_problem(value):
            print(f"error: {option} {shown_path(value)}: {path_problem(value)}", file=sys.stderr)
            return EXIT_INPUT_ERROR
    output = args.output or os.path.splitext(args.checkpoint)[0] + SUFFIX[args.format]
    other = {suffix: name for name, suffix in SUFFIX.items() if name != args.format}
    if os.path.splitext(output)[1].lower() in other:
        print(f"error: --output {output}: a {other[os.path.splitext(output)[1].lower()]} name for a {args.format} "
              f"model; name it *{SUFFIX[args.format]} or pass --format {other[os.path.splitext(output)[1].lower()]}",
              file=sys.stderr)
        return EXIT_INPUT_ERROR
    if os.path.isdir(output):
        print(f"error: --output {output}: is a folder; name the output file", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if os.path.exists(output) and not args.force:
        print(f"error: {output}: already exists (use --force to overwrite)", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        print(f"error: {output}: folder does not exist", file=sys.stderr)
        return EXIT_INPUT_ERROR
    net = load_model(args.checkpoint)  # fast_conv off: the exported graph holds only standard operators
    export_model(net, output, args.format, args.image_size, args.batch_size)
    print(f"export: wrote {output} ({args.format}, input {args.batch_size}x3x{args.image_size}x{args.image_size} float32, "
          f"{net.num_classes} classes, width {net.spec.width_mult})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
