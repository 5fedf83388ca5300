"""Image transforms of the PyTorch twin (PIL + numpy + torch), train and eval.

Mirrors `ms_impl/transforms.py` op for op, with the constants of
`parity/core/preprocess.py`, so that both twins see the same tensors at eval time:

- Decode: PIL, converted to RGB (libjpeg, the same pixels as mindspore.dataset's Decode).
- Resize: shorter side to `eval_resize_size(image_size)`, longer side
  `int(size * long / short)` (truncated, mindspore.dataset's rule), PIL BICUBIC
  (what `Inter.PILCUBIC` reimplements).
- CenterCrop: offsets `(h - crop) // 2` (floored, mindspore.dataset's rule;
  torchvision rounds half to even instead, which moves odd-margin crops by one pixel).
- Normalize: float32 `(pixel - mean) / std` on the 0-255 scale.
- HWC2CHW: channels first, returned as a torch tensor.
- ResizeSquare (the whole-photo view of `whole_transforms`): PIL BICUBIC to
  size x size; within 3 grey levels of mindspore.dataset's PILCUBIC, which
  rounds differently for some unequal axis scales.

The train ops mirror mindspore.dataset's random augmentations in kind and
parameters (random resized crop with bilinear resize, or with `whole_prob` the
whole photo squashed to a square, horizontal flip, colour jitter); random draws differ between frameworks, so only eval is compared
pixel for pixel. Input: encoded image bytes; output: float32 CHW tensor,
ImageNet-normalised.
"""
from __future__ import annotations

import io
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageEnhance

from parity.core import preprocess


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


class ResizeSquare:
    """The whole image to size x size, aspect ratio not kept (nothing cut off)."""

    def __init__(self, size: int, resample: int = Image.BICUBIC) -> None:
        self.size, self.resample = size, resample

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.resize((self.size, self.size), self.resample)


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


class RandomCropDecodeResize:
    """Decode, crop a random area (fraction `scale`, aspect `ratio`), resize to size x size (bilinear)."""

    def __init__(self, size: int, scale: Tuple[float, float], ratio: Tuple[float, float],
                 rng: np.random.Generator) -> None:
        self.size, self.scale, self.ratio, self.rng = size, scale, ratio, rng

    def crop_box(self, height: int, width: int) -> Tuple[int, int, int, int]:
        area = height * width
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            target = area * self.rng.uniform(*self.scale)
            aspect = float(np.exp(self.rng.uniform(*log_ratio)))
            w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top, left = int(self.rng.integers(0, height - h + 1)), int(self.rng.integers(0, width - w + 1))
                return top, left, h, w
        side = min(height, width)  # fallback: the central square
        return (height - side) // 2, (width - side) // 2, side, side

    def __call__(self, data: bytes) -> Image.Image:
        image = Decode()(data)
        top, left, h, w = self.crop_box(image.height, image.width)
        return image.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))


class RandomChoice:
    """One of `choices` (each a list of ops), drawn uniformly per call, as mindspore.dataset's RandomChoice."""

    def __init__(self, choices: Sequence[Sequence[Callable]], rng: np.random.Generator) -> None:
        self.choices, self.rng = choices, rng

    def __call__(self, value):
        for op in self.choices[int(self.rng.integers(len(self.choices)))]:
            value = op(value)
        return value


class RandomHorizontalFlip:
    def __init__(self, prob: float, rng: np.random.Generator) -> None:
        self.prob, self.rng = prob, rng

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.FLIP_LEFT_RIGHT) if self.rng.random() < self.prob else image


class RandomColorAdjust:
    """Brightness, contrast and saturation each scaled by a factor drawn from [1 - x, 1 + x]."""

    def __init__(self, brightness: float, contrast: float, saturation: float, rng: np.random.Generator) -> None:
        self.factors = ((ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
                        (ImageEnhance.Color, saturation))
        self.rng = rng

    def __call__(self, image: Image.Image) -> Image.Image:
        for enhancer, amount in self.factors:
            if amount > 0:
                image = enhancer(image).enhance(float(self.rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount)))
        return image


class ToArray:
    """PIL image -> uint8 HWC array (the eval path gets it from CenterCrop)."""

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image)


def eval_transforms(image_size: int) -> List[Callable]:
    """Decode, resize the shorter side to image_size / 0.875, center-crop, normalise, HWC->CHW."""
    return [
        Decode(),
        Resize(preprocess.eval_resize_size(image_size)),
        CenterCrop(image_size),
        Normalize(mean=list(preprocess.MEAN_RGB), std=list(preprocess.STD_RGB)),
        HWC2CHW(),
    ]


def whole_transforms(image_size: int) -> List[Callable]:
    """Decode, resize the whole photo to image_size x image_size (aspect not kept, nothing cut off), normalise, HWC->CHW."""
    return [
        Decode(),
        ResizeSquare(image_size),
        ToArray(),
        Normalize(mean=list(preprocess.MEAN_RGB), std=list(preprocess.STD_RGB)),
        HWC2CHW(),
    ]


def train_transforms(
    image_size: int,
    scale=(0.08, 1.0),
    color_jitter: float = 0.4,
    hflip_prob: float = 0.5,
    whole_prob: float = 0.0,
    rng: Optional[np.random.Generator] = None,
) -> List[Callable]:
    """Decode, random resized crop, horizontal flip, colour jitter, normalise, HWC->CHW.

    `whole_prob`: the fraction of views that are the whole photo resized to a square instead of a crop.
    """
    rng = np.random.default_rng() if rng is None else rng
    view: Callable = RandomCropDecodeResize(image_size, scale=tuple(scale), ratio=preprocess.RANDOM_CROP_RATIO, rng=rng)
    if whole_prob > 0:
        whole_count, crop_count = preprocess.whole_view_counts(whole_prob)
        view = RandomChoice([[Decode(), ResizeSquare(image_size, Image.BILINEAR)]] * whole_count + [[view]] * crop_count, rng)
    ops: List[Callable] = [view, RandomHorizontalFlip(prob=hflip_prob, rng=rng)]
    if color_jitter > 0:
        ops.append(RandomColorAdjust(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, rng=rng))
    ops += [
        ToArray(),
        Normalize(mean=list(preprocess.MEAN_RGB), std=list(preprocess.STD_RGB)),
        HWC2CHW(),
    ]
    return ops


def apply(ops: Sequence[Callable], data: bytes) -> torch.Tensor:
    """Run `ops` in order on one encoded image."""
    value = data
    for op in ops:
        value = op(value)
    return value
