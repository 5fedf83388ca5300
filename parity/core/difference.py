"""How far apart two arrays are: the figures of every parity table (numpy only).

`difference(reference, candidate)` returns the maximum absolute difference,
the same relative to the largest reference magnitude, the cosine similarity
of the two arrays as vectors, and the share of elements within 1e-3 relative
(msprobe's "thousandth" figure: |candidate - reference| <= 1e-3 |reference|).
All computed in float64, so the figures do not add rounding of their own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Difference", "difference", "WITHIN_REL"]

WITHIN_REL = 1e-3  # the "thousandth" of msprobe's accuracy report


@dataclass(frozen=True)
class Difference:
    max_abs: float
    max_rel: float  # max_abs / max |reference| (`scale`)
    cosine: float  # 1.0 for two all-zero arrays; 0.0 when only one is all zero
    within: float  # share of elements with |candidate - reference| <= WITHIN_REL * |reference|
    scale: float  # max |reference|, the denominator of max_rel


def difference(reference: np.ndarray, candidate: np.ndarray, floor: float = 0.0) -> Difference:
    """Figures of `candidate` against `reference` (same shape).

    `floor` puts a lower bound under the scale that max_rel divides by (a
    gradient that is zero in exact arithmetic is rounding noise on both sides;
    dividing noise by noise measures nothing).
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {candidate.shape}")
    if reference.size == 0:
        return Difference(0.0, 0.0, 1.0, 1.0, 0.0)
    gap = np.abs(candidate - reference)
    max_abs = float(np.max(gap))
    scale = max(float(np.max(np.abs(reference))), floor)
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    norms = float(np.linalg.norm(reference)) * float(np.linalg.norm(candidate))
    if norms > 0:
        cosine = float(np.dot(reference.ravel(), candidate.ravel()) / norms)
    else:
        cosine = 1.0 if max_abs == 0 else 0.0
    within = float(np.mean(gap <= WITHIN_REL * np.abs(reference)))
    if not np.isfinite(max_abs):
        max_rel, cosine = float("inf"), float("nan")
    return Difference(max_abs, max_rel, cosine, within, scale)
