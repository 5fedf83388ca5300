"""Parity verdicts calibrated against a float64 reference (numpy only).

A fixed tolerance measured on one machine and one set of weights is a guess: the
float32 rounding error of a deep net depends on the weights (BatchNorm scales,
depth, activation magnitudes) and on the CPU's summation order. So every
cross-framework row is judged against the computation's own noise floor:

    golden    the PyTorch twin in float64 on the same weights and inputs
    noise     |float32 PyTorch twin - golden|, relative to max |golden| (for forward outputs: or the
              golden's own spread under one-ulp perturbations, whichever is larger)
    error     |candidate - golden|, relative to the same scale
    PASS  iff error <= NOISE_MULTIPLE x noise + ABS_FLOOR_EPS x eps32

(the "double benchmark" of MindSpore's mindformers tests). The absolute floor, a few
float32 ulps of the row's scale, only matters for rows whose noise is exactly zero.
Rows that hold several tensors (a stage's gradients, a layer's BatchNorm statistics)
are judged group by group: each group's worst tensor against that group's noise,
so a deep layer's larger rounding never hides a shallow layer's divergence.
Where the scale of one tensor says nothing (a gradient that is zero in exact
arithmetic), it is floored at a fraction of the largest over all tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from parity.core import tolerances

__all__ = ["Calibrated", "calibrated", "calibrated_tensors", "within_noise", "EPS32", "relative_error"]

EPS32 = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class Calibrated:
    """One row's figures against the float64 golden."""

    error: float  # the candidate's max |x - golden| / scale (worst group's)
    noise: float  # the float32 reference's, same scale and group: the noise floor
    passed: bool
    where: str = ""  # the worst group (tensor rows), "" for a single array

    @property
    def ratio(self) -> float:
        if self.noise > 0:
            return self.error / self.noise
        return 0.0 if self.error == 0 else math.inf

    @property
    def limit(self) -> float:
        return tolerances.NOISE_MULTIPLE * self.noise + tolerances.ABS_FLOOR_EPS * EPS32


def relative_error(value: np.ndarray, golden: np.ndarray, scale: float) -> float:
    """max |value - golden| / scale (inf for a non-finite value or a mismatch on a zero scale)."""
    value = np.asarray(value, dtype=np.float64)
    golden = np.asarray(golden, dtype=np.float64)
    if value.shape != golden.shape:
        raise ValueError(f"shape mismatch: {value.shape} vs {golden.shape}")
    if value.size == 0:
        return 0.0
    gap = float(np.max(np.abs(value - golden)))
    if not math.isfinite(gap):
        return math.inf
    if scale > 0:
        return gap / scale
    return 0.0 if gap == 0 else math.inf


def within_noise(error: float, noise: float) -> bool:
    """The verdict: error <= NOISE_MULTIPLE x noise + ABS_FLOOR_EPS float32 ulps (both relative to one scale)."""
    return bool(math.isfinite(error)
                and error <= tolerances.NOISE_MULTIPLE * noise + tolerances.ABS_FLOOR_EPS * EPS32)


def calibrated(candidate: np.ndarray, reference32: np.ndarray, golden: np.ndarray,
               golden_for_reference: Optional[np.ndarray] = None,
               perturbed: Sequence[np.ndarray] = ()) -> Calibrated:
    """One array: the candidate's error and the float32 reference's, both against the golden.

    `golden_for_reference`: the reference's own golden where the two differ (gradients computed in
    float64 with each side's own ReLU6 masks, see parity.harness.golden); the scale is the first's.
    `perturbed`: the golden recomputed with every weight and every op's output moved by up to one
    float32 ulp (parity.harness.golden.perturbed_twin); the noise floor is the largest of their errors
    and the reference's. One float32 run is one draw of its rounding: where the net amplifies rounding
    (BatchNorm channels with tiny variance and large gamma), that draw can fall far below what another
    float32 implementation gets, and the perturbed runs measure that sensitivity directly."""
    golden = np.asarray(golden, dtype=np.float64)
    scale = float(np.max(np.abs(golden))) if golden.size else 0.0
    error = relative_error(candidate, golden, scale)
    noise = relative_error(reference32, golden if golden_for_reference is None else golden_for_reference, scale)
    for run in perturbed:
        noise = max(noise, relative_error(run, golden if golden_for_reference is None else golden_for_reference,
                                          scale))
    return Calibrated(error, noise, within_noise(error, noise))


def calibrated_tensors(candidate: Mapping[str, np.ndarray], reference32: Mapping[str, np.ndarray],
                       golden: Mapping[str, np.ndarray], group_of: Callable[[str], str] = lambda name: "",
                       floor_fraction: float = 0.0,
                       golden_for_reference: Optional[Mapping[str, np.ndarray]] = None,
                       floor: Optional[float] = None) -> Calibrated:
    """Named tensors, judged group by group (`group_of(name)`, e.g. the stage): each group passes when its
    worst candidate error is within NOISE_MULTIPLE x its worst reference error; the row passes when
    every group does. Scales: each tensor's max |golden|, floored at `floor_fraction` x the largest (or at
    `floor` where given: a floor taken over more tensors than these)."""
    names = sorted(golden)
    if set(candidate) != set(names) or set(reference32) != set(names):
        missing = sorted((set(candidate) ^ set(names)) | (set(reference32) ^ set(names)))
        raise ValueError(f"tensors present on one side only: {missing[:5]}")
    golden_ref = golden if golden_for_reference is None else golden_for_reference
    largest = max((float(np.max(np.abs(golden[n]))) for n in names if np.size(golden[n])), default=0.0)
    floor = floor_fraction * largest if floor is None else floor
    groups: Dict[str, list] = {}
    for name in names:
        scale = max(float(np.max(np.abs(golden[name]))) if np.size(golden[name]) else 0.0, floor)
        error = relative_error(candidate[name], golden[name], scale)
        noise = relative_error(reference32[name], golden_ref[name], scale)
        group = groups.setdefault(group_of(name), [0.0, 0.0, ""])
        if error >= group[0]:
            group[0], group[2] = error, name
        group[1] = max(group[1], noise)
    if not groups:
        return Calibrated(0.0, 0.0, True)
    verdicts = {key: (error, noise, within_noise(error, noise), worst) for key, (error, noise, worst) in groups.items()}

    def badness(item):  # a failing group first, then the largest ratio
        error, noise, passed, _ = item[1]
        return (not passed, error / noise if noise > 0 else (0.0 if error == 0 else math.inf), error)

    _, (error, noise, _, worst) = max(verdicts.items(), key=badness)
    return Calibrated(error, noise, all(v[2] for v in verdicts.values()), worst)
