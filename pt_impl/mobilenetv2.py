"""MobileNetV2 in PyTorch, state_dict keys identical to torchvision's.

torchvision's `mobilenet_v2` names its tensors `features.0.0.weight` (stem
conv), `features.0.1.*` (stem BN, with `num_batches_tracked`),
`features.{1..17}.conv.*` (inverted residual blocks), `features.18.*` (last
1x1) and `classifier.1.weight` / `classifier.1.bias` (head): 314 keys for the
1.0x, 1000-class net, so a torchvision file loads with `strict=True`.

Layer shapes come from `parity.core.spec`, shared with the MindSpore twin
(`ms_impl/mobilenetv2.py`, which this file mirrors class for class).

Weight init: torchvision's (kaiming normal, fan_out, for convolutions;
BatchNorm weight 1, bias 0; Linear weight N(0, 0.01), bias 0).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from parity.core import spec as mbv2_spec

__all__ = ["ConvBNReLU", "InvertedResidual", "MobileNetV2Backbone", "MobileNetV2Head", "MobileNetV2", "global_average_pool"]


def _conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int) -> nn.Conv2d:
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride,
        padding=(kernel_size - 1) // 2, groups=groups, bias=False,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def batch_norm(num_features: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(num_features, eps=mbv2_spec.BN_EPS, momentum=mbv2_spec.BN_MOMENTUM_TORCH)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU6; keys `{0,1}.*` as torchvision's Conv2dNormActivation."""

    def __init__(self, layer: mbv2_spec.ConvBNAct) -> None:
        super().__init__(
            _conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.groups),
            batch_norm(layer.out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """[1x1 expand] -> 3x3 depthwise -> 1x1 linear projection + BN, residual when shapes allow."""

    def __init__(self, block: mbv2_spec.InvertedResidual) -> None:
        super().__init__()
        layers = [] if block.expand is None else [ConvBNReLU(block.expand)]
        layers += [
            ConvBNReLU(block.depthwise),
            _conv2d(block.hidden_channels, block.out_channels, 1, 1, 1),
            batch_norm(block.out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = block.use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Backbone(nn.Module):
    """Stem, 17 inverted residual blocks and the last 1x1 conv: image -> feature map (N, C, H/32, W/32)."""

    def __init__(
        self,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        inverted_residual_setting: Optional[Sequence[Sequence[int]]] = None,
    ) -> None:
        super().__init__()
        self.spec = mbv2_spec.build_spec(width_mult, round_nearest, inverted_residual_setting)
        self.num_features = self.spec.num_features
        self.features = nn.Sequential(
            *[ConvBNReLU(self.spec.stem)],
            *[InvertedResidual(block) for block in self.spec.blocks],
            *[ConvBNReLU(self.spec.last)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """The head's pooling: feature map (N, C, H, W) -> (N, C)."""
    return torch.mean(x, (2, 3))


class MobileNetV2Head(nn.Module):
    """Global average pool -> dropout -> linear: feature map -> logits."""

    def __init__(self, in_channels: int, num_classes: int = 1000, dropout: float = mbv2_spec.DEFAULT_DROPOUT) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # torchvision keys: classifier.0 (dropout, no tensors), classifier.1 (linear).
        # p = 0: Identity in both twins (no dropout op in the graph)
        dropout_layer = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Sequential(dropout_layer, nn.Linear(in_channels, num_classes))
        nn.init.normal_(self.classifier[1].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(global_average_pool(x))


class MobileNetV2(nn.Module):
    """Backbone + head. Starts in training mode (torch's default for a module)."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = mbv2_spec.DEFAULT_DROPOUT,
        inverted_residual_setting: Optional[Sequence[Sequence[int]]] = None,
    ) -> None:
        """
        Args:
            num_classes: outputs of the linear layer (1000 for ImageNet, 26 for the garbage set).
            width_mult: channel multiplier (0.35 ... 1.4); channels are rounded to `round_nearest`.
            round_nearest: every layer's channel count is a multiple of this.
            dropout: probability of the head's dropout before the linear layer; 0 = none (Identity).
            inverted_residual_setting: the `(t, c, n, s)` rows of the blocks (default: the paper's table,
                `parity.core.spec.INVERTED_RESIDUAL_SETTING`).
        """
        super().__init__()
        backbone = MobileNetV2Backbone(width_mult, round_nearest, inverted_residual_setting)
        head = MobileNetV2Head(backbone.num_features, num_classes, dropout)
        # PyTorch has no auto_prefix: adopt the parts' modules at the top level so
        # keys carry no part prefix (`features.*`, `classifier.*`, torchvision's).
        self.features = backbone.features
        self.classifier = head.classifier
        # The head object itself is kept unregistered (its only module, `classifier`, is registered
        # above), so forward_head runs the head's own code without adding `head.*` keys.
        object.__setattr__(self, "head", head)
        self.spec = backbone.spec
        self.num_features = backbone.num_features
        self.num_classes = num_classes
        self.train(True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
