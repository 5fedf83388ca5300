"""MobileNetV2 architecture as data, shared by both twins (framework-free).

Both `ms_impl.mobilenetv2` and `pt_impl.mobilenetv2` build their layers from
`build_spec()`, so the two networks cannot drift apart: channel counts,
strides, expansion ratios and the residual rule are decided here once.

Reference: Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks" (CVPR 2018), Table 2; channel rounding as in torchvision and
the official MindSpore model zoo.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

# (t, c, n, s): expansion ratio, output channels, repeats, first stride.
INVERTED_RESIDUAL_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
INPUT_CHANNEL = 32
LAST_CHANNEL = 1280
IN_CHANNELS = 3
DEFAULT_DROPOUT = 0.2  # paper and torchvision; not the official MindSpore head's 0.8

# BatchNorm numerics (docs/design.md section 4). MindSpore's momentum is the weight
# of the old running value, PyTorch's the weight of the new batch statistic.
BN_EPS = 1e-5
BN_MOMENTUM_TORCH = 0.1
BN_MOMENTUM_MINDSPORE = 1.0 - BN_MOMENTUM_TORCH


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never below `min_value`
    and never more than 10% below `value` (the rule of the TensorFlow reference)."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


@dataclass(frozen=True)
class ConvBNAct:
    """Convolution (no bias) + BatchNorm + ReLU6. `groups == in_channels` means depthwise."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    groups: int = 1

    @property
    def padding(self) -> int:
        # Symmetric padding; MindSpore must use pad_mode='pad' to match (never 'same').
        return (self.kernel_size - 1) // 2

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclass(frozen=True)
class InvertedResidual:
    """Expand (1x1, skipped when t == 1) -> depthwise 3x3 -> linear project (1x1 + BN)."""

    in_channels: int
    out_channels: int
    stride: int
    expand_ratio: int

    @property
    def hidden_channels(self) -> int:
        return int(round(self.in_channels * self.expand_ratio))

    @property
    def use_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def expand(self) -> Optional[ConvBNAct]:
        if self.expand_ratio == 1:
            return None
        return ConvBNAct(self.in_channels, self.hidden_channels, 1, 1)

    @property
    def depthwise(self) -> ConvBNAct:
        hidden = self.hidden_channels
        return ConvBNAct(hidden, hidden, 3, self.stride, groups=hidden)


@dataclass(frozen=True)
class MobileNetV2Spec:
    """Everything needed to build one MobileNetV2: `features[0]` is the stem,
    `features[1:-1]` the inverted residual blocks, `features[-1]` the last 1x1."""

    width_mult: float
    round_nearest: int
    stem: ConvBNAct
    blocks: Tuple[InvertedResidual, ...]
    last: ConvBNAct

    @property
    def num_features(self) -> int:
        """Channels entering the classifier (1280 for width <= 1)."""
        return self.last.out_channels

    @property
    def features(self) -> Tuple[object, ...]:
        return (self.stem, *self.blocks, self.last)


def build_spec(
    width_mult: float = 1.0,
    round_nearest: int = 8,
    inverted_residual_setting: Optional[Sequence[Sequence[int]]] = None,
) -> MobileNetV2Spec:
    """Derive every layer's shape from the width multiplier and the (t, c, n, s) table."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    setting = INVERTED_RESIDUAL_SETTING if inverted_residual_setting is None else inverted_residual_setting
    if len(setting) == 0 or any(len(row) != 4 for row in setting):
        raise ValueError(f"inverted_residual_setting must be a non-empty list of (t, c, n, s) rows, got {setting}")

    input_channel = make_divisible(INPUT_CHANNEL * width_mult, round_nearest)
    last_channel = make_divisible(LAST_CHANNEL * max(1.0, width_mult), round_nearest)
    stem = ConvBNAct(IN_CHANNELS, input_channel, 3, 2)

    blocks: List[InvertedResidual] = []
    for t, c, n, s in setting:
        output_channel = make_divisible(c * width_mult, round_nearest)
        for i in range(n):
            blocks.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
            input_channel = output_channel
    last = ConvBNAct(input_channel, last_channel, 1, 1)
    return MobileNetV2Spec(width_mult, round_nearest, stem, tuple(blocks), last)
