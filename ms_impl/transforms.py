"""Image transforms of the MindSpore twin (mindspore.dataset.vision), train and eval.

Constants (mean/std, eval resize rule, crop ratio) come from `parity/core/preprocess.py`, shared
with `pt_impl/transforms.py`, so both twins see the same tensors at eval time.
Input: encoded image bytes; output: float32 CHW, ImageNet-normalised.
"""
from __future__ import annotations

from typing import List

from parity.core import preprocess


def eval_transforms(image_size: int) -> List:
    """Decode, resize the shorter side to image_size / 0.875, center-crop, normalise, HWC->CHW."""
    from mindspore.dataset import vision

    return [
        vision.Decode(),
        vision.Resize(preprocess.eval_resize_size(image_size), interpolation=vision.Inter.PILCUBIC),
        vision.CenterCrop(image_size),
        vision.Normalize(mean=list(preprocess.MEAN_RGB), std=list(preprocess.STD_RGB)),
        vision.HWC2CHW(),
    ]


def whole_transforms(image_size: int) -> List:
    """Decode, resize the whole photo to image_size x image_size (aspect not kept, nothing cut off), normalise, HWC->CHW.

    The frozen recipe's second view (`feature_whole`, `tta: flip+whole`): objects in
    these photos are often off-centre or large, and the center crop cuts them.
    """
    from mindspore.dataset import vision

    return [
        vision.Decode(),
        vision.Resize((image_size, image_size), interpolation=vision.Inter.PILCUBIC),
        vision.Normalize(mean=list(preprocess.MEAN_RGB), std=list(preprocess.STD_RGB)),
        vision.HWC2CHW(),
    ]


def train_transforms(
    image_size: int,
    scale=(0.08, 1.0),
    color_jitter: float = 0.4,
    hflip_prob: float = 0.5,
    whole_prob: float = 0.0,
) -> List:
    """Decode, random resized crop, horizontal flip, colour jitter, normalise, HWC->CHW.

    `whole_prob`: the fraction of views that are the whole photo resized to a square
    (the framing of `whole_transforms`, resized bilinearly like the crops) instead of a
    random resized crop, so a model scored with `tta: flip+whole` has seen such views.
    """
    from mindspore.dataset import transforms, vision

    view = vision.RandomCropDecodeResize(image_size, scale=tuple(scale), ratio=preprocess.RANDOM_CROP_RATIO, interpolation=vision.Inter.BILINEAR)
    if whole_prob > 0:
        whole = transforms.Compose([vision.Decode(), vision.Resize((image_size, image_size), interpolation=vision.Inter.BILINEAR)])
        # RandomChoice draws uniformly (seeded by the pipeline's seed): the weight is a count of repeats.
        whole_count, crop_count = preprocess.whole_view_counts(whole_prob)
        view = transforms.RandomChoice([whole] * whole_count + [view] * crop_count)
    ops = [view, vision.RandomHorizontalFlip(prob=hflip_prob)]
    if color_jitter > 0:
        ops.append(vision.RandomColorAdjust(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    ops += [
        vision.Normalize(mean=list(preprocess.MEAN_RGB), std=list(preprocess.STD_RGB)),
        vision.HWC2CHW(),
    ]
    return ops
