"""Mixup and CutMix of a training batch, drawn on the host from (seed, global step) so a resumed run replays them.

Mixup (Zhang et al. 2018): every image becomes lam * image + (1 - lam) * partner, lam ~ Beta(a, a).
CutMix (Yun et al. 2019): a box of the partner's pixels is pasted into every image; the box covers about
1 - lam of the area, lam ~ Beta(a, a), and lam is then set to the share the box left uncovered (the box is
clipped at the borders). With both on, each batch draws one of the two with equal odds (timm's default).
The partner of image i is image perm[i] of the same batch (a batch of one is its own partner: nothing mixes);
the loss is lam * CE(logits, labels) + (1 - lam) * CE(logits, labels[perm]) (`train_step.NetWithLoss`). In data
parallel each rank mixes within its own shard of the global batch (its own draw: (seed, step, shard)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np


# The mixing draws' own random stream: numpy pads short seed lists with zeros, so a small tag here would replay
# another stream of the trainer's ([seed, epoch, ...] in dataset.py, [seed, 2, step] for dropout).
MIX_STREAM = 0x6D6978  # "mix"


@dataclass(frozen=True)
class MixSettings:
    mixup_alpha: float = 0.0   # 0 = no mixup
    cutmix_alpha: float = 0.0  # 0 = no CutMix

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def describe(self) -> str:
        parts = [f"mixup alpha {self.mixup_alpha:g}" if self.mixup_alpha > 0 else "",
                 f"CutMix alpha {self.cutmix_alpha:g}" if self.cutmix_alpha > 0 else ""]
        both = " (one of the two per batch, equal odds)" if all(parts) else ""
        return " and ".join(p for p in parts if p) + both


def cutmix_box(height: int, width: int, cut_share: float, rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about `cut_share` of the image's area, centred at a uniform pixel and
    clipped at the borders."""
    ratio = np.sqrt(cut_share)
    box_h, box_w = int(round(height * ratio)), int(round(width * ratio))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - box_h // 2, cy + box_h - box_h // 2], 0, height)
    left, right = np.clip([cx - box_w // 2, cx + box_w - box_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


def mix_batch(images: np.ndarray, labels: np.ndarray, settings: MixSettings, seed: int, global_step: int,
              shard_id: int = 0) -> Tuple[np.ndarray, np.ndarray, float]:
    """(mixed images, partner labels, lam) of an NCHW float batch; a function of (seed, global_step, shard_id) only.
    Mixing off: the batch itself, its own labels and lam 1."""
    if not settings.enabled:
        return images, labels, 1.0
    rng = np.random.default_rng([seed, MIX_STREAM, global_step, shard_id])
    perm = rng.permutation(len(images))
    use_cutmix = settings.cutmix_alpha > 0 and (settings.mixup_alpha <= 0 or rng.random() < 0.5)
    if use_cutmix:
        lam = float(rng.beta(settings.cutmix_alpha, settings.cutmix_alpha))
        height, width = images.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, 1.0 - lam, rng)
        mixed = images.copy()
        mixed[..., top:bottom, left:right] = images[perm, ..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
    else:
        lam = float(rng.beta(settings.mixup_alpha, settings.mixup_alpha))
        mixed = (np.float32(lam) * images + np.float32(1.0 - lam) * images[perm]).astype(images.dtype, copy=False)
    return mixed, labels[perm], lam
