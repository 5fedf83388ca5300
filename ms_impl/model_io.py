"""Load a trained MindSpore MobileNetV2 checkpoint for inference (predict, export).

The checkpoint may be a plain network checkpoint or a training checkpoint that
also holds optimizer state (moments, step, learning rate): only the network's
own parameters (ms-official names) are taken. Width multiplier and class count
are read from the tensor shapes, so a user needs no config to run a model.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence, Tuple

import numpy as np

# Width multipliers tried when reading an architecture back from tensor shapes
# (those published for MobileNetV2, plus the small ones used in tests).
KNOWN_WIDTHS: Tuple[float, ...] = (0.25, 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

STEM_WEIGHT = "features.0.features.0.weight"
DENSE_WEIGHT = "dense.weight"
CELL_PATH_PREFIXES = ("backbone.", "head.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not a MobileNetV2 we can build."""


def read_ms_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """All tensors of a MindSpore .ckpt as numpy arrays (name -> array)."""
    import mindspore as ms

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        params = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    # training checkpoints also hold non-tensor entries (e.g. a JSON train state): skip them;
    # names saved by cell path (`backbone.features.*`, `head.dense.*`) are the official names prefixed
    tensors = {}
    for name, value in params.items():
        if hasattr(value, "asnumpy"):
            tensors[_official_name(name)] = value.asnumpy()
    return tensors


def _official_name(name: str) -> str:
    for prefix in CELL_PATH_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def infer_architecture(shapes: Dict[str, Sequence[int]], source: str = "checkpoint") -> Tuple[float, int]:
    """(width_mult, num_classes) of a full-network ms-official state, from its tensor shapes."""
    from ms_impl.mobilenetv2 import MobileNetV2

    if STEM_WEIGHT not in shapes or DENSE_WEIGHT not in shapes:
        missing = STEM_WEIGHT if STEM_WEIGHT not in shapes else DENSE_WEIGHT
        raise CheckpointError(f"{source}: not a full MobileNetV2 in the ms-official layout (no '{missing}')")
    num_classes = int(shapes[DENSE_WEIGHT][0])
    wanted = {name: tuple(shape) for name, shape in shapes.items()}
    for width in KNOWN_WIDTHS:
        net = MobileNetV2(num_classes=num_classes, width_mult=width)
        expected = {name: tuple(p.shape) for name, p in net.parameters_dict().items()}
        if all(wanted.get(name) == shape for name, shape in expected.items()):
            return width, num_classes
    raise CheckpointError(
        f"{source}: tensor shapes match no MobileNetV2 of width {', '.join(map(str, KNOWN_WIDTHS))} "
        f"(stem has {shapes[STEM_WEIGHT][0]} channels)"
    )


def load_model(path: str):
    """A `MobileNetV2` in eval mode with the checkpoint's weights; raises CheckpointError."""
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2

    tensors = read_ms_checkpoint(path)
    width, num_classes = infer_architecture({k: v.shape for k, v in tensors.items()}, source=path)
    net = MobileNetV2(num_classes=num_classes, width_mult=width)
    own = net.parameters_dict()
    ms.load_param_into_net(net, {name: ms.Parameter(ms.Tensor(tensors[name]), name=name) for name in own}, strict_load=True)
    net.set_train(False)
    return net
