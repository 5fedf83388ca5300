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
stem, the depthwise 3x3 and the 1x1 convolutions, and BatchNorm (+ ReLU6),
with our CPU kernels (`ms_impl/fast_conv.py`), because MindSpore's own CPU
kernels for them are up to 14-27x slower than PyTorch's. Wherever BatchNorm runs
on its moving statistics (eval mode, and training with frozen BatchNorm, the
trainer's `freeze_bn`) the convolutions fold it into their weights and apply the
bias (+ ReLU6) in the same kernel pass (`ConvBNReLU.folded_forward`,
`InvertedResidual.folded_forward`); in inference, each block's expanding 1x1 and
depthwise layers are one kernel pass that never stores the expansion's output
(`InvertedResidual.expansion_depthwise_inference`); in training, the expanding 1x1
layer's bias and ReLU6 run inside the depthwise layer's kernels (`InvertedResidual.expanded_depthwise`).
Gradients reach gamma and beta through the fold.
The device is read from MindSpore's context when the network is built: call
`ms.set_device(...)` first; on GPU and Ascend "auto"
and "on" keep MindSpore's own kernels. A framework difference, so the PyTorch
twin has no such switch. Parameter names, shapes, init and checkpoints are
the same either way.
"""
from __future__ import annotations

from typing import Optional, Sequence

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal, Normal

from ms_impl import fast_conv as fast_conv_kernels
from parity.core import spec as mbv2_spec

__all__ = ["ConvBNReLU", "InvertedResidual", "folded_batch_norm", "MobileNetV2Backbone", "MobileNetV2Head", "MobileNetV2", "global_average_pool"]


def _conv2d(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, fast_conv: str = "auto"
) -> nn.Conv2d:
    # Symmetric padding, no bias; a FastConv3x3 or FastConv1x1 (an nn.Conv2d) when fast_conv allows.
    return fast_conv_kernels.conv2d(
        in_channels, out_channels, kernel_size, stride, groups,
        weight_init=HeNormal(mode="fan_out", nonlinearity="relu"), fast_conv=fast_conv,
    )


def batch_norm(num_features: int, fast_conv: str = "off") -> nn.BatchNorm2d:
    # A FastBatchNorm2d (an nn.BatchNorm2d: training with batch statistics on our CPU kernel) when fast_conv allows.
    return fast_conv_kernels.batch_norm(num_features, mbv2_spec.BN_EPS, mbv2_spec.BN_MOMENTUM_MINDSPORE, fast_conv)


# Convolutions whose kernels take a folded BatchNorm (and ReLU6) in their own pass.
FOLDABLE = (fast_conv_kernels.FastConv3x3, fast_conv_kernels.FastConv1x1)


class ConvBNReLU(nn.Cell):
    """Conv (no bias) + BatchNorm + ReLU6; names `features.{0,1}.*` as in the official net."""

    def __init__(self, layer: mbv2_spec.ConvBNAct, fast_conv: str = "auto") -> None:
        super().__init__()
        conv = _conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.groups, fast_conv)
        bn = batch_norm(layer.out_channels, fast_conv)
        self.features = nn.SequentialCell([conv, bn, nn.ReLU6()])
        # BN on moving statistics with our kernels: folded into the weights, bias + ReLU6 in the kernel's own pass.
        self.fold_bn = isinstance(conv, FOLDABLE) and isinstance(bn, fast_conv_kernels.FastBatchNorm2d)
        # Training with our kernels: BatchNorm (batch statistics) + ReLU6 in one kernel, forward and backward.
        self.fuse_bn_relu6 = isinstance(bn, fast_conv_kernels.FastBatchNorm2d)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.folds_now():
            return self.folded_forward(x)
        if self.fuse_bn_relu6:
            # One kernel pass, forward and backward.
            return self.features[1].relu6(self.features[0](x))
        return self.features(x)

    def folds_now(self) -> bool:
        """Whether this pass folds the BatchNorm (our kernels, BatchNorm on its moving statistics)."""
        return self.fold_bn and not self.features[1].uses_batch_statistics()

    def folded_forward(self, x: ms.Tensor) -> ms.Tensor:
        """The output with the BatchNorm on its moving statistics folded: relu6(conv(x, w * s) + beta - mean * s),
        s = gamma / sqrt(var + eps). Only for layers computed by our kernels (`fold_bn`)."""
        weight, bias = folded_batch_norm(self.features[0], self.features[1])
        return self.features[0].bias_relu6(x, weight, bias)


def folded_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """(w * s, beta - mean * s), s = gamma / sqrt(var + eps): conv then eval-mode BN as one conv with a bias."""
    # The moving statistics are constants here (frozen BatchNorm in training): gradients reach w, gamma, beta.
    scale = bn.gamma / ops.sqrt(ops.stop_gradient(bn.moving_variance) + bn.eps)
    return conv.weight * scale.reshape((-1, 1, 1, 1)), bn.beta - ops.stop_gradient(bn.moving_mean) * scale


class InvertedResidual(nn.Cell):
    """[1x1 expand] -> 3x3 depthwise -> 1x1 linear projection + BN, residual when shapes allow."""

    def __init__(self, block: mbv2_spec.InvertedResidual, fast_conv: str = "auto") -> None:
        super().__init__()
        layers = [] if block.expand is None else [ConvBNReLU(block.expand, fast_conv)]
        projection = _conv2d(block.hidden_channels, block.out_channels, 1, 1, 1, fast_conv)
        layers += [ConvBNReLU(block.depthwise, fast_conv), projection, batch_norm(block.out_channels, fast_conv)]
        self.conv = nn.SequentialCell(layers)
        self.use_residual = block.use_residual
        self.has_expand = block.expand is not None
        # BN on moving statistics with our 1x1 kernel: the projection's BN folded into it, bias added in its own pass.
        self.fold_bn = isinstance(projection, fast_conv_kernels.FastConv1x1) and isinstance(self.conv[-1], fast_conv_kernels.FastBatchNorm2d)
        # Training with both BNs folded (frozen BatchNorm): the expand layer's bias and ReLU6 run in the depthwise
        # layer's kernels (expanded_depthwise). Not in eval: there the 1x1 kernel applies them for free in its
        # epilogue, while the depthwise kernel pays for them (experiments/kernel_layers.py: 215 vs 222 ms of forward).
        self.expand_into_depthwise = self.has_expand
        # Inference with both folded: expand and depthwise in one kernel pass, the expansion computed a band
        # of rows at a time and never stored (expansion_depthwise_inference).
        self.fuse_expansion_inference = self.has_expand
        # Set for a block that never receives a gradient (the trainer's --freeze_layers): inference kernels in training too.
        self.inference_only = False

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        out = self.folded_forward(x) if self.fold_bn and not self.conv[-1].uses_batch_statistics() else self.conv(x)
        if self.use_residual:
            return x + out
        return out

    def folded_forward(self, x: ms.Tensor) -> ms.Tensor:
        """The body with the projection's BatchNorm on its moving statistics folded into it (see ConvBNReLU.folded_forward)."""
        if self.has_expand:
            expand, depthwise = self.conv[0], self.conv[1]
            both_fold = expand.folds_now() and depthwise.folds_now()
            if both_fold and self.fuse_expansion_inference and (self.inference_only or not self.training):
                hidden = self.expansion_depthwise_inference(x)
            elif both_fold and self.expand_into_depthwise:
                hidden = self.expanded_depthwise(x)
            else:
                hidden = depthwise(expand(x))
            weight, bias = folded_batch_norm(self.conv[2], self.conv[3])
            return self.conv[2].with_bias(hidden, weight, bias)
        hidden = self.conv[0](x)
        weight, bias = folded_batch_norm(self.conv[1], self.conv[2])
        return self.conv[1].with_bias(hidden, weight, bias)

    def expansion_depthwise_inference(self, x: ms.Tensor) -> ms.Tensor:
        """Expand and depthwise layers, both BatchNorms folded, in one kernel pass that never stores the
        expansion's output (inference; a gradient through it recomputes the expansion). The same values as
        the two layers' folded_forward, bit for bit."""
        expand, depthwise = self.conv[0], self.conv[1]
        expand_weight, expand_bias = folded_batch_norm(expand.features[0], expand.features[1])
        weight, bias = folded_batch_norm(depthwise.features[0], depthwise.features[1])
        return depthwise.features[0].after_expansion(x, expand_weight, expand_bias, weight, bias)

    def expanded_depthwise(self, x: ms.Tensor) -> ms.Tensor:
        """Expand and depthwise layers, both BatchNorms folded, in two kernel passes: the 1x1 product z alone,
        then relu6(dwconv(relu6(z + expand bias)) + depthwise bias). The expand layer's bias and ReLU6 run
        where the depthwise layer reads z, and their gradient inside its backward: the widest tensor of the
        block is not gated and stored again by a pass of its own. Same values as the two layers' folded_forward.
        Training only (see `expand_into_depthwise`)."""
        expand, depthwise = self.conv[0], self.conv[1]
        expand_weight, expand_bias = folded_batch_norm(expand.features[0], expand.features[1])
        weight, bias = folded_batch_norm(depthwise.features[0], depthwise.features[1])
        return depthwise.features[0].relu6_input_bias_relu6(expand.features[0].with_weight(x, expand_weight),
                                                            expand_bias, weight, bias)


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
        self.features = nn.SequentialCell(
            [ConvBNReLU(self.spec.stem, fast_conv)]
            + [InvertedResidual(block, fast_conv) for block in self.spec.blocks]
            + [ConvBNReLU(self.spec.last, fast_conv)]
        )

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.features(x)


def global_average_pool(x: ms.Tensor) -> ms.Tensor:
    """The head's pooling: feature map (N, C, H, W) -> (N, C)."""
    return ops.mean(x, (2, 3))


class MobileNetV2Head(nn.Cell):
    """Global average pool -> dropout -> dense: feature map -> logits."""

    def __init__(self, in_channels: int, num_classes: int = 1000, dropout: float = mbv2_spec.DEFAULT_DROPOUT) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        # p = 0: Identity in both twins (no dropout op in the graph)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.dense = nn.Dense(in_channels, num_classes, weight_init=Normal(0.01), bias_init="zeros")

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.dense(self.dropout(global_average_pool(x)))


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
            fast_conv: "off", "auto" or "on": our CPU kernels for the stem and depthwise 3x3 convolutions
                (MindSpore only; "auto" falls back to nn.Conv2d where they cannot be used).
        """
        # auto_prefix=False: parameters keep the parts' own names (`features.*`, `dense.*`).
        super().__init__(auto_prefix=False)
        self.backbone = MobileNetV2Backbone(width_mult, round_nearest, inverted_residual_setting, fast_conv)
        self.head = MobileNetV2Head(self.backbone.num_features, num_classes, dropout)
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
