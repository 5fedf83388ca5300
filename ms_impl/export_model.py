"""Writing a MindSpore network to a deployment file (MINDIR or ONNX), for the export command line and the harness.

The exported graph takes one float32 NCHW batch of `image_size` x `image_size` images and returns what the
network returns (logits for MobileNetV2). AIR needs an Ascend device and is not offered on CPU/GPU.
"""
from __future__ import annotations

import numpy as np

from parity.core.files import WriteError, atomic_path, is_disk_full, one_line

SUFFIX = {"MINDIR": ".mindir", "ONNX": ".onnx"}
UNSUPPORTED = {"AIR": "AIR export needs the Ascend backend; MindSpore on CPU/GPU exports MINDIR or ONNX only"}


def export_model(net, output: str, file_format: str, image_size: int, batch_size: int = 1) -> str:
    """Write `net` to `output` atomically (`parity.core.files.atomic_path`); WriteError names `output`."""
    import mindspore as ms

    dummy = ms.Tensor(np.zeros((batch_size, 3, image_size, image_size), dtype=np.float32))
    with atomic_path(output, suffix=SUFFIX[file_format]) as temp:
        stem = str(temp)[: -len(SUFFIX[file_format])]  # mindspore.export appends the format's suffix
        try:
            ms.export(net, dummy, file_name=stem, file_format=file_format)
        except (RuntimeError, ValueError) as exc:  # MindSpore's I/O errors; a full disk becomes its own line
            if is_disk_full(exc):
                raise
            raise WriteError(f"{output}: cannot write ({one_line(exc)})") from exc
        if not temp.is_file() or temp.stat().st_size == 0:
            raise WriteError(f"{output}: mindspore.export wrote no {file_format} file")
    return output
