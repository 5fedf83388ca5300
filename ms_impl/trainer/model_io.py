"""Load a trained MobileNetV2 checkpoint as a MindSpore twin for inference (predict, export).

Reading, layout detection (ms-official, mindcv, torchvision; .ckpt, .pth,
.safetensors) and width/class-count detection are the converter's
(`parity.core.converter`), so a user needs no config to run a model, and a training
checkpoint's optimizer state and train-state entries are skipped there.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from parity.core.errors import UserError

TARGET_LAYOUT = "ms-official"  # the MindSpore twin's own parameter names


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or is not a full MobileNetV2; the message is one line."""


def _read_official(path: str):
    from parity.core.converter import ConversionError, check_finite, convert, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
        check_finite(ckpt)  # a diverged run's weights predict the same for every image
        return convert(ckpt, TARGET_LAYOUT)
    except ConversionError as exc:
        raise CheckpointError(str(exc)) from None


def read_ms_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """The model tensors of `path` under the MindSpore twin's (ms-official) names."""
    return _read_official(path).tensors


def load_model(path: str, fast_conv: str = "off"):
    """A `MobileNetV2` in eval mode with the checkpoint's weights; raises CheckpointError."""
    from ms_impl.weights import load_into

    from ms_impl.mobilenetv2 import MobileNetV2

    ckpt = _read_official(path)
    if ckpt.num_classes is None:
        raise CheckpointError(f"{path}: backbone-only checkpoint (no classifier): train a head on it first")
    net = MobileNetV2(num_classes=ckpt.num_classes, width_mult=ckpt.width_mult, fast_conv=fast_conv)
    load_into(net, ckpt.tensors, strict=True)
    net.set_train(False)
    return net
