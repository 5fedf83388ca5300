"""MindSpore's side of the kernels: whether they are used (`resolve_fast_conv`), and their `ops.Custom` ops.

Each op is registered once per process (cached) with its backward (`bprop`), so the layers train in
GRAPH and PYNATIVE mode. The library is resolved once per process: built (`build.py`), self-tested
(`selftest.py`), its thread count set, and one op run through MindSpore.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional, Tuple

import numpy as np

import mindspore as ms
from mindspore import ops

from ms_impl.fast_conv.build import FastConvUnavailable, kernel_library, kernel_threads, set_library_threads
from ms_impl.fast_conv.selftest import check_entry_points, reference_conv
from parity.core.files import one_line

FAST_CONV_MODES = ("auto", "on", "off")

_state = {"warned": False}  # `auto` warns once per process


def _check_in_mindspore(library: str) -> None:
    """One depthwise forward through ops.Custom: MindSpore loads the library and the ABI fits."""
    x = np.arange(2 * 2 * 5 * 4, dtype=np.float32).reshape(2, 2, 5, 4) / 10.0
    w = np.linspace(-1.0, 1.0, 18, dtype=np.float32).reshape(2, 1, 3, 3)
    op = ops.Custom(f"{library}:dw_forward_s2", out_shape=forward_shape(2), out_dtype=same_dtype, func_type="aot")
    try:
        got = op(ms.Tensor(x), ms.Tensor(w)).asnumpy()
    except (RuntimeError, TypeError, ValueError, OSError) as exc:
        raise FastConvUnavailable(f"the built kernels do not run in MindSpore: {one_line(exc)}") from exc
    if got.shape != (2, 2, 3, 2) or not np.allclose(got, reference_conv(x, w, 2, True), rtol=1e-5, atol=1e-5):
        raise FastConvUnavailable("the built kernels give wrong results in MindSpore (start-up self-test)")


@functools.lru_cache(maxsize=None)
def _cached_library() -> Tuple[str, str]:
    """(library path, "") or ("", reason): resolved (built and self-tested) once per process, so `auto` warns once.

    A cached library that does not load or fails the self-test (a truncated
    file, a stale build) is rebuilt once before giving up.
    """
    try:
        path = kernel_library()
        try:
            check_entry_points(path)
        except FastConvUnavailable:
            path = kernel_library(rebuild=True)
            check_entry_points(path)
        set_library_threads(path, kernel_threads())
        _check_in_mindspore(str(path))
        return str(path), ""
    except FastConvUnavailable as exc:
        return "", str(exc)


def _library() -> str:
    """The resolved library's path, for an op; FastConvUnavailable with the reason if there is none."""
    library, reason = _cached_library()
    if not library:
        raise FastConvUnavailable(reason)
    return library


def forget_resolution() -> None:
    """Forget this process's resolved library and warning (after changing CXX, MBV2_KERNEL_CACHE or
    MBV2_KERNEL_MARCH; tests)."""
    _cached_library.cache_clear()
    kernel_ops.cache_clear()
    batch_norm_ops.cache_clear()
    affine_op.cache_clear()
    bias_grad_ops.cache_clear()
    relu6_input_op.cache_clear()
    expansion_depthwise_op.cache_clear()
    expansion_depthwise_backward.cache_clear()
    pointwise_grad_ops.cache_clear()
    inverted_residual_op.cache_clear()
    inverted_residual_bn_op.cache_clear()
    fold_grad_op.cache_clear()
    projection_residual_op.cache_clear()
    pooling_op.cache_clear()
    fold_op.cache_clear()
    _state["warned"] = False


def resolve_fast_conv(mode: str, device_target: Optional[str] = None) -> bool:
    """Whether the kernels are used for `mode` in this process (see the package docstring).

    `device_target` defaults to MindSpore's context, read now: build networks after `ms.set_device`.
    """
    if mode not in FAST_CONV_MODES:
        raise ValueError(f"fast_conv must be one of {FAST_CONV_MODES}, got {mode!r}")
    target = device_target or ms.get_context("device_target")
    if mode == "off" or target != "CPU":
        return False
    library, reason = _cached_library()
    if library:
        return True
    if mode == "on":
        raise FastConvUnavailable(f"fast_conv='on' but the CPU kernels are unavailable: {reason}")
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"fast_conv='auto': using nn.Conv2d, the CPU kernels are unavailable: {reason}",
                      RuntimeWarning, stacklevel=2)
    return False


def forward_shape(stride: int) -> Callable:
    return lambda x, w: (x[0], w[0], (x[2] - 1) // stride + 1, (x[3] - 1) // stride + 1)


def same_dtype(*dtypes):
    return dtypes[0]


@functools.lru_cache(maxsize=None)
def bias_grad_ops() -> Tuple[ops.Custom, ops.Custom]:
    """The bias forms' backward, one pass each: dy -> db[C]; (dy, y) -> (dz, db[C]) through ReLU6."""
    library = _library()
    return (ops.Custom(f"{library}:bias_grad", out_shape=lambda dy: (dy[1],), out_dtype=same_dtype, func_type="aot"),
            ops.Custom(f"{library}:bias_relu6_grad", out_shape=lambda dy, y: (dy, (dy[1],)),
                       out_dtype=lambda *dtypes: (dtypes[0],) * 2, func_type="aot"))


@functools.lru_cache(maxsize=None)
def kernel_ops(kind: str, stride: int) -> Tuple[ops.Custom, ops.Custom, Optional[ops.Custom]]:
    """(forward, forward_bias_relu6, forward_bias or None) Custom ops of `kind` ("dw", "dense" or "pw")
    at `stride`, with their bprops; shared by all layers. Only "pw" has the bias-only forward (the
    projection's folded BatchNorm, no ReLU6)."""
    library = _library()

    def custom(name: str, out_shape: Callable, bprop=None) -> ops.Custom:
        return ops.Custom(f"{library}:{kind}_{name}_s{stride}", out_shape=out_shape, out_dtype=same_dtype,
                          func_type="aot", bprop=bprop)

    grad_input = custom("grad_input", lambda dy, w, x: x)
    size = 1 if kind == "pw" else 3
    if kind == "dw":
        grad_weight = custom("grad_weight", lambda x, dy: (x[1], 1, 3, 3))
    else:
        grad_weight = custom("grad_weight", lambda x, dy: (dy[1], x[1], size, size))

    def bprop(x, w, out, dout):
        return grad_input(dout, w, x), grad_weight(x, dout)

    grad_bias, grad_bias_relu6 = bias_grad_ops()

    def bias_bprop(x, w, bias, out, dout):
        return grad_input(dout, w, x), grad_weight(x, dout), grad_bias(dout)

    def bias_relu6_bprop(x, w, bias, out, dout):
        # Read from the clamped output: passes where 0 < y < 6. y == 6 stops it, including the pre-activation
        # exactly 6 that ops.ReLU6 passes (indistinguishable here from above 6; never met in practice).
        dz, dbias = grad_bias_relu6(dout, out)
        return grad_input(dz, w, x), grad_weight(x, dz), dbias

    if kind == "dw":  # the three gradients in one kernel, the masked gradient never stored
        whole_grad = ops.Custom(f"{library}:dw_bias_relu6_grad_s{stride}", out_shape=lambda dy, y, x, w: (x, w, (w[0],)),
                                out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

        def depthwise_bias_relu6_bprop(x, w, bias, out, dout):
            return whole_grad(dout, out, x, w)

    output_shape = forward_shape(stride)
    with_bias = custom("forward_bias", lambda x, w, bias: output_shape(x, w), bias_bprop) if kind == "pw" else None
    return (custom("forward", output_shape, bprop),
            custom("forward_bias_relu6", lambda x, w, bias: output_shape(x, w),
                   depthwise_bias_relu6_bprop if kind == "dw" else bias_relu6_bprop), with_bias)


@functools.lru_cache(maxsize=None)
def projection_residual_op() -> ops.Custom:
    """A residual block's projection with its folded BatchNorm and the residual add in the product's epilogue:
    (x, w[M,K,1,1], b[M], r) -> (conv1x1(x, w) + b) + r, with its bprop (the add's gradient passes to r as is).
    The same value, bit for bit, as the bias form followed by a separate add."""
    library = _library()
    grad_input, grad_weight = pointwise_grad_ops()
    grad_bias = bias_grad_ops()[0]

    def bprop(x, w, bias, residual, out, dout):
        return grad_input(dout, w, x), grad_weight(x, dout), grad_bias(dout), dout

    return ops.Custom(f"{library}:pw_forward_bias_add_s1", out_shape=lambda x, w, bias, residual: residual,
                      out_dtype=same_dtype, func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def pooling_op() -> ops.Custom:
    """Global average pooling, (x[N,C,H,W]) -> (N, C), with its bprop: the head's first op."""
    library = _library()
    grad = ops.Custom(f"{library}:global_average_pool_grad", out_shape=lambda dy, x: x, out_dtype=same_dtype,
                      func_type="aot")

    def bprop(x, out, dout):
        return (grad(dout, x),)

    return ops.Custom(f"{library}:global_average_pool", out_shape=lambda x: (x[0], x[1]), out_dtype=same_dtype,
                      func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def relu6_input_op(stride: int) -> ops.Custom:
    """The depthwise layer with the expanding 1x1 layer's folded bias and ReLU6 applied to its input:
    (z, a[C], w, b[C]) -> relu6(conv(relu6(z + a), w) + b), with its bprop, one kernel pass each way."""
    library = _library()
    grad = ops.Custom(f"{library}:dw_relu6_input_grad_s{stride}",
                      out_shape=lambda dy, y, z, a, w: (z, w, (w[0],), (w[0],)),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 4, func_type="aot")

    def bprop(z, input_bias, w, bias, out, dout):
        dz, dw, dbias, dinput_bias = grad(dout, out, z, input_bias, w)
        return dz, dinput_bias, dw, dbias

    output_shape = forward_shape(stride)
    return ops.Custom(f"{library}:dw_forward_relu6_input_s{stride}", out_shape=lambda z, a, w, b: output_shape(z, w),
                      out_dtype=same_dtype, func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def expansion_depthwise_backward(stride: int) -> Callable:
    """The backward of the expansion + depthwise pass: (x, we, be, wd, bd, out, dout) -> the five gradients.
    It recomputes the expansion and runs the two layers' own backward kernels."""
    library = _library()
    expand = kernel_ops("pw", 1)[1]
    grad_bias_relu6 = bias_grad_ops()[1]
    depthwise_grad = ops.Custom(f"{library}:dw_bias_relu6_grad_s{stride}", out_shape=lambda dy, y, x, w: (x, w, (w[0],)),
                                out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")
    grad_input, grad_weight = pointwise_grad_ops()

    def backward(x, expand_weight, expand_bias, weight, bias, out, dout):
        hidden = expand(x, expand_weight, expand_bias)
        dhidden, dweight, dbias = depthwise_grad(dout, out, hidden, weight)
        dz, dexpand_bias = grad_bias_relu6(dhidden, hidden)
        return grad_input(dz, expand_weight, x), grad_weight(x, dz), dexpand_bias, dweight, dbias

    return backward


@functools.lru_cache(maxsize=None)
def pointwise_grad_ops() -> Tuple[ops.Custom, ops.Custom]:
    """The 1x1 product's gradients: (dy, w, x) -> dx and (x, dy) -> dw."""
    library = _library()
    return (ops.Custom(f"{library}:pw_grad_input_s1", out_shape=lambda dy, w, x: x, out_dtype=same_dtype,
                       func_type="aot"),
            ops.Custom(f"{library}:pw_grad_weight_s1", out_shape=lambda x, dy: (dy[1], x[1], 1, 1),
                       out_dtype=same_dtype, func_type="aot"))


@functools.lru_cache(maxsize=None)
def expansion_depthwise_op(stride: int) -> ops.Custom:
    """A block's expansion and depthwise layers, both BatchNorms folded, in one pass without storing the
    expansion: (x, we[M,K,1,1], be[M], wd[M,1,3,3], bd[M]) -> relu6(dwconv(relu6(conv1x1(x, we) + be), wd) + bd).
    For inference; its bprop recomputes the expansion and runs the two layers' own backward kernels, so a
    gradient through it (saliency on an eval-mode network) is right, only slower than training's own forms."""
    library = _library()
    backward = expansion_depthwise_backward(stride)

    def bprop(x, expand_weight, expand_bias, weight, bias, out, dout):
        return backward(x, expand_weight, expand_bias, weight, bias, out, dout)

    output_shape = forward_shape(stride)
    return ops.Custom(f"{library}:pw_dw_forward_s{stride}", out_shape=lambda x, we, be, wd, bd: output_shape(x, we),
                      out_dtype=same_dtype, func_type="aot", bprop=bprop)


def _whole_block_grads(stride: int, residual: bool, expand: bool) -> Callable:
    """The gradients of a whole block in one pass, its BatchNorms folded: (x, *folded layers, dout) -> the
    gradients of x and of each folded weight and bias, the hidden tensors recomputed."""
    library = _library()
    grad_input, grad_weight = pointwise_grad_ops()
    grad_bias = bias_grad_ops()[0]
    if expand:
        hidden_pass, backward = expansion_depthwise_op(stride), expansion_depthwise_backward(stride)

        def grads(x, expand_weight, expand_bias, weight, bias, projection_weight, dout):
            hidden = hidden_pass(x, expand_weight, expand_bias, weight, bias)
            dhidden = grad_input(dout, projection_weight, hidden)
            dx, dexpand_weight, dexpand_bias, dweight, dbias = backward(x, expand_weight, expand_bias, weight, bias,
                                                                       hidden, dhidden)
            if residual:
                dx = dx + dout
            return dx, dexpand_weight, dexpand_bias, dweight, dbias, grad_weight(hidden, dout), grad_bias(dout)
        return grads
    hidden_pass = kernel_ops("dw", stride)[1]
    depthwise_grad = ops.Custom(f"{library}:dw_bias_relu6_grad_s{stride}",
                                out_shape=lambda dy, y, x, w: (x, w, (w[0],)),
                                out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

    def grads_without_expansion(x, weight, bias, projection_weight, dout):
        hidden = hidden_pass(x, weight, bias)
        dx, dweight, dbias = depthwise_grad(grad_input(dout, projection_weight, hidden), hidden, x, weight)
        if residual:
            dx = dx + dout
        return dx, dweight, dbias, grad_weight(hidden, dout), grad_bias(dout)
    return grads_without_expansion


def _block_entry_point(stride: int, residual: bool, expand: bool, folds: bool) -> str:
    prefix = ("block_forward" if expand else "dw_block_forward") + ("_bn" if folds else "")
    return f"{prefix}_residual_s1" if residual else f"{prefix}_s{stride}"


@functools.lru_cache(maxsize=None)
def inverted_residual_op(stride: int, residual: bool, expand: bool = True) -> ops.Custom:
    """A whole inverted residual block, its BatchNorms folded, in one pass that stores no hidden tensor:
    (x, we, be, wd, bd, wp[P,M,1,1], bp[P]) -> conv1x1(expansion_depthwise(x, we, be, wd, bd), wp) + bp (+ x with
    `residual`); without `expand` (a block whose depthwise layer reads x) the inputs are (x, wd, bd, wp, bp).
    The same value, bit for bit, as the expansion + depthwise pass (or the depthwise kernel) and then the
    projection. For inference; its bprop recomputes the hidden tensors (as expansion_depthwise_op's does)."""
    grads = _whole_block_grads(stride, residual, expand)
    if expand:
        def bprop(x, expand_weight, expand_bias, weight, bias, projection_weight, projection_bias, out, dout):
            return grads(x, expand_weight, expand_bias, weight, bias, projection_weight, dout)
    else:
        def bprop(x, weight, bias, projection_weight, projection_bias, out, dout):
            return grads(x, weight, bias, projection_weight, dout)
    output_shape = forward_shape(stride)
    return ops.Custom(f"{_library()}:{_block_entry_point(stride, residual, expand, False)}",
                      out_shape=lambda x, *rest: output_shape(x, rest[-2]), out_dtype=same_dtype, func_type="aot",
                      bprop=bprop)


@functools.lru_cache(maxsize=None)
def inverted_residual_bn_op(stride: int, residual: bool, expand: bool = True) -> ops.Custom:
    """inverted_residual_op with each layer's BatchNorm (moving statistics) folded inside the one kernel call:
    (x, then per layer (weight, gamma, beta, moving_mean, moving_variance, [eps, momentum]): the expansion's
    with `expand`, the depthwise layer's, the projection's) -> the block's output. The same value, bit for bit,
    as fold_op on each layer then inverted_residual_op, with one op call instead of four (an eval forward: 17
    instead of 67). Its bprop folds again (fold_op) and maps the folded layers' gradients back through the
    fold: weight, gamma and beta get theirs, the moving statistics and the constants none."""
    fold, fold_grad, grads = fold_op(), fold_grad_op(), _whole_block_grads(stride, residual, expand)

    def unfolded(dfolded, dbias, weight, gamma, mean, variance, constants):
        dweight, dgamma = fold_grad(dfolded, dbias, weight, gamma, mean, variance, constants)
        return dweight, dgamma, dbias, ops.zeros_like(mean), ops.zeros_like(variance), ops.zeros_like(constants)

    if expand:
        def bprop(x, we, ge, be, me, ve, ce, wd, gd, bd, md, vd, cd, wp, gp, bp, mp, vp, cp, out, dout):
            fwe, fbe = fold(we, ge, be, me, ve, ce)
            fwd, fbd = fold(wd, gd, bd, md, vd, cd)
            fwp, fbp = fold(wp, gp, bp, mp, vp, cp)
            dx, dwe, dbe, dwd, dbd, dwp, dbp = grads(x, fwe, fbe, fwd, fbd, fwp, dout)
            return (dx,) + unfolded(dwe, dbe, we, ge, me, ve, ce) + unfolded(dwd, dbd, wd, gd, md, vd, cd) + \
                unfolded(dwp, dbp, wp, gp, mp, vp, cp)
    else:
        def bprop(x, wd, gd, bd, md, vd, cd, wp, gp, bp, mp, vp, cp, out, dout):
            fwd, fbd = fold(wd, gd, bd, md, vd, cd)
            fwp, fbp = fold(wp, gp, bp, mp, vp, cp)
            dx, dwd, dbd, dwp, dbp = grads(x, fwd, fbd, fwp, dout)
            return (dx,) + unfolded(dwd, dbd, wd, gd, md, vd, cd) + unfolded(dwp, dbp, wp, gp, mp, vp, cp)
    output_shape = forward_shape(stride)
    return ops.Custom(f"{_library()}:{_block_entry_point(stride, residual, expand, True)}",
                      out_shape=lambda x, *rest: output_shape(x, rest[-6]), out_dtype=same_dtype, func_type="aot",
                      bprop=bprop)


@functools.lru_cache(maxsize=None)
def batch_norm_ops(relu6: bool) -> ops.Custom:
    """The training BatchNorm (+ ReLU6) forward, with its bprop:
    (x, gamma, beta, moving_mean, moving_variance, [eps, momentum]) -> (y, saved, new moving_mean,
    new moving_variance); saved[2, C] = (batch mean, 1 / sqrt(batch variance + eps))."""
    library = _library()
    prefix = "bn_relu6" if relu6 else "bn"
    grad = ops.Custom(f"{library}:{prefix}_train_grad", out_shape=lambda dy, x, gamma, *rest: (x, gamma, gamma),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

    def bprop(x, gamma, beta, moving_mean, moving_variance, constants, out, dout):
        # Only y is differentiated: the other outputs feed the moving statistics.
        saved = out[1]
        dx, dgamma, dbeta = grad(dout[0], x, gamma, beta, saved) if relu6 else grad(dout[0], x, gamma, saved)
        return (dx, dgamma, dbeta, ops.zeros_like(moving_mean), ops.zeros_like(moving_variance),
                ops.zeros_like(constants))

    return ops.Custom(f"{library}:{prefix}_train_forward",
                      out_shape=lambda x, gamma, *rest: (x, (2, x[1]), gamma, gamma),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 4, func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def fold_grad_op() -> ops.Custom:
    """fold_op's backward: (dfolded, dbias, w, gamma, moving_mean, moving_variance, [eps, momentum]) -> (dw, dgamma)
    (dbeta = dbias; the moving statistics are constants: frozen BatchNorm)."""
    return ops.Custom(f"{_library()}:bn_fold_grad", out_shape=lambda dfolded, dbias, w, gamma, *rest: (w, gamma),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 2, func_type="aot")


@functools.lru_cache(maxsize=None)
def fold_op() -> ops.Custom:
    """BatchNorm on its moving statistics folded into the convolution before it, one op per layer:
    (w[C,...], gamma, beta, moving_mean, moving_variance, [eps, momentum]) -> (w * s per row, beta - mean * s),
    s = gamma / sqrt(var + eps), with its bprop (the moving statistics are constants: frozen BatchNorm)."""
    grad = fold_grad_op()

    def bprop(w, gamma, beta, moving_mean, moving_variance, constants, out, dout):
        dw, dgamma = grad(dout[0], dout[1], w, gamma, moving_mean, moving_variance, constants)
        return (dw, dgamma, dout[1], ops.zeros_like(moving_mean), ops.zeros_like(moving_variance),
                ops.zeros_like(constants))

    return ops.Custom(f"{_library()}:bn_fold", out_shape=lambda w, gamma, *rest: (w, gamma),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 2, func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def affine_op(relu6: bool) -> ops.Custom:
    """(x, scale[C], shift[C]) -> x * scale + shift (relu6: clamped to [0, 6]) in one pass, with its bprop
    in one pass too: BatchNorm on its moving statistics (eval mode, or training with frozen BatchNorm)."""
    library = _library()
    name = "affine_relu6" if relu6 else "affine"
    grad = ops.Custom(f"{library}:{name}_grad", out_shape=lambda dy, x, scale, shift: (x, scale, scale),
                      out_dtype=lambda *dtypes: (dtypes[0],) * 3, func_type="aot")

    def bprop(x, scale, shift, out, dout):
        return grad(dout, x, scale, shift)

    return ops.Custom(f"{library}:{name}", out_shape=lambda x, scale, shift: x, out_dtype=same_dtype,
                      func_type="aot", bprop=bprop)
