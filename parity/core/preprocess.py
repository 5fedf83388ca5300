"""Input preprocessing constants shared by both twins' pipelines."""
from __future__ import annotations

from fractions import Fraction
from typing import Tuple

# ImageNet statistics on the 0-255 scale (the pipelines normalise uint8 pixels).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Eval: resize the shorter side to image_size / CROP_FRACTION, then center-crop image_size.
CROP_FRACTION = 0.875


def eval_resize_size(image_size: int) -> int:
    """Shorter-side length before the center crop (256 for 224)."""
    return int(round(image_size / CROP_FRACTION))

# Train: random resized crop, aspect ratio (w/h) drawn from this range (both twins).
RANDOM_CROP_RATIO = (0.75, 1.333)


# Train: the whole-photo view's share is drawn as whole:crop copies of at most this many in all.
WHOLE_VIEW_COPIES = 20


def whole_view_counts(whole_prob: float, max_count: int = WHOLE_VIEW_COPIES) -> Tuple[int, int]:
    """(whole, crop) copies for a uniform random choice that draws the whole-photo training view with
    probability `whole_prob` (to within 1/max_count), as both twins' `train_transforms` do."""
    share = Fraction(whole_prob).limit_denominator(max_count)
    if whole_prob > 0 and share.numerator == 0:
        raise ValueError(f"whole_prob {whole_prob} is below 1/{max_count}, the smallest share drawn")
    return share.numerator, share.denominator - share.numerator
