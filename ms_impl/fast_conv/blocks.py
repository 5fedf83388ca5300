"""The MindSpore twin's blocks on the kernels: BatchNorm folded into the convolutions, layers fused.

`block_classes(ConvBNReLU, InvertedResidual, fast_conv)` is how the twin (ms_impl/mobilenetv2.py) picks
its block classes: where the kernels are used, subclasses of its own two (`FusedConvBNReLU`,
`FusedInvertedResidual`, made once per process by `fused_blocks`), else its own. The subclasses keep
every parameter, name and checkpoint of their parents and change only how `construct` computes:

- BatchNorm on its moving statistics (eval mode, and training with frozen BatchNorm, the trainer's
  `freeze_bn`): the convolutions fold it into their weights and apply the bias (+ ReLU6) in the same
  kernel pass (`folded_forward`); gradients reach gamma and beta through the fold.
- Inference: each block is one kernel pass that folds its BatchNorms and stores no hidden tensor
  (`whole_block_inference`); where the projection's BatchNorm does not fold, the expanding 1x1 and
  depthwise layers still are one pass (`expansion_depthwise_inference`).
- Training with frozen BatchNorm: the expanding 1x1 layer's bias and ReLU6 run inside the depthwise
  layer's kernels (`expanded_depthwise`).
- Training with batch statistics: BatchNorm and ReLU6 in one kernel, forward and backward.

Their code lives in two mixins, `ConvBNReLUFusion` and `InvertedResidualFusion`, placed before the twin's
class: this module never imports the twin, which imports it.
"""
from __future__ import annotations

import functools
from typing import Tuple

import mindspore as ms
from mindspore import nn, ops

from ms_impl.fast_conv.layers import FastBatchNorm2d, FastConv1x1, FastConv3x3
from ms_impl.fast_conv.ops import inverted_residual_bn_op, resolve_fast_conv

# Convolutions whose kernels take a folded BatchNorm (and ReLU6) in their own pass.
FOLDABLE = (FastConv3x3, FastConv1x1)


def folded_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """(w * s, beta - mean * s), s = gamma / sqrt(var + eps): conv then eval-mode BN as one conv with a bias."""
    # The moving statistics are constants here (frozen BatchNorm in training): gradients reach w, gamma, beta.
    if isinstance(bn, FastBatchNorm2d):  # one kernel call (the same values)
        return bn.fold_into(conv.weight)
    scale = bn.gamma / ops.sqrt(ops.stop_gradient(bn.moving_variance) + bn.eps)
    return conv.weight * scale.reshape((-1, 1, 1, 1)), bn.beta - ops.stop_gradient(bn.moving_mean) * scale


def _conv_and_batch_norm(conv: nn.Conv2d, bn: FastBatchNorm2d) -> Tuple[ms.Tensor, ...]:
    """A layer's inputs to a kernel that folds its BatchNorm itself: (weight, gamma, beta, moving mean, moving
    variance, [eps, momentum])."""
    return conv.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, bn.kernel_constants


class ConvBNReLUFusion:
    """The kernels' paths of the twin's ConvBNReLU (`features` = conv, BatchNorm, ReLU6)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        conv, bn = self.features[0], self.features[1]
        # BN on moving statistics with our kernels: folded into the weights, bias + ReLU6 in the kernel's own pass.
        self.fold_bn = isinstance(conv, FOLDABLE) and isinstance(bn, FastBatchNorm2d)
        # Training with our kernels: BatchNorm (batch statistics) + ReLU6 in one kernel, forward and backward.
        self.fuse_bn_relu6 = isinstance(bn, FastBatchNorm2d)

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


class InvertedResidualFusion:
    """The kernels' paths of the twin's InvertedResidual (`conv` = [expand,] depthwise, projection, BatchNorm);
    its ConvBNReLU layers are FusedConvBNReLU (the class attribute `conv_bn_relu`)."""

    def __init__(self, block, *args, **kwargs) -> None:
        super().__init__(block, *args, **kwargs)
        self.has_expand = block.expand is not None
        projection, bn = self.conv[-2], self.conv[-1]
        # BN on moving statistics with our 1x1 kernel: the projection's BN folded into it, bias added in its own pass.
        self.fold_bn = isinstance(projection, FastConv1x1) and isinstance(bn, FastBatchNorm2d)
        # Training with both BNs folded (frozen BatchNorm): the expand layer's bias and ReLU6 run in the depthwise
        # layer's kernels (expanded_depthwise). Not in eval: there the 1x1 kernel applies them for free in its
        # epilogue, while the depthwise kernel pays for them (experiments/kernel_layers.py: 215 vs 222 ms of forward).
        self.expand_into_depthwise = self.has_expand
        # Inference with both folded: expand and depthwise in one kernel pass, the expansion computed a band
        # of rows at a time and never stored (expansion_depthwise_inference).
        self.fuse_expansion_inference = self.has_expand
        # Inference with every BatchNorm folded: the whole block in one kernel pass, the projection reading the
        # depthwise output a step of rows at a time from cache (whole_block_inference).
        self.fuse_whole_block_inference = True
        self.whole_block_kernel = inverted_residual_bn_op(block.stride, self.use_residual, self.has_expand)
        # Set for a block that never receives a gradient (the trainer's --freeze_layers): inference kernels in training too.
        self.inference_only = False

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.fold_bn and not self.conv[-1].uses_batch_statistics():
            return self.folded_forward(x)
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)

    def folded_forward(self, x: ms.Tensor) -> ms.Tensor:
        """The block's output with the projection's BatchNorm on its moving statistics folded into it (see
        ConvBNReLUFusion.folded_forward), and the residual added in the projection's own pass."""
        if self.infers_whole_block():
            return self.whole_block_inference(x)
        projection = self.conv[-2]
        weight, bias = folded_batch_norm(projection, self.conv[-1])
        hidden = self.folded_hidden(x)
        if self.use_residual:
            return projection.with_bias_add(hidden, weight, bias, x)
        return projection.with_bias(hidden, weight, bias)

    def infers_whole_block(self) -> bool:
        """Whether the whole block runs as one inference pass: every BatchNorm before the projection folds (the
        projection's is checked by the caller), and no gradient is wanted through training's own forms."""
        if not (self.fuse_whole_block_inference and (self.inference_only or not self.training)):
            return False
        if self.has_expand:
            return self.conv[0].folds_now() and self.conv[1].folds_now()
        return self.conv[0].folds_now()

    def whole_block_inference(self, x: ms.Tensor) -> ms.Tensor:
        """The block in one kernel pass that also folds its BatchNorms (one op call, not one per fold): no hidden
        tensor stored, the residual added in the projection's epilogue. The same values as the layers' own
        kernels one after the other on the folded weights, bit for bit."""
        projection = self.conv[-2]
        depthwise = self.conv[1] if self.has_expand else self.conv[0]
        if not self.has_expand:
            return self.whole_block_kernel(x, *_conv_and_batch_norm(depthwise.features[0], depthwise.features[1]),
                                           *_conv_and_batch_norm(projection, self.conv[-1]))
        expand = self.conv[0]
        return self.whole_block_kernel(x, *_conv_and_batch_norm(expand.features[0], expand.features[1]),
                                       *_conv_and_batch_norm(depthwise.features[0], depthwise.features[1]),
                                       *_conv_and_batch_norm(projection, self.conv[-1]))

    def folded_hidden(self, x: ms.Tensor) -> ms.Tensor:
        """The layers before the projection, their BatchNorms folded where they can be."""
        if self.has_expand:
            expand, depthwise = self.conv[0], self.conv[1]
            both_fold = expand.folds_now() and depthwise.folds_now()
            if both_fold and self.fuse_expansion_inference and (self.inference_only or not self.training):
                return self.expansion_depthwise_inference(x)
            if both_fold and self.expand_into_depthwise:
                return self.expanded_depthwise(x)
            return depthwise(expand(x))
        return self.conv[0](x)

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


@functools.lru_cache(maxsize=None)
def fused_blocks(conv_bn_relu: type, inverted_residual: type) -> Tuple[type, type]:
    """(FusedConvBNReLU, FusedInvertedResidual): the twin's two block classes with the mixins above."""

    class FusedConvBNReLU(ConvBNReLUFusion, conv_bn_relu):
        """The twin's ConvBNReLU on the kernels (ms_impl/fast_conv/blocks.py)."""

    class FusedInvertedResidual(InvertedResidualFusion, inverted_residual):
        """The twin's InvertedResidual on the kernels (ms_impl/fast_conv/blocks.py)."""

        conv_bn_relu = FusedConvBNReLU

    return FusedConvBNReLU, FusedInvertedResidual


def block_classes(conv_bn_relu: type, inverted_residual: type, fast_conv: str) -> Tuple[type, type]:
    """The twin's block classes for `fast_conv`: the fused subclasses where the kernels are used, else its own."""
    if resolve_fast_conv(fast_conv):
        return fused_blocks(conv_bn_relu, inverted_residual)
    return conv_bn_relu, inverted_residual
