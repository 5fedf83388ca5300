"""MobileNetV2 in MindSpore, parameter names identical to mindspore-ai/models.

The official network (`official/cv/MobileNet/mobilenetv2`) names its tensors
`features.0.features.0.weight` (stem conv), `features.0.features.1.gamma`
(stem BN), `features.{1..17}.conv.*` (inverted residual blocks),
`features.18.features.*` (last 1x1) and `dense.weight` / `dense.bias` (head):
262 tensors for the 1.0x, 1000-class net. The combined net is built with
`auto_prefix=False`, so a full-net checkpoint loads into the backbone alone.

Layer shapes come from `parity.core.spec`, shared with the PyTorch twin
(`pt_impl/mobilenetv2.py`, which mirrors this file class for class).

Weight init: the same distributions as torchvision (He normal, fan_out, for
convolutions; BatchNorm gamma 1, beta 0; Dense weight N(0, 0.01), bias 0), so
a model trained from scratch starts alike in both frameworks.

`fast_conv` ("auto" by default, "on", "off"; MindSpore only): computes the
convolutions and BatchNorm (+ ReLU6) with our CPU kernels (`ms_impl/fast_conv/`),
because MindSpore's own CPU kernels for them are up to 14-27x slower than
PyTorch's; with them the blocks are `ms_impl/fast_conv/blocks.py`'s subclasses of
ConvBNReLU and InvertedResidual, which fold BatchNorm into the convolutions and
fuse layers. The device is read from MindSpore's context when the network is
built: call `ms.set_device(...)` first; on GPU and Ascend "auto" and "on" keep
MindSpore's own kernels. A framework difference, so the PyTorch twin has no
such switch. Parameter names, shapes, init and checkpoints are the same either
way.
"""
from __future__ import annotations

from typing import Optional, Sequence

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal, Normal

from ms_impl import fast_conv as fast_conv_kernels
from parity.core import spec as mbv2_spec

__all__ = ["ConvBNReLU", "InvertedResidual", "MobileNetV2Backbone", "MobileNetV2Head", "MobileNetV2", "global_average_pool"]


def _conv2d(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, fast_conv: str = "auto"
) -> nn.Conv2d:
    # Symmetric padding, no bias; a FastConv3x3 or FastConv1x1 (an nn.Conv2d) when fast_conv allows.
    return fast_conv_kernels.conv2d(
        in_channels, out_channels, kernel_size, stride, groups,
        weight_init=HeNormal(mode="fan_out", nonlinearity="relu"), fast_conv=fast_conv,
    )


def batch_norm(num_features: int, fast_conv: str = "off") -> nn.BatchNorm2d:
    # A FastBatchNorm2d (an nn.BatchNorm2d on our CPU kernels) when fast_conv allows.
    return fast_conv_kernels.batch_norm(num_features, mbv2_spec.BN_EPS, mbv2_spec.BN_MOMENTUM_MINDSPORE, fast_conv)


class ConvBNReLU(nn.Cell):
    """Conv (no bias) + BatchNorm + ReLU6; names `features.{0,1}.*` as in the official net."""

    def __init__(self, layer: mbv2_spec.ConvBNAct, fast_conv: str = "auto") -> None:
        super().__init__()
        self.features = nn.SequentialCell([
            _conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.groups, fast_conv),
            batch_norm(layer.out_channels, fast_conv),
            nn.ReLU6(),
        ])

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.features(x)


class InvertedResidual(nn.Cell):
    """[1x1 expand] -> 3x3 depthwise -> 1x1 linear projection + BN, residual when shapes allow."""

    conv_bn_relu = ConvBNReLU  # the class of its ConvBNReLU layers (the kernels' blocks use their own)

    def __init__(self, block: mbv2_spec.InvertedResidual, fast_conv: str = "auto") -> None:
        super().__init__()
        layers = [] if block.expand is None else [self.conv_bn_relu(block.expand, fast_conv)]
        # The projection is initialised before the depthwise layer: MindSpore draws each initial weight from the
        # global seed in creation order, so this order keeps a seeded network's weights.
        projection = _conv2d(block.hidden_channels, block.out_channels, 1, 1, 1, fast_conv)
        layers += [
            self.conv_bn_relu(block.depthwise, fast_conv),
            projection,
            batch_norm(block.out_channels, fast_conv),
        ]
        self.conv = nn.SequentialCell(layers)
        self.use_residual = block.use_residual

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Backbone(nn.Cell):
    """Stem, 17 inverted residual blocks and the last 1x1 conv: image -> feature map (N, C, H/32, W/32)."""

    def __init__(
        self,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        inverted_residual_setting: Optional[Sequence[Sequence[int]]] = None,
        fast_conv: str = "auto",
    ) -> None:
        super().__init__()
        self.spec = mbv2_spec.build_spec(width_mult, round_nearest, inverted_residual_setting)
        self.num_features = self.spec.num_features
        # Where our kernels are used, subclasses that fold BatchNorm and fuse layers (ms_impl/fast_conv/blocks.py).
        conv_bn_relu, inverted_residual = fast_conv_kernels.block_classes(ConvBNReLU, InvertedResidual, fast_conv)
        self.features = nn.SequentialCell(
            [conv_bn_relu(self.spec.stem, fast_conv)]
            + [inverted_residual(block, fast_conv) for block in self.spec.blocks]
            + [conv_bn_relu(self.spec.last, fast_conv)]
        )

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.features(x)


def global_average_pool(x: ms.Tensor) -> ms.Tensor:
    """The head's pooling: feature map (N, C, H, W) -> (N, C)."""
    return ops.mean(x, (2, 3))


class MobileNetV2Head(nn.Cell):
    """Global average pool -> dropout -> dense: feature map -> logits."""

    def __init__(self, in_channels: int, num_classes: int = 1000, dropout: float = mbv2_spec.DEFAULT_DROPOUT,
                 fast_conv: str = "auto") -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # global_average_pool, on our CPU kernel when fast_conv allows (MindSpore's mean is ~10x slower there)
        self.pool = fast_conv_kernels.global_average_pool(fast_conv)
        # p = 0: Identity in both twins (no dropout op in the graph)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.dense = nn.Dense(in_channels, num_classes, weight_init=Normal(0.01), bias_init="zeros")

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.dense(self.dropout(self.pool(x)))


class MobileNetV2(nn.Cell):
    """Backbone + head. Starts in training mode like a torch module (a Cell would not)."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = mbv2_spec.DEFAULT_DROPOUT,
        inverted_residual_setting: Optional[Sequence[Sequence[int]]] = None,
        fast_conv: str = "auto",
    ) -> None:
        """
        Args:
            num_classes: outputs of the dense layer (1000 for ImageNet, 26 for the garbage set).
            width_mult: channel multiplier (0.35 ... 1.4); channels are rounded to `round_nearest`.
            round_nearest: every layer's channel count is a multiple of this.
            dropout: probability of the head's dropout before the dense layer; 0 = none (Identity).
            inverted_residual_setting: the `(t, c, n, s)` rows of the blocks (default: the paper's table,
                `parity.core.spec.INVERTED_RESIDUAL_SETTING`).
            fast_conv: "off", "auto" or "on": our CPU kernels for the convolutions and BatchNorm (MindSpore
                only; "auto" falls back to MindSpore's own layers where they cannot be used).
        """
        # auto_prefix=False: parameters keep the parts' own names (`features.*`, `dense.*`).
        super().__init__(auto_prefix=False)
        self.backbone = MobileNetV2Backbone(width_mult, round_nearest, inverted_residual_setting, fast_conv)
        self.head = MobileNetV2Head(self.backbone.num_features, num_classes, dropout, fast_conv)
        self.spec = self.backbone.spec
        self.num_features = self.backbone.num_features
        self.num_classes = num_classes
        self.set_train(True)

    def forward_features(self, x: ms.Tensor) -> ms.Tensor:
        return self.backbone(x)

    def forward_head(self, x: ms.Tensor) -> ms.Tensor:
        return self.head(x)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.forward_head(self.forward_features(x))
