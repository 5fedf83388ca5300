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

import argparse
import os
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np

from ms_impl.trainer.model_io import CheckpointError, load_model

SUFFIX = {"MINDIR": ".mindir", "ONNX": ".onnx"}
UNSUPPORTED = {"AIR": "AIR export needs the Ascend backend; MindSpore on CPU/GPU exports MINDIR or ONNX only"}
EXIT_INPUT_ERROR = 2


def export_model(net, output: str, file_format: str, image_size: int, batch_size: int = 1) -> str:
    """Write `net` to `output` atomically (export into a temp folder beside it, then rename)."""
    import mindspore as ms

    dummy = ms.Tensor(np.zeros((batch_size, 3, image_size, image_size), dtype=np.float32))
    folder = os.path.dirname(os.path.abspath(output))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        stem = os.path.join(tmp, "model")
        ms.export(net, dummy, file_name=stem, file_format=file_format)
        written = stem + SUFFIX[file_format]
        if not os.path.isfile(written):
            raise RuntimeError(f"mindspore.export wrote no {file_format} file")
        os.replace(written, output)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbv2-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="trained MindSpore checkpoint (.ckpt)")
    parser.add_argument("--format", required=True, type=str.upper, help="MINDIR or ONNX")
    parser.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=1, help="fixed batch dimension of the graph (default 1)")
    parser.add_argument("--output", default=None, help="output file (default: the checkpoint's name with .mindir / .onnx)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.format in UNSUPPORTED:
        print(f"export: format {args.format} is not supported here: {UNSUPPORTED[args.format]}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if args.format not in SUFFIX:
        print(f"export: unknown format {args.format!r}; choose MINDIR or ONNX", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if args.image_size < 32 or args.batch_size < 1:
        print("export: --image-size must be >= 32 and --batch-size >= 1", file=sys.stderr)
        return EXIT_INPUT_ERROR
    output = args.output or os.path.splitext(args.checkpoint)[0] + SUFFIX[args.format]
    if os.path.exists(output) and not args.force:
        print(f"export: {output}: already exists (use --force to overwrite)", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        print(f"export: {output}: folder does not exist", file=sys.stderr)
        return EXIT_INPUT_ERROR
    try:
        net = load_model(args.checkpoint)  # fast_conv off: the exported graph holds only standard operators
    except CheckpointError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    export_model(net, output, args.format, args.image_size, args.batch_size)
    print(f"export: wrote {output} ({args.format}, input {args.batch_size}x3x{args.image_size}x{args.image_size} float32, "
          f"{net.num_classes} classes, width {net.spec.width_mult})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
