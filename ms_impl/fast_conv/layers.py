"""The layers on the kernels: `nn.Conv2d` and `nn.BatchNorm2d` subclasses, and the factories the twin uses.

Each layer keeps its MindSpore parent's parameters (names, shapes, init, attributes), so a checkpoint is
the same with the kernels on or off. Besides `construct`, each offers the fused forms the blocks use
(`blocks.py`): a convolution with a folded BatchNorm's weight and bias (+ ReLU6) in one pass, BatchNorm
+ ReLU6 in one pass.
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from ms_impl.fast_conv.ops import (FAST_CONV_MODES, affine_op, batch_norm_ops, expansion_depthwise_op, fold_op,
                                   kernel_ops, pooling_op, projection_residual_op, relu6_input_op, resolve_fast_conv)


class FastConv3x3(nn.Conv2d):
    """3x3, padding 1, stride 1 or 2, no bias, depthwise or dense: an nn.Conv2d computed by our CPU kernels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, group: int, weight_init) -> None:
        super().__init__(in_channels, out_channels, 3, stride, pad_mode="pad", padding=1, group=group,
                         has_bias=False, weight_init=weight_init)
        if stride not in (1, 2):
            raise ValueError(f"FastConv3x3 supports stride 1 or 2, got {stride}")
        if group == 1:
            kind = "dense"
        elif group == in_channels == out_channels:
            kind = "dw"
        else:
            raise ValueError(f"FastConv3x3 is depthwise or dense, got group={group} for {in_channels}->{out_channels}")
        self.kernel, self.kernel_bias_relu6, _ = kernel_ops(kind, stride)
        # One channel is the dense kind above, and depthwise too: the relu6-input form is depthwise only.
        depthwise = group == in_channels == out_channels
        self.kernel_relu6_input = relu6_input_op(stride) if depthwise else None
        self.kernel_after_expansion = expansion_depthwise_op(stride) if depthwise else None

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.kernel(x, self.weight)

    def bias_relu6(self, x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        """relu6(conv(x, weight) + bias) in one pass, with `weight` in place of the layer's own (a folded BN)."""
        return self.kernel_bias_relu6(x, weight, bias)

    def relu6_input_bias_relu6(self, z: ms.Tensor, input_bias: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        """relu6(conv(relu6(z + input_bias), weight) + bias) in one pass (depthwise only): the layer before's
        folded bias and ReLU6 applied here, so that layer stores its product z alone and its ReLU6
        gradient is taken in this layer's backward pass (blocks.py, InvertedResidualFusion)."""
        return self.kernel_relu6_input(z, input_bias, weight, bias)

    def after_expansion(self, x: ms.Tensor, expand_weight: ms.Tensor, expand_bias: ms.Tensor, weight: ms.Tensor,
                        bias: ms.Tensor) -> ms.Tensor:
        """relu6(conv(relu6(conv1x1(x, expand_weight) + expand_bias), weight) + bias) in one pass (depthwise only,
        for inference): the expanding 1x1 layer before this one computed a band of rows at a time, its output
        never stored (blocks.py, InvertedResidualFusion). Its gradient recomputes the expansion."""
        return self.kernel_after_expansion(x, expand_weight, expand_bias, weight, bias)


class FastConv1x1(nn.Conv2d):
    """1x1, stride 1, no bias, not grouped: an nn.Conv2d computed by our CPU kernels (packed matrix
    products). MindSpore's own CPU kernel runs these through oneDNN on NCHW tensors, the largest cost
    of the twin once the 3x3 layers were ours."""

    def __init__(self, in_channels: int, out_channels: int, weight_init) -> None:
        super().__init__(in_channels, out_channels, 1, 1, pad_mode="pad", padding=0, group=1, has_bias=False,
                         weight_init=weight_init)
        self.kernel, self.kernel_bias_relu6, self.kernel_bias = kernel_ops("pw", 1)
        self.kernel_bias_add = projection_residual_op()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.kernel(x, self.weight)

    def bias_relu6(self, x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        """relu6(conv(x, weight) + bias) in one pass, with `weight` in place of the layer's own (a folded BN)."""
        return self.kernel_bias_relu6(x, weight, bias)

    def with_weight(self, x: ms.Tensor, weight: ms.Tensor) -> ms.Tensor:
        """conv(x, weight), with `weight` in place of the layer's own (a folded BN whose bias comes later)."""
        return self.kernel(x, weight)

    def with_bias(self, x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor) -> ms.Tensor:
        """conv(x, weight) + bias in one pass (a folded BatchNorm without ReLU6: the linear projections)."""
        return self.kernel_bias(x, weight, bias)

    def with_bias_add(self, x: ms.Tensor, weight: ms.Tensor, bias: ms.Tensor, residual: ms.Tensor) -> ms.Tensor:
        """(conv(x, weight) + bias) + residual in one pass: a residual block's projection, the add in the
        product's epilogue (the same value as with_bias, then the add)."""
        return self.kernel_bias_add(x, weight, bias, residual)


class FastBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, names, init, checkpoint and moving-statistics convention) on our
    CPU kernels, forward and backward; `relu6(x)` is the same with ReLU6 fused into the pass.

    Batch statistics are used as in nn.BatchNorm2d: in training mode with `use_batch_statistics` None, or
    always with True. The moving statistics then follow MindSpore's rule, `moving = momentum * moving +
    (1 - momentum) * batch` (unbiased variance). Otherwise (eval mode; `use_batch_statistics=False`, the
    trainer's --freeze_bn, also in training) BatchNorm runs on its moving statistics, never updated, as
    one pass x * s + (beta - mean * s) with s = gamma / sqrt(var + eps) (as the folding of the 3x3
    layers); its gradients for gamma and beta follow from those of s and the shift.
    """

    def __init__(self, num_features: int, eps: float, momentum: float) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.train_kernel = batch_norm_ops(False)
        self.train_relu6_kernel = batch_norm_ops(True)
        # self.momentum is the primitive's, 1 - the constructor's (as nn.BatchNorm2d passes it to ops.BatchNorm).
        self.kernel_constants = ms.Tensor(np.array([eps, self.momentum], dtype=np.float32))
        self.affine_kernel = affine_op(False)
        self.affine_relu6_kernel = affine_op(True)
        self.fold_kernel = fold_op()

    def uses_batch_statistics(self) -> bool:
        """Whether this pass normalises with the batch's statistics (and updates the moving ones)."""
        return self.use_batch_statistics is True or (self.use_batch_statistics is None and self.training)

    def _train_forward(self, x: ms.Tensor, kernel) -> ms.Tensor:
        y, _, mean, variance = kernel(x, self.gamma, self.beta, self.moving_mean, self.moving_variance,
                                      self.kernel_constants)
        y = ops.depend(y, ops.assign(self.moving_mean, ops.stop_gradient(mean)))
        return ops.depend(y, ops.assign(self.moving_variance, ops.stop_gradient(variance)))

    def _affine_forward(self, x: ms.Tensor, kernel) -> ms.Tensor:
        scale = self.gamma / ops.sqrt(ops.stop_gradient(self.moving_variance) + self.eps)
        return kernel(x, scale, self.beta - ops.stop_gradient(self.moving_mean) * scale)

    def fold_into(self, weight: ms.Tensor):
        """(weight * s per output channel, beta - mean * s), s = gamma / sqrt(var + eps): this BatchNorm on its
        moving statistics folded into the convolution before it, in one kernel call (gradients reach the
        weight, gamma and beta)."""
        return self.fold_kernel(weight, self.gamma, self.beta, self.moving_mean, self.moving_variance,
                                self.kernel_constants)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if self.uses_batch_statistics():
            return self._train_forward(x, self.train_kernel)
        return self._affine_forward(x, self.affine_kernel)

    def relu6(self, x: ms.Tensor) -> ms.Tensor:
        """relu6(batch_norm(x)) in one kernel pass (forward and backward)."""
        if self.uses_batch_statistics():
            return self._train_forward(x, self.train_relu6_kernel)
        return self._affine_forward(x, self.affine_relu6_kernel)


class FastGlobalAveragePool(nn.Cell):
    """The head's global average pooling, (N, C, H, W) -> (N, C), on our CPU kernel, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = pooling_op()

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.kernel(x)


class GlobalAveragePool(nn.Cell):
    """The head's global average pooling, (N, C, H, W) -> (N, C), with MindSpore's own mean."""

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return ops.mean(x, (2, 3))


def global_average_pool(fast_conv: str = "off") -> nn.Cell:
    """The head's pooling layer: FastGlobalAveragePool where the kernels apply and `fast_conv` allows."""
    if fast_conv not in FAST_CONV_MODES:
        raise ValueError(f"fast_conv must be one of {FAST_CONV_MODES}, got {fast_conv!r}")
    return FastGlobalAveragePool() if resolve_fast_conv(fast_conv) else GlobalAveragePool()


def batch_norm(num_features: int, eps: float, momentum: float, fast_conv: str = "off") -> nn.BatchNorm2d:
    """nn.BatchNorm2d (4-D input), or FastBatchNorm2d where the kernels apply and `fast_conv` allows."""
    if fast_conv not in FAST_CONV_MODES:
        raise ValueError(f"fast_conv must be one of {FAST_CONV_MODES}, got {fast_conv!r}")
    if resolve_fast_conv(fast_conv):
        return FastBatchNorm2d(num_features, eps, momentum)
    return nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)


def conv2d(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, weight_init,
           fast_conv: str = "off") -> nn.Conv2d:
    """nn.Conv2d (symmetric padding, no bias), or FastConv3x3 / FastConv1x1 where the kernels apply and
    `fast_conv` allows."""
    if fast_conv not in FAST_CONV_MODES:
        raise ValueError(f"fast_conv must be one of {FAST_CONV_MODES}, got {fast_conv!r}")
    depthwise = groups == in_channels == out_channels
    fits = kernel_size == 3 and stride in (1, 2) and (groups == 1 or depthwise)
    if fits and resolve_fast_conv(fast_conv):
        return FastConv3x3(in_channels, out_channels, stride, groups, weight_init)
    if kernel_size == 1 and stride == 1 and groups == 1 and resolve_fast_conv(fast_conv):
        return FastConv1x1(in_channels, out_channels, weight_init)
    # pad_mode='pad' with symmetric padding: 'same' pads bottom/right only at stride 2.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad_mode="pad",
                     padding=(kernel_size - 1) // 2, group=groups, has_bias=False, weight_init=weight_init)
