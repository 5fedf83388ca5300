"""Pretrained weights for the MindSpore trainer, from any checkpoint layout, converted in memory.

`load_pretrained(network, path)` reads `.ckpt` (ms-official or mindcv),
`.pth` (torchvision) or `.safetensors` through `parity.core.converter.read_checkpoint`,
renames the tensors to the network's own ms-official names with
`parity.core.converter.convert` (no temporary files) and copies them in.

- A head for another class count (e.g. the 1000-class ImageNet head for a
  26-class run) is dropped, with one log line; the head then keeps its fresh init.
- A backbone-only file loads the backbone; the head keeps its fresh init.
- A file of another model, or a MobileNetV2 of another width, fails with a
  one-line `PretrainedError` (the converter's message, or the width it found).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from parity.core.errors import UserError

LOG = logging.getLogger("ms_impl.trainer.pretrained")
TARGET_LAYOUT = "ms-official"  # the MindSpore twin's own parameter names


class PretrainedError(UserError, ValueError):
    """The pretrained file cannot be used for this network; the message is one line naming the file."""


@dataclass(frozen=True)
class PretrainedInfo:
    path: str
    layout: str
    width_mult: float
    file_classes: Optional[int]  # None: backbone-only file
    head_loaded: bool
    tensors_loaded: int


def load_pretrained(network, path: str, log: logging.Logger = LOG) -> PretrainedInfo:
    """Copy the weights of `path` into `network` (a `MobileNetV2`); returns what was loaded."""
    from ms_impl.weights import load_into
    from parity.core.converter import ConversionError, check_finite, convert, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
        check_finite(ckpt)
    except ConversionError as exc:
        raise PretrainedError(f"--pretrained {exc}") from None
    width = network.spec.width_mult
    if abs(ckpt.width_mult - width) > 1e-9:
        raise PretrainedError(f"--pretrained {path}: holds a {ckpt.width_mult}x MobileNetV2 ({ckpt.layout} layout), "
                              f"the network is {width}x (set --width-mult {ckpt.width_mult} to use it)")
    head_loaded = ckpt.num_classes == network.num_classes
    if ckpt.num_classes is not None and not head_loaded:
        log.info("pretrained %s: dropped its %d-class head (this run has %d classes); the head starts from scratch",
                 path, ckpt.num_classes, network.num_classes)
    try:
        official = convert(ckpt, TARGET_LAYOUT, drop_head=not head_loaded)
        result = load_into(network, official.tensors, strict=False)
    except ConversionError as exc:
        raise PretrainedError(f"--pretrained {path}: {exc}") from None
    own_names = {p.name for p in network.get_parameters()}
    backbone_missing = [n for n in result.missing if n.startswith("features.")]
    if result.unexpected or backbone_missing or not own_names.intersection(official.tensors):
        raise PretrainedError(f"--pretrained {path}: does not fit the network (missing {backbone_missing[:3]}, "
                              f"unexpected {result.unexpected[:3]})")
    log.info("pretrained %s: %s layout, %sx, %d tensors loaded%s", path, ckpt.layout, ckpt.width_mult,
             len(official.tensors), "" if head_loaded else " (backbone only)")
    return PretrainedInfo(str(path), ckpt.layout, ckpt.width_mult, ckpt.num_classes, head_loaded, len(official.tensors))
