"""Every numerical tolerance of the project, in one place, with the reason for each.

All comparisons run in float32 on CPU. The two frameworks accumulate sums in
different orders (oneDNN vs. MindSpore's own kernels, different blockings of
the same convolution), so results differ by a few ULPs per layer and the
difference grows with depth and with the magnitude of the values.
"""
from __future__ import annotations

# Eval-mode logits after converting a checkpoint: 53 conv/BN layers of float32
# rounding; observed gaps are ~1e-6 for unit-scale inputs.
EVAL_LOGITS_ABS = 1e-4

# Train-mode forward (batch statistics): same order of error as eval.
TRAIN_FORWARD_ABS = 1e-4

# Per-parameter gradients, relative to the largest gradient magnitude of that
# parameter: backprop through 52 BN layers amplifies rounding differences.
GRAD_REL = 1e-3

# BatchNorm running statistics after one training forward (relative).
BN_STATS_REL = 1e-4

# Weights after K = 5 optimizer steps, relative to each tensor's magnitude.
STEPS_REL = 1e-3

# Cross-entropy loss with label smoothing (relative, against float64 reference).
LOSS_REL = 1e-5

# Per-step learning rates: the array is float32, the PyTorch scheduler float64.
LR_ABS = 1e-7

# Converter round trips must be bit-exact: no tolerance at all.
ROUND_TRIP_ABS = 0.0
