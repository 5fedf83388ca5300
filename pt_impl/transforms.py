"""Image transforms of the PyTorch twin (PIL + numpy + torch), eval.

Mirrors `ms_impl/transforms.py` op for op, with the constants of
`parity/preprocess.py`, so that both twins see the same tensors at eval time:

- Decode: PIL, converted to RGB (libjpeg, the same pixels as mindspore.dataset's Decode).
- Resize: shorter side to `eval_resize_size(image_size)`, longer side
  `int(size * long / short)` (truncated, mindspore.dataset's rule), PIL BICUBIC
  (what `Inter.PILCUBIC` reimplements).
- CenterCrop: offsets `(h - crop) // 2` (floored, mindspore.dataset's rule;
  torchvision rounds half to even instead, which moves odd-margin crops by one pixel).
- Normalize: float32 `(pixel - mean) / std` on the 0-255 scale.
- HWC2CHW: channels first, returned as a torch tensor.

Input: encoded image bytes; output: float32 CHW tensor, ImageNet-normalised.
"""
from __future__ import annotations

import io
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from parity import preprocess


class Decode:
    """Encoded bytes -> RGB PIL image."""

    def __call__(self, data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return image.convert("RGB")


class Resize:
    """Shorter side to `size`, aspect ratio kept (longer side truncated), PIL bicubic."""

    def __init__(self, size: int) -> None:
        self.size = size

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        if height <= width:
            return self.size, int(self.size * width / height)
        return int(self.size * height / width), self.size

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = self.output_size(image.height, image.width)
        return image.resize((width, height), Image.BICUBIC)


class CenterCrop:
    """Crop `size` x `size` from the middle; odd margins put the extra pixel at the bottom/right."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        if height < self.size or width < self.size:
            raise ValueError(f"image {width}x{height} is smaller than the {self.size}px crop")
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return pixels[top:top + self.size, left:left + self.size]


class Normalize:
    """uint8 HWC -> float32 HWC, `(pixel - mean) / std` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return (pixels.astype(np.float32) - self.mean) / self.std


class HWC2CHW:
    """float32 HWC array -> float32 CHW torch tensor."""

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def eval_transforms(image_size: int) -> List[Callable]:
    """Decode, resize the shorter side to image_size / 0.875, center-crop, normalise, HWC->CHW."""
    return [
        Decode(),
        Resize(preprocess.eval_resize_size(image_size)),
        CenterCrop(image_size),
        Normalize(mean=list(preprocess.MEAN_RGB), std=list(preprocess.STD_RGB)),
        HWC2CHW(),
    ]


def apply(ops: Sequence[Callable], data: bytes) -> torch.Tensor:
    """Run `ops` in order on one encoded image."""
    value = data
    for op in ops:
        value = op(value)
    return value
