"""Our CPU kernels for the MindSpore twin (3x3 and 1x1 convolutions, BatchNorm): numerics, build, fallback, integration."""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.core.files import default_file_mode
from tests.helpers import official_ms_names

# (batch, channels, height, width, stride): odd and even sizes, 1x1 planes, C from 1 to 960.
DEPTHWISE_SHAPES = [
    (1, 1, 1, 1, 1), (3, 1, 1, 1, 2), (1, 3, 7, 9, 1), (3, 5, 9, 7, 2), (1, 16, 12, 10, 2),
    (3, 32, 15, 8, 1), (1, 144, 11, 11, 2), (3, 384, 6, 5, 1), (1, 960, 7, 7, 1), (3, 960, 4, 3, 2),
]
# (batch, in, out, height, width, stride): the stem and other dense 3x3 layers.
DENSE_SHAPES = [(1, 3, 32, 9, 11, 2), (3, 3, 16, 16, 16, 2), (3, 5, 7, 8, 5, 1), (1, 1, 1, 1, 1, 2)]
RELATIVE_TOLERANCE = 1e-4  # max abs diff / max abs of the reference (summation order differs)


KERNEL_TEST_THREADS = 2  # the pool's paths and the forms each shape is meant for, whatever the worker's CPU share


@pytest.fixture()
def fast_conv(ms_pynative, monkeypatch):
    """The kernels on KERNEL_TEST_THREADS threads: tests/conftest.py gives each xdist worker one thread on 2 cores,
    which would send every small batch to the channel-blocked form and skip the pool's threads."""
    from ms_impl import fast_conv as module
    from ms_impl.fast_conv.build import set_library_threads

    monkeypatch.setenv("MBV2_KERNEL_THREADS", str(KERNEL_TEST_THREADS))
    if not module.resolve_fast_conv("auto"):
        pytest.fail("the kernels must build on the test machine (a C++ compiler is part of the test setup)")
    library = module.kernel_library()
    set_library_threads(library, KERNEL_TEST_THREADS)
    yield module
    monkeypatch.undo()
    set_library_threads(library, module.kernel_threads())


def _ms_gradients(layer, x: np.ndarray, upstream: np.ndarray):
    """(y, dL/dx, dL/dw) of L = sum(layer(x) * upstream)."""
    import mindspore as ms
    from mindspore import nn

    class Objective(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def construct(self, inputs, weights_of_upstream):
            return (self.layer(inputs) * weights_of_upstream).sum()

    grad = ms.grad(Objective(), grad_position=0, weights=layer.trainable_params())
    dx, (dw,) = grad(ms.Tensor(x), ms.Tensor(upstream))
    return layer(ms.Tensor(x)).asnumpy(), dx.asnumpy(), dw.asnumpy()


def _torch_gradients(weight: np.ndarray, x: np.ndarray, upstream: np.ndarray, stride: int, groups: int):
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(weight).requires_grad_(True)
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=weight.shape[-1] // 2, groups=groups)
    (y * torch.from_numpy(upstream)).sum().backward()
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _on_grid(values, step: float) -> np.ndarray:
    """`values` rounded to multiples of `step` (a power of 2), as float32.

    Inputs on such grids make a convolution's pre-activations exact in float32 whatever the summation order (our
    kernels, oneDNN's on any CPU); an odd multiple of a finer step added to the bias keeps every pre-activation off
    ReLU6's kinks (0, 6) by that step. A pre-activation within float32 rounding of a kink is clipped by one
    implementation and not the other on some CPU, and that one element moves a gradient by percents (a normal
    draw of the 112x112 expansion case had one 1.5e-6 from a kink)."""
    return (np.round(np.asarray(values, np.float64) / step) * step).astype(np.float32)


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    scale = max(float(np.abs(want).max()), 1e-12)
    worst = float(np.abs(got - want).max()) / scale
    assert worst <= RELATIVE_TOLERANCE, f"{what}: max abs diff {worst:.2e} of the output scale"


def _torch_bias_relu6(weight, bias, x, upstream, stride, groups, relu6=True):
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(weight).requires_grad_(True)
    bt = torch.from_numpy(bias).requires_grad_(True)
    y = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=weight.shape[-1] // 2, groups=groups)
    y = torch.nn.functional.relu6(y) if relu6 else y
    (y * torch.from_numpy(upstream)).sum().backward()
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


def _fast_layer(fast_conv, cin: int, cout: int, groups: int, stride: int, size: int):
    if size == 1:
        return fast_conv.FastConv1x1(cin, cout, "HeNormal")
    return fast_conv.FastConv3x3(cin, cout, stride, groups, "HeNormal")


def _check_bias_relu6(fast_conv, cin: int, cout: int, groups: int, n: int, h: int, w: int, stride: int,
                      size: int = 3, relu6: bool = True):
    """The inference kernel relu6(conv(x, w) + b) (or conv(x, w) + b) and its gradients (x, w, b) against torch."""
    import mindspore as ms

    rng = np.random.default_rng(cin * 7 + h + stride)
    layer = _fast_layer(fast_conv, cin, cout, groups, stride, size)
    fused = layer.bias_relu6 if relu6 else layer.with_bias
    x = _on_grid(rng.standard_normal((n, cin, h, w)) * 3, 1 / 4)  # outputs on both sides of 0 and 6
    weight = _on_grid(layer.weight.asnumpy(), 1 / 16)
    bias = _on_grid(rng.standard_normal(cout), 1 / 8) + np.float32(1 / 128)  # pre-activations off the kinks (_on_grid)
    upstream = rng.standard_normal((n, cout, (h - 1) // stride + 1, (w - 1) // stride + 1), dtype=np.float32)

    def objective(inputs, kernel, shift):
        return (fused(inputs, kernel, shift) * ms.Tensor(upstream)).sum()

    args = (ms.Tensor(x), ms.Tensor(weight), ms.Tensor(bias))
    grads = ms.grad(objective, grad_position=(0, 1, 2))(*args)
    got = (fused(*args).asnumpy(), *(g.asnumpy() for g in grads))
    want = _torch_bias_relu6(weight, bias, x, upstream, stride, groups, relu6)
    for name, mine, ref in zip(("forward", "grad input", "grad weight", "grad bias"), got, want):
        _assert_close(mine, ref, f"bias+relu6 {name} vs torch")


def _check_against_references(fast_conv, cin: int, cout: int, groups: int, n: int, h: int, w: int, stride: int,
                              size: int = 3):
    from mindspore import nn

    rng = np.random.default_rng(cin * 1000 + h * 10 + w + stride)
    fast = _fast_layer(fast_conv, cin, cout, groups, stride, size)
    reference = nn.Conv2d(cin, cout, size, stride, pad_mode="pad", padding=size // 2, group=groups, has_bias=False)
    reference.weight.set_data(fast.weight.data.copy())
    x = rng.standard_normal((n, cin, h, w), dtype=np.float32)
    out_shape = (n, cout, (h - 1) // stride + 1, (w - 1) // stride + 1)
    upstream = rng.standard_normal(out_shape, dtype=np.float32)
    got = _ms_gradients(fast, x, upstream)
    assert got[0].shape == out_shape
    from_ms = _ms_gradients(reference, x, upstream)
    from_torch = _torch_gradients(fast.weight.asnumpy(), x, upstream, stride, groups)
    for name, mine, ms_ref, pt_ref in zip(("forward", "grad input", "grad weight"), got, from_ms, from_torch):
        _assert_close(mine, ms_ref, f"{name} vs nn.Conv2d")
        _assert_close(mine, pt_ref, f"{name} vs torch")


@pytest.mark.parametrize("n,c,h,w,stride", DEPTHWISE_SHAPES)
def test_depthwise_matches_conv2d_and_torch(fast_conv, n, c, h, w, stride):
    _check_against_references(fast_conv, c, c, c, n, h, w, stride)


@pytest.mark.parametrize("n,cin,cout,h,w,stride", DENSE_SHAPES)
def test_dense_matches_conv2d_and_torch(fast_conv, n, cin, cout, h, w, stride):
    _check_against_references(fast_conv, cin, cout, 1, n, h, w, stride)


@pytest.mark.parametrize("n,c,h,w,stride", [(1, 1, 1, 1, 1), (3, 5, 9, 7, 2), (1, 16, 12, 10, 2), (3, 32, 15, 8, 1)])
def test_depthwise_bias_relu6_matches_torch(fast_conv, n, c, h, w, stride):
    _check_bias_relu6(fast_conv, c, c, c, n, h, w, stride)


# Batch 1, one channel (a FastConv3x3 of the dense kind, whose depthwise form this is), odd sizes, stride 1
# and 2, and planes of more than 256 values (the masked sums run in pieces of 256) with a partial last piece.
@pytest.mark.parametrize("n,c,h,w,stride", [(1, 1, 1, 1, 1), (1, 2, 1, 1, 1), (3, 5, 9, 7, 2), (2, 16, 12, 10, 2),
                                             (3, 7, 15, 8, 1), (1, 4, 1, 3, 2), (2, 3, 23, 19, 2), (1, 2, 17, 17, 1)])
def test_depthwise_with_relu6_input_matches_torch_and_the_separate_kernels(fast_conv, n, c, h, w, stride):
    """relu6(dwconv(relu6(z + a), w) + b), the expand layer's bias and ReLU6 moved into the depthwise
    kernels: output and the four gradients (z, a, w, b) against torch autograd, and bit for bit the
    results of the separate kernels (1x1 epilogue, then dw_bias_relu6_grad and bias_relu6_grad)."""
    import ctypes

    import mindspore as ms

    rng = np.random.default_rng(c * 11 + h + stride)
    layer = fast_conv.FastConv3x3(c, c, stride, c, "HeNormal")
    z = _on_grid(rng.standard_normal((n, c, h, w)) * 3 + 2, 1 / 8)  # relu6(z + a) on both sides of 0 and 6
    a = _on_grid(rng.uniform(-1.0, 2.0, c), 1 / 8) + np.float32(1 / 64)  # both pre-activations off the kinks (_on_grid)
    weight = _on_grid(layer.weight.asnumpy(), 1 / 16)
    bias = _on_grid(rng.uniform(-1.0, 3.0, c), 1 / 8) + np.float32(1 / 2048)
    out_shape = (n, c, (h - 1) // stride + 1, (w - 1) // stride + 1)
    upstream = rng.standard_normal(out_shape).astype(np.float32)

    def objective(*inputs):
        return (layer.relu6_input_bias_relu6(*inputs) * ms.Tensor(upstream)).sum()

    args = tuple(ms.Tensor(v) for v in (z, a, weight, bias))
    got = (layer.relu6_input_bias_relu6(*args).asnumpy(),
           *(g.asnumpy() for g in ms.grad(objective, grad_position=(0, 1, 2, 3))(*args)))
    tensors = [torch.from_numpy(v).requires_grad_(True) for v in (z, a, weight, bias)]
    x = torch.nn.functional.relu6(tensors[0] + tensors[1][None, :, None, None])
    y = torch.nn.functional.relu6(torch.nn.functional.conv2d(x, tensors[2], tensors[3], stride=stride, padding=1,
                                                             groups=c))
    (y * torch.from_numpy(upstream)).sum().backward()
    want = (y.detach().numpy(), *(t.grad.numpy() for t in tensors))
    for name, mine, ref in zip(("forward", "grad z", "grad input bias", "grad weight", "grad bias"), got, want):
        _assert_close(mine, ref, f"relu6-input depthwise {name} vs torch")
    library, call = ctypes.CDLL(str(fast_conv.kernel_library())), fast_conv.call_entry_point
    x = np.clip(z + a[None, :, None, None], 0.0, 6.0).astype(np.float32)  # the 1x1 kernel's epilogue
    status, separate_y = call(library, f"dw_forward_bias_relu6_s{stride}", [x, weight, bias, np.zeros(out_shape)])
    status_dw, (dx, dw, db) = call(library, f"dw_bias_relu6_grad_s{stride}",
                                   [upstream, separate_y, x, weight, np.zeros(x.shape), np.zeros(weight.shape),
                                    np.zeros(c)], outputs=3)
    status_bias, (dz, da) = call(library, "bias_relu6_grad", [dx, x, np.zeros(x.shape), np.zeros(c)], outputs=2)
    assert status == status_dw == status_bias == 0
    for name, mine, separate in zip(("forward", "grad z", "grad input bias", "grad weight", "grad bias"), got,
                                    (separate_y, dz, da, dw, db)):
        np.testing.assert_array_equal(mine, separate, err_msg=name)


# (batch, in, expanded, height, width, stride): odd sizes, batch 1, 1x1 planes, channels not a multiple of a
# register panel, and the network's own first block (96 channels at 112x112: several bands of rows per image);
# widths a whole number of vectors (16, 32, 112: the expansion stored straight into the padded rows) and not.
EXPANSION_SHAPES = [(1, 3, 7, 1, 1, 1), (1, 3, 7, 1, 1, 2), (2, 5, 13, 7, 9, 1), (3, 4, 30, 9, 7, 2),
                    (1, 8, 6, 17, 17, 2), (2, 16, 96, 23, 19, 1), (1, 24, 144, 15, 16, 2), (1, 16, 96, 112, 112, 2),
                    (2, 8, 40, 30, 32, 1)]


@pytest.mark.parametrize("n,cin,hidden,h,w,stride", EXPANSION_SHAPES)
def test_expansion_and_depthwise_in_one_pass_match_torch_and_the_two_kernels(fast_conv, n, cin, hidden, h, w, stride):
    """relu6(dwconv(relu6(conv1x1(x, we) + be), wd) + bd) in one kernel (inference): against torch's two
    convolutions, and bit for bit the 1x1 kernel's output fed to the depthwise kernel; its gradients (the
    expansion recomputed) against torch autograd."""
    import ctypes

    import mindspore as ms

    rng = np.random.default_rng(hidden * 7 + h + stride)
    layer = fast_conv.FastConv3x3(hidden, hidden, stride, hidden, "HeNormal")
    # both pre-activations exact, odd multiples of 1/64 (expansion) and 1/2048 (depthwise): off the kinks
    x = _on_grid(rng.standard_normal((n, cin, h, w)), 1 / 4)
    expand_weight = _on_grid(rng.standard_normal((hidden, cin, 1, 1)) * 3 / np.sqrt(cin), 1 / 8)
    expand_bias = _on_grid(rng.uniform(-1.0, 3.0, hidden), 1 / 8) + np.float32(1 / 64)  # relu6 on both sides of 0 and 6
    weight = _on_grid(rng.standard_normal((hidden, 1, 3, 3)) * np.sqrt(2 / 9), 1 / 16)  # HeNormal's scale
    bias = _on_grid(rng.uniform(-1.0, 3.0, hidden), 1 / 8) + np.float32(1 / 2048)
    values = (x, expand_weight, expand_bias, weight, bias)
    args = tuple(ms.Tensor(v) for v in values)
    got = layer.after_expansion(*args).asnumpy()
    upstream = rng.standard_normal(got.shape).astype(np.float32)
    grads = ms.grad(lambda *a: (layer.after_expansion(*a) * ms.Tensor(upstream)).sum(), grad_position=(0, 1, 2, 3, 4))(*args)
    tensors = [torch.from_numpy(v).requires_grad_(True) for v in values]
    hidden_t = torch.nn.functional.relu6(torch.nn.functional.conv2d(tensors[0], tensors[1], tensors[2]))
    y = torch.nn.functional.relu6(torch.nn.functional.conv2d(hidden_t, tensors[3], tensors[4], stride=stride, padding=1,
                                                             groups=hidden))
    (y * torch.from_numpy(upstream)).sum().backward()
    _assert_close(got, y.detach().numpy(), "expansion + depthwise vs torch")
    for name, mine, tensor in zip(("x", "expand weight", "expand bias", "weight", "bias"), grads, tensors):
        _assert_close(mine.asnumpy(), tensor.grad.numpy(), f"expansion + depthwise: gradient of {name} vs torch")
    library, call = ctypes.CDLL(str(fast_conv.kernel_library())), fast_conv.call_entry_point
    status_pw, expanded = call(library, "pw_forward_bias_relu6_s1", [x, expand_weight, expand_bias, np.zeros((n, hidden, h, w))])
    status_dw, separate = call(library, f"dw_forward_bias_relu6_s{stride}", [expanded, weight, bias, np.zeros(got.shape)])
    status, direct = call(library, f"pw_dw_forward_s{stride}", [*values, np.zeros(got.shape)])
    assert status == status_pw == status_dw == 0
    np.testing.assert_array_equal(got, separate)
    np.testing.assert_array_equal(direct, separate)
    wrong = (n, hidden, got.shape[2] + 1, got.shape[3])  # an output of another size is refused, nothing written
    for arrays in ([*values, np.zeros(wrong)], [x, expand_weight, expand_bias, weight, bias[:-1], np.zeros(got.shape)]):
        status, untouched = call(library, f"pw_dw_forward_s{stride}", arrays)
        assert status == 1 and not untouched.any()


# (batch, in, expanded, out, height, width, stride): residual blocks (in == out, stride 1) and plain ones; batch 1
# (the rows split into bands over the threads), 1x1 planes, odd sizes, channel counts off the register panels,
# a band taller than the rows a step holds (56x56 with 144 channels: several steps per band).
# hidden None: a block without an expansion (its depthwise layer reads x; MobileNetV2's block 1 at 112x112).
BLOCK_SHAPES = [(1, 3, 7, 3, 1, 1, 1), (1, 3, 7, 5, 1, 1, 2), (2, 5, 13, 5, 7, 9, 1), (3, 4, 30, 7, 9, 7, 2),
                (1, 8, 20, 8, 17, 15, 1), (2, 16, 96, 24, 23, 19, 2), (1, 24, 144, 24, 56, 56, 1), (3, 12, 40, 11, 6, 5, 1),
                (2, 8, None, 5, 9, 7, 1), (3, 6, None, 6, 5, 5, 1), (2, 7, None, 4, 9, 8, 2), (1, 32, None, 16, 112, 112, 1)]


@pytest.mark.parametrize("n,cin,hidden,cout,h,w,stride", BLOCK_SHAPES)
def test_whole_block_in_one_pass_matches_torch_and_the_two_passes(fast_conv, n, cin, hidden, cout, h, w, stride):
    """conv1x1(relu6(dwconv(relu6(conv1x1(x, we) + be), wd) + bd), wp) + bp (+ x in a residual block) in one
    kernel (inference), or without the expansion: against torch's convolutions, bit for bit the layers'
    own kernels one after the other, and its gradients (the hidden tensors recomputed) against torch
    autograd. A call with a wrong shape is refused and writes nothing."""
    import ctypes

    import mindspore as ms

    from ms_impl.fast_conv.ops import inverted_residual_op

    expand, residual = hidden is not None, stride == 1 and cin == cout
    hidden = hidden or cin
    rng = np.random.default_rng(hidden * 11 + h + stride + cout)
    # pre-activations exact and off ReLU6's kinks, as in the expansion + depthwise test
    x = _on_grid(rng.standard_normal((n, cin, h, w)), 1 / 4)
    expand_weight = _on_grid(rng.standard_normal((hidden, cin, 1, 1)) * 3 / np.sqrt(cin), 1 / 8)
    expand_bias = _on_grid(rng.uniform(-1.0, 3.0, hidden), 1 / 8) + np.float32(1 / 64)
    weight = _on_grid(rng.standard_normal((hidden, 1, 3, 3)) * np.sqrt(2 / 9), 1 / 16)
    bias = _on_grid(rng.uniform(-1.0, 3.0, hidden), 1 / 8) + np.float32(1 / 2048)
    projection_weight = (rng.standard_normal((cout, hidden, 1, 1)) / np.sqrt(hidden)).astype(np.float32)
    projection_bias = rng.uniform(-0.5, 0.5, cout).astype(np.float32)
    layers = (expand_weight, expand_bias, weight, bias) if expand else (weight, bias)
    values = (x, *layers, projection_weight, projection_bias)
    op = inverted_residual_op(stride, residual, expand)
    args = tuple(ms.Tensor(v) for v in values)
    got = op(*args).asnumpy()
    upstream = rng.standard_normal(got.shape).astype(np.float32)
    grads = ms.grad(lambda *a: (op(*a) * ms.Tensor(upstream)).sum(), grad_position=tuple(range(len(values))))(*args)
    tensors = [torch.from_numpy(v).requires_grad_(True) for v in values]
    conv = torch.nn.functional.conv2d
    hidden_t = torch.nn.functional.relu6(conv(tensors[0], tensors[1], tensors[2])) if expand else tensors[0]
    dw_weight, dw_bias = tensors[-4], tensors[-3]
    hidden_t = torch.nn.functional.relu6(conv(hidden_t, dw_weight, dw_bias, stride=stride, padding=1, groups=hidden))
    y = conv(hidden_t, tensors[-2], tensors[-1]) + (tensors[0] if residual else 0)
    (y * torch.from_numpy(upstream)).sum().backward()
    _assert_close(got, y.detach().numpy(), "whole block vs torch")
    names = ("x", "expand weight", "expand bias")[:3 if expand else 1] + ("weight", "bias", "projection weight",
                                                                        "projection bias")
    for name, mine, tensor in zip(names, grads, tensors):
        _assert_close(mine.asnumpy(), tensor.grad.numpy(), f"whole block: gradient of {name} vs torch")
    library, call = ctypes.CDLL(str(fast_conv.kernel_library())), fast_conv.call_entry_point
    mid_shape = (n, hidden) + got.shape[2:]
    if expand:
        status_hidden, mid = call(library, f"pw_dw_forward_s{stride}", [x, *layers, np.zeros(mid_shape)])
    else:
        status_hidden, mid = call(library, f"dw_forward_bias_relu6_s{stride}", [x, *layers, np.zeros(mid_shape)])
    projection = (projection_weight, projection_bias)
    if residual:
        status_projection, separate = call(library, "pw_forward_bias_add_s1", [mid, *projection, x, np.zeros(got.shape)])
    else:
        status_projection, separate = call(library, "pw_forward_bias_s1", [mid, *projection, np.zeros(got.shape)])
    prefix = "block_forward" if expand else "dw_block_forward"
    name = f"{prefix}_residual_s1" if residual else f"{prefix}_s{stride}"
    status, direct = call(library, name, [*values, np.zeros(got.shape)])
    assert status == status_hidden == status_projection == 0
    np.testing.assert_array_equal(got, separate)
    np.testing.assert_array_equal(direct, separate)
    wrong = (n, cout, got.shape[2] + 1, got.shape[3])
    empty = (n, cin, 0, w)  # no rows: refused, not a division by zero
    for entry, arrays in ((name, [np.zeros(empty), *values[1:], np.zeros((n, cout, 0, got.shape[3]))]),
                          (name, [*values, np.zeros(wrong)]),  # an output of another size
                          (name, [*values[:-1], projection_bias[:-1], np.zeros(got.shape)]),  # a short bias
                          (name, [*values[:-2], projection_weight[:, :-1], projection_bias, np.zeros(got.shape)]),
                          (f"{prefix}_residual_s1", [x, *layers, np.zeros((cin + 1, hidden, 1, 1)),  # out != in
                                                     np.zeros(cin + 1), np.zeros((n, cin + 1) + got.shape[2:])])):
        status, untouched = call(library, entry, arrays)
        assert status == 1 and not untouched.any(), entry


# (batch, in, expanded, out, height, width, stride): blocks whose output planes are small enough for the
# channel-blocked form (at most 28x28): residual and plain, stride 1 and 2, expanded channels off the NR-wide
# channel groups and the register panels, 1x1 and odd planes, 14x14 and 28x28 exactly; more output channels than
# pixels (the projection's loop over output tiles outside) and fewer.
BLOCKED_SHAPES = [(2, 16, 40, 16, 7, 7, 1), (3, 12, 37, 20, 9, 11, 2), (2, 8, 33, 8, 14, 14, 1), (4, 6, 17, 5, 1, 1, 1),
                  (2, 5, 96, 7, 27, 28, 2), (3, 9, 50, 9, 5, 3, 1), (2, 6, 24, 8, 55, 56, 2), (3, 8, 24, 40, 5, 5, 1)]


@pytest.mark.parametrize("n,cin,hidden,cout,h,w,stride", BLOCKED_SHAPES)
def test_whole_block_channel_blocked_form_matches_torch_and_the_layer_kernels(fast_conv, n, cin, hidden, cout, h, w, stride):
    """The whole-block pass in its channel-blocked form (small planes, a batch of at least twice the threads:
    one thread here): against torch's three convolutions, and bit for bit the expansion + depthwise pass
    followed by the projection kernel, as its NCHW form is."""
    import ctypes

    residual = stride == 1 and cin == cout
    rng = np.random.default_rng(hidden * 13 + h + stride + cout)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    expand_weight = (rng.standard_normal((hidden, cin, 1, 1)) * 2 / np.sqrt(cin)).astype(np.float32)
    expand_bias = rng.uniform(-1.0, 3.0, hidden).astype(np.float32)
    weight = (rng.standard_normal((hidden, 1, 3, 3)) * np.sqrt(2 / 9)).astype(np.float32)
    bias = rng.uniform(-1.0, 3.0, hidden).astype(np.float32)
    projection_weight = (rng.standard_normal((cout, hidden, 1, 1)) / np.sqrt(hidden)).astype(np.float32)
    projection_bias = rng.uniform(-0.5, 0.5, cout).astype(np.float32)
    layers = (expand_weight, expand_bias, weight, bias)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    library, call = ctypes.CDLL(str(fast_conv.kernel_library())), fast_conv.call_entry_point
    name = "block_forward_residual_s1" if residual else f"block_forward_s{stride}"
    library.mbv2_set_threads(1)
    try:
        status, blocked = call(library, name, [x, *layers, projection_weight, projection_bias, np.zeros((n, cout, ho, wo))])
        status_hidden, mid = call(library, f"pw_dw_forward_s{stride}", [x, *layers, np.zeros((n, hidden, ho, wo))])
    finally:
        library.mbv2_set_threads(fast_conv.kernel_threads())
    projection = (projection_weight, projection_bias)
    if residual:
        status_projection, separate = call(library, "pw_forward_bias_add_s1", [mid, *projection, x, np.zeros(blocked.shape)])
    else:
        status_projection, separate = call(library, "pw_forward_bias_s1", [mid, *projection, np.zeros(blocked.shape)])
    assert status == status_hidden == status_projection == 0
    np.testing.assert_array_equal(blocked, separate)
    conv, relu6 = torch.nn.functional.conv2d, torch.nn.functional.relu6
    tensors = [torch.from_numpy(v) for v in (x, *layers, *projection)]
    hidden_t = relu6(conv(relu6(conv(tensors[0], tensors[1], tensors[2])), tensors[3], tensors[4], stride=stride,
                          padding=1, groups=hidden))
    want = conv(hidden_t, tensors[5], tensors[6]) + (tensors[0] if residual else 0)
    _assert_close(blocked, want.numpy(), "channel-blocked whole block vs torch")


# (batch, in, expanded, out, height, width, stride): a plain stride-2 block, a residual one (channel-blocked with a
# batch of 4), blocks without an expansion (residual and stride 2).
BN_BLOCK_SHAPES = [(2, 5, 12, 7, 9, 8, 2), (4, 6, 20, 6, 7, 7, 1), (2, 8, None, 8, 9, 7, 1), (1, 4, None, 6, 8, 9, 2)]


@pytest.mark.parametrize("n,cin,hidden,cout,h,w,stride", BN_BLOCK_SHAPES)
def test_whole_block_folding_its_batchnorms_matches_the_folds_then_the_block_and_torch(fast_conv, n, cin, hidden, cout,
                                                                                       h, w, stride):
    """The whole-block op that folds each layer's BatchNorm (moving statistics) inside its one kernel call: bit for
    bit fold_op on each layer then the block op, in the output and in every gradient; against torch (conv, eval-mode
    batch_norm, ReLU6) in the output and the gradients of x, the weights, gamma and beta; none for the moving
    statistics. A call with a wrong shape is refused and writes nothing."""
    import ctypes

    import mindspore as ms

    from ms_impl.fast_conv.ops import fold_op, inverted_residual_bn_op, inverted_residual_op

    expand, residual = hidden is not None, stride == 1 and cin == cout
    hidden = hidden or cin
    rng = np.random.default_rng(hidden * 17 + h + stride + cout)
    eps = 2.0 ** -10  # var + eps of 1/4, 1 or 4 and gammas on a grid: exact scales, exact pre-activations

    def layer(out_channels, weight_shape, fine):
        weight = _on_grid(rng.standard_normal(weight_shape) * 2 / np.sqrt(np.prod(weight_shape[1:])), 1 / 8)
        gamma = _on_grid(rng.uniform(0.5, 1.5, out_channels), 1 / 4)
        beta = _on_grid(rng.uniform(-1.0, 3.0, out_channels), 1 / 8) + np.float32(fine)  # off ReLU6's kinks
        mean = _on_grid(rng.uniform(-0.5, 0.5, out_channels), 1 / 8)
        variance = (rng.choice([0.25, 1.0, 4.0], out_channels) - eps).astype(np.float32)
        return [weight, gamma, beta, mean, variance, np.array([eps, 0.1], np.float32)]

    layers = ([layer(hidden, (hidden, cin, 1, 1), 1 / 64)] if expand else []) + \
        [layer(hidden, (hidden, 1, 3, 3), 1 / 2048), layer(cout, (cout, hidden, 1, 1), 0)]
    values = [_on_grid(rng.standard_normal((n, cin, h, w)), 1 / 4)] + [v for group in layers for v in group]
    args = tuple(ms.Tensor(v) for v in values)
    op, fold, block = inverted_residual_bn_op(stride, residual, expand), fold_op(), inverted_residual_op(stride, residual, expand)

    def folded_then_block(x, *raw):
        folded = []
        for first in range(0, len(raw), 6):
            folded += list(fold(*raw[first:first + 6]))
        return block(x, *folded)

    got, want = op(*args).asnumpy(), folded_then_block(*args).asnumpy()
    np.testing.assert_array_equal(got, want)
    upstream = ms.Tensor(rng.standard_normal(got.shape).astype(np.float32))
    positions = tuple(range(len(values)))
    grads = ms.grad(lambda *a: (op(*a) * upstream).sum(), grad_position=positions)(*args)
    reference = ms.grad(lambda *a: (folded_then_block(*a) * upstream).sum(), grad_position=positions)(*args)
    for index, (mine, theirs) in enumerate(zip(grads, reference)):
        np.testing.assert_array_equal(mine.asnumpy(), theirs.asnumpy(), err_msg=f"gradient of input {index}")
    for group in range(len(layers)):  # the moving statistics and the constants get none
        for offset in (3, 4, 5):
            assert not grads[1 + 6 * group + offset].asnumpy().any()
    # x, and each layer's weight, gamma and beta, take gradients; the moving statistics and constants none
    differentiable = [index == 0 or (index - 1) % 6 < 3 for index in range(len(values))]
    tensors = [torch.from_numpy(v).requires_grad_(wanted) for v, wanted in zip(values, differentiable)]
    conv, relu6 = torch.nn.functional.conv2d, torch.nn.functional.relu6

    def batch_norm(z, first):
        return torch.nn.functional.batch_norm(z, tensors[first + 3], tensors[first + 4], tensors[first + 1],
                                              tensors[first + 2], training=False, eps=eps)

    hidden_t = relu6(batch_norm(conv(tensors[0], tensors[1]), 1)) if expand else tensors[0]
    first = 7 if expand else 1
    hidden_t = relu6(batch_norm(conv(hidden_t, tensors[first], stride=stride, padding=1, groups=hidden), first))
    y = batch_norm(conv(hidden_t, tensors[first + 6]), first + 6) + (tensors[0] if residual else 0)
    (y * torch.from_numpy(upstream.asnumpy())).sum().backward()
    _assert_close(got, y.detach().numpy(), "block folding its BatchNorms vs torch")
    for index, (mine, tensor) in enumerate(zip(grads, tensors)):
        if differentiable[index]:
            _assert_close(mine.asnumpy(), tensor.grad.numpy(), f"gradient of input {index} vs torch")
    library, call = ctypes.CDLL(str(fast_conv.kernel_library())), fast_conv.call_entry_point
    name = ("block_forward_bn" if expand else "dw_block_forward_bn") + ("_residual_s1" if residual else f"_s{stride}")
    status, direct = call(library, name, [*values, np.zeros(got.shape)])
    assert status == 0
    np.testing.assert_array_equal(direct, got)
    short_gamma = values[:2] + [values[2][:-1]] + values[3:]
    wrong_constants = values[:-1] + [np.zeros(3, np.float32)]
    for arrays in ([*short_gamma, np.zeros(got.shape)], [*wrong_constants, np.zeros(got.shape)],
                   [*values, np.zeros((n, cout + 1) + got.shape[2:])]):
        status, untouched = call(library, name, arrays)
        assert status == 1 and not untouched.any()


@pytest.mark.parametrize("n,cin,cout,h,w,stride", [(1, 3, 32, 9, 11, 2), (3, 5, 7, 8, 5, 1)])
def test_dense_bias_relu6_matches_torch(fast_conv, n, cin, cout, h, w, stride):
    _check_bias_relu6(fast_conv, cin, cout, 1, n, h, w, stride)


# (batch, in, out, height, width): 1x1 stride 1; partial register tiles in rows (out % 6, % 12) and
# pixels (tiles that span two images), a single pixel, batch 1, and MobileNetV2's widest layer. The
# last three have at least 784 pixels per image (the weight gradient's dot-product form), with partial
# dot tiles in rows, columns and pixels.
POINTWISE_SHAPES = [(1, 1, 1, 1, 1), (1, 3, 5, 7, 9), (3, 16, 96, 7, 7), (2, 33, 13, 5, 3), (1, 24, 144, 14, 14),
                    (3, 320, 1280, 2, 3), (2, 7, 40, 17, 1), (2, 7, 10, 29, 31), (1, 16, 96, 28, 28), (2, 1, 2, 1, 900)]


@pytest.mark.parametrize("n,cin,cout,h,w", POINTWISE_SHAPES)
def test_pointwise_matches_conv2d_and_torch(fast_conv, n, cin, cout, h, w):
    _check_against_references(fast_conv, cin, cout, 1, n, h, w, 1, size=1)


@pytest.mark.parametrize("relu6", (True, False), ids=("bias_relu6", "bias"))
@pytest.mark.parametrize("n,cin,cout,h,w", [(1, 3, 5, 7, 9), (3, 33, 13, 5, 3), (2, 5, 6, 30, 27)])
def test_pointwise_bias_and_relu6_match_torch(fast_conv, n, cin, cout, h, w, relu6):
    _check_bias_relu6(fast_conv, cin, cout, 1, n, h, w, 1, size=1, relu6=relu6)


@pytest.mark.parametrize("n,cin,cout,h,w", [(1, 3, 5, 7, 9), (3, 33, 13, 5, 3), (2, 16, 24, 14, 14), (1, 8, 8, 1, 1)])
def test_projection_with_the_residual_in_its_epilogue_matches_torch_and_the_separate_add(fast_conv, n, cin, cout, h, w):
    """(conv1x1(x, w) + b) + r in one pass (a residual block's projection): the bias form then an add, bit for bit,
    and against torch with the gradients of x, w, b and r."""
    import mindspore as ms

    rng = np.random.default_rng(n * 100 + cin + h)
    layer = fast_conv.FastConv1x1(cin, cout, "HeNormal")
    x = rng.standard_normal((n, cin, h, w), dtype=np.float32)
    weight, bias = layer.weight.asnumpy(), rng.standard_normal(cout, dtype=np.float32)
    residual = rng.standard_normal((n, cout, h, w), dtype=np.float32)
    upstream = rng.standard_normal((n, cout, h, w), dtype=np.float32)
    args = (ms.Tensor(x), ms.Tensor(weight), ms.Tensor(bias), ms.Tensor(residual))
    fused = layer.with_bias_add(*args).asnumpy()
    np.testing.assert_array_equal(fused, layer.with_bias(*args[:3]).asnumpy() + residual)

    def objective(inputs, kernel, shift, skip):
        return (layer.with_bias_add(inputs, kernel, shift, skip) * ms.Tensor(upstream)).sum()

    grads = [g.asnumpy() for g in ms.grad(objective, grad_position=(0, 1, 2, 3))(*args)]
    xt, wt, bt, rt = (torch.from_numpy(a).requires_grad_(True) for a in (x, weight, bias, residual))
    yt = torch.nn.functional.conv2d(xt, wt, bt) + rt
    (yt * torch.from_numpy(upstream)).sum().backward()
    for name, mine, ref in zip(("forward", "grad input", "grad weight", "grad bias", "grad residual"),
                               (fused, *grads), (yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(),
                                                 bt.grad.numpy(), rt.grad.numpy())):
        _assert_close(mine, ref, f"projection + residual {name} vs torch")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 1280, 7, 7), (1, 5, 23, 19)])
def test_global_average_pool_kernel_matches_torch(fast_conv, shape):
    """The head's pooling on our kernel: forward and gradient against torch, odd planes and batch 1."""
    import mindspore as ms

    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    upstream = rng.standard_normal(shape[:2], dtype=np.float32)
    pool = fast_conv.global_average_pool("on")
    assert isinstance(pool, fast_conv.FastGlobalAveragePool)
    got = pool(ms.Tensor(x)).asnumpy()
    grad = ms.grad(lambda inputs: (pool(inputs) * ms.Tensor(upstream)).sum())(ms.Tensor(x)).asnumpy()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = xt.mean((2, 3))
    (yt * torch.from_numpy(upstream)).sum().backward()
    _assert_close(got, yt.detach().numpy(), "pool forward vs torch")
    _assert_close(grad, xt.grad.numpy(), "pool gradient vs torch")
    assert not isinstance(fast_conv.global_average_pool("off"), fast_conv.FastGlobalAveragePool)


@pytest.mark.parametrize("n,cin,cout,h,w", [(3, 33, 13, 5, 3), (2, 7, 10, 29, 31)], ids=("packed", "dot"))
def test_pointwise_weight_gradient_does_not_depend_on_the_thread_count(fast_conv, n, cin, cout, h, w):
    """Both forms of the 1x1 weight gradient sum in a fixed order: 1, 2 and 3 threads give the same bits."""
    import ctypes

    library = ctypes.CDLL(str(fast_conv.kernel_library()))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, cin, h, w), dtype=np.float32)
    dy = rng.standard_normal((n, cout, h, w), dtype=np.float32)
    results = []
    try:
        for threads in (1, 2, 3):
            library.mbv2_set_threads(threads)
            status, dw = fast_conv.call_entry_point(library, "pw_grad_weight_s1", [x, dy, np.zeros((cout, cin, 1, 1))])
            assert status == 0
            results.append(dw)
    finally:
        library.mbv2_set_threads(fast_conv.kernel_threads())
    np.testing.assert_allclose(results[0], np.einsum("nmhw,nkhw->mk", dy, x)[:, :, None, None], rtol=1e-4, atol=1e-3)
    assert all(np.array_equal(results[0], other) for other in results[1:])


@pytest.mark.parametrize("width", (0.35, 1.0))
def test_folded_batchnorm_eval_matches_unfolded(fast_conv, width, monkeypatch):
    """Eval mode with our kernels folds BN into the conv (bias + ReLU6 in the kernel; each expanding block in one
    pass): same logits as the unfolded network with MindSpore's own convolutions,
    and the same as before the folding; bit for bit those of the block's kernels run apart."""
    import mindspore as ms

    from ms_impl.fast_conv.blocks import InvertedResidualFusion
    from ms_impl.mobilenetv2 import ConvBNReLU, InvertedResidual, MobileNetV2

    rng = np.random.default_rng(11)
    x = ms.Tensor(rng.standard_normal((2, 3, 64, 64), dtype=np.float32))
    folded = MobileNetV2(num_classes=26, width_mult=width, dropout=0.0, fast_conv="on")
    for name, param in folded.parameters_and_names():
        if name.endswith(("gamma", "beta", "moving_mean", "moving_variance")):
            values = rng.uniform(0.5, 1.5, param.shape) if name.endswith(("gamma", "moving_variance")) \
                else rng.uniform(-0.3, 0.3, param.shape)
            param.set_data(ms.Tensor(values.astype(np.float32)))
    folded.set_train(False)
    # All 35 ConvBNReLU layers (stem, 16 expansions, 17 depthwise, the last 1x1) and the 17 projections.
    assert sum(1 for c in folded.cells_and_names() if isinstance(c[1], ConvBNReLU) and c[1].fold_bn) == 35
    assert sum(1 for c in folded.cells_and_names() if isinstance(c[1], InvertedResidual) and c[1].fold_bn) == 17
    plain = MobileNetV2(num_classes=26, width_mult=width, dropout=0.0, fast_conv="off")
    ms.load_param_into_net(plain, {p.name: ms.Parameter(p.asnumpy(), name=p.name) for p in folded.get_parameters()})
    plain.set_train(False)
    want = plain(x).asnumpy()
    whole, calls = [], []
    original_block = InvertedResidualFusion.whole_block_inference
    monkeypatch.setattr(InvertedResidualFusion, "whole_block_inference",
                        lambda self, *a: whole.append(1) or original_block(self, *a))
    original = fast_conv.FastConv3x3.after_expansion
    monkeypatch.setattr(fast_conv.FastConv3x3, "after_expansion", lambda self, *a: calls.append(1) or original(self, *a))
    got = folded(x).asnumpy()
    assert (len(whole), len(calls)) == (17, 0)  # every block in one pass
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    blocks = [cell for _, cell in folded.cells_and_names() if isinstance(cell, InvertedResidual)]
    for cell in blocks:  # expansion and depthwise in one pass, then the projection: the same logits, bit for bit
        cell.fuse_whole_block_inference = False
    np.testing.assert_array_equal(folded(x).asnumpy(), got)
    assert (len(whole), len(calls)) == (17, 16)  # the 16 expanding blocks: expansion + depthwise in one pass
    for cell in blocks:  # and the kernels of the three layers one after the other
        cell.fuse_expansion_inference = False
    np.testing.assert_array_equal(folded(x).asnumpy(), got)
    assert (len(whole), len(calls)) == (17, 16)
    folded.set_train(True)  # training with batch statistics never folds
    plain.set_train(True)
    train_want, train_got = plain(x).asnumpy(), folded(x).asnumpy()
    assert np.abs(train_got - train_want).max() <= 1e-4 * max(1.0, float(np.abs(train_want).max()))


def test_frozen_batchnorm_training_folds_and_matches_unfolded_gradients(fast_conv, monkeypatch):
    """Training with frozen BatchNorm (the trainer's freeze_bn) folds BN into our kernels as in eval: the
    loss and the gradients of every trainable parameter (conv weights, gamma, beta through the fold,
    the head) match the unfolded network on MindSpore's own kernels; the moving statistics stay."""
    import mindspore as ms
    from mindspore import nn

    from ms_impl.fast_conv.blocks import ConvBNReLUFusion, InvertedResidualFusion
    from ms_impl.mobilenetv2 import ConvBNReLU, InvertedResidual, MobileNetV2

    rng = np.random.default_rng(12)
    x = ms.Tensor(rng.standard_normal((2, 3, 48, 48), dtype=np.float32))
    labels = ms.Tensor(np.array([3, 17], np.int32))
    # Seeded weights: the same 253k ReLU6 inputs every run. The one closest to a kink (0 or 6) is 6.8e-7 away,
    # 84 times its own float32 error (float64 PyTorch twin); over 12 inits the worst gradient differed by 2e-6 to
    # 7e-6 of its scale (limit 1e-4). Were a kink crossed, one clipped element would move a gradient by percents.
    ms.set_seed(0)
    nets = {}
    for mode in ("on", "off"):
        net = MobileNetV2(num_classes=26, width_mult=0.35, dropout=0.0, fast_conv=mode)
        for _, cell in net.cells_and_names():
            if isinstance(cell, nn.BatchNorm2d):
                cell.use_batch_statistics = False
        net.set_train(True)
        nets[mode] = net
    for name, param in nets["on"].parameters_and_names():
        if name.endswith(("gamma", "beta", "moving_mean", "moving_variance")):
            values = rng.uniform(0.5, 1.5, param.shape) if name.endswith(("gamma", "moving_variance")) \
                else rng.uniform(-0.3, 0.3, param.shape)
            param.set_data(ms.Tensor(values.astype(np.float32)))
    ms.load_param_into_net(nets["off"], {p.name: ms.Parameter(p.asnumpy(), name=p.name) for p in nets["on"].get_parameters()})
    folding = [c for _, c in nets["on"].cells_and_names() if isinstance(c, (ConvBNReLU, InvertedResidual)) and c.fold_bn]
    assert len(folding) == 35 + 17
    folded_calls = []
    for cls, method in ((ConvBNReLUFusion, "folded_forward"), (InvertedResidualFusion, "folded_forward"),
                        (InvertedResidualFusion, "expanded_depthwise")):
        def counted(self, inputs, _forward=getattr(cls, method), _method=method):
            folded_calls.append((self, _method))
            return _forward(self, inputs)
        monkeypatch.setattr(cls, method, counted)
    moving_before = {p.name: p.asnumpy().copy() for p in nets["on"].get_parameters() if "moving" in p.name}
    results = {}
    for mode, net in nets.items():
        loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        params = net.trainable_params()
        loss, grads = ms.value_and_grad(lambda inputs, target: loss_fn(net(inputs), target), None, params)(x, labels)
        results[mode] = (float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(params, grads)})
    # The "on" network took the folded path: every block's expand and depthwise layers in one pair of
    # kernels (expanded_depthwise), the other layers each on its own.
    paired = [cell for cell, method in folded_calls if method == "expanded_depthwise"]
    assert len(paired) == 16 and all(cell.has_expand for cell in paired)
    covered = [cell for cell, method in folded_calls if method == "folded_forward"]
    covered += [layer for cell in paired for layer in (cell.conv[0], cell.conv[1])]
    assert sorted(id(c) for c in covered) == sorted(id(c) for c in folding)
    assert abs(results["on"][0] - results["off"][0]) <= 1e-5 * max(1.0, abs(results["off"][0]))
    assert len(results["on"][1]) == len(results["off"][1]) == 3 * 52 + 2  # conv weight, gamma, beta per layer; dense
    for name, want in results["off"][1].items():
        _assert_close(results["on"][1][name], want, f"gradient of {name}")
    for name, value in moving_before.items():
        np.testing.assert_array_equal(nets["on"].parameters_dict()[name].asnumpy(), value)


# (batch, channels, height, width): odd sizes, batch 1 and 2, a 1x1 plane, few values per channel.
BATCH_NORM_SHAPES = [(1, 3, 5, 7), (2, 5, 3, 3), (2, 16, 9, 11), (1, 7, 1, 3), (3, 24, 6, 5)]


def _batch_norm_case(shape, seed: int):
    """Input, upstream gradient, gamma and beta; channel 0 sits exactly at ReLU6's 0 and channel 1 exactly
    at 6 (gamma 0, beta 0 and 6), the other channels have values on both sides of both clamps."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + rng.uniform(-2, 2, (1, c, 1, 1))).astype(np.float32)
    upstream = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(0.5, 3.0, c).astype(np.float32)
    beta = rng.uniform(-1.0, 5.0, c).astype(np.float32)
    gamma[:2], beta[:2] = 0.0, (0.0, 6.0)
    return x, upstream, gamma, beta


def _ms_batch_norm_step(bn, relu6: bool, x, upstream, gamma, beta, train: bool = True):
    """(y, dx, dgamma, dbeta, moving mean, moving variance) of one training step of `bn` (+ ReLU6)."""
    import mindspore as ms
    from mindspore import nn

    from ms_impl.fast_conv import FastBatchNorm2d

    class Objective(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.bn = bn
            self.relu6 = nn.ReLU6()
            self.fused = isinstance(bn, FastBatchNorm2d)
            self.with_relu6 = relu6

        def construct(self, inputs, weights_of_upstream):
            if self.with_relu6 and self.fused:
                y = self.bn.relu6(inputs)
            elif self.with_relu6:
                y = self.relu6(self.bn(inputs))
            else:
                y = self.bn(inputs)
            return (y * weights_of_upstream).sum(), y

    bn.gamma.set_data(ms.Tensor(gamma))
    bn.beta.set_data(ms.Tensor(beta))
    objective = Objective()
    objective.set_train(train)
    (_, y), (dx, (dgamma, dbeta)) = ms.value_and_grad(objective, grad_position=0, weights=bn.trainable_params(),
                                                       has_aux=True)(ms.Tensor(x), ms.Tensor(upstream))
    return (y.asnumpy(), dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy(), bn.moving_mean.asnumpy(),
            bn.moving_variance.asnumpy())


def _torch_batch_norm_step(relu6: bool, x, upstream, gamma, beta):
    bn = torch.nn.BatchNorm2d(x.shape[1], eps=1e-5, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    xt = torch.from_numpy(x).requires_grad_(True)
    y = bn(xt)
    y = torch.nn.functional.relu6(y) if relu6 else y
    (y * torch.from_numpy(upstream)).sum().backward()
    return (y.detach().numpy(), xt.grad.numpy(), bn.weight.grad.numpy(), bn.bias.grad.numpy(),
            bn.running_mean.numpy(), bn.running_var.numpy())


@pytest.mark.parametrize("relu6", [True, False], ids=["bn_relu6", "bn"])
@pytest.mark.parametrize("shape,graph", [(s, False) for s in BATCH_NORM_SHAPES] + [(BATCH_NORM_SHAPES[2], True)])
def test_batch_norm_kernel_matches_mindspore_and_torch(fast_conv, shape, relu6, graph):
    """The training BatchNorm (+ ReLU6) kernel: forward, gradients w.r.t. input, gamma and beta, and the
    moving statistics after the step, against nn.BatchNorm2d (+ nn.ReLU6) and torch."""
    import mindspore as ms

    from ms_impl.mobilenetv2 import batch_norm

    case = _batch_norm_case(shape, seed=sum(shape) + relu6)
    ms.set_context(mode=ms.GRAPH_MODE if graph else ms.PYNATIVE_MODE)
    try:
        fused = batch_norm(shape[1], "on")
        assert isinstance(fused, fast_conv.FastBatchNorm2d)
        got = _ms_batch_norm_step(fused, relu6, *case)
        want_ms = _ms_batch_norm_step(batch_norm(shape[1], "off"), relu6, *case)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    want_pt = _torch_batch_norm_step(relu6, *case)
    names = ("forward", "grad input", "grad gamma", "grad beta", "moving mean", "moving variance")
    for name, mine, ms_ref, pt_ref in zip(names, got, want_ms, want_pt):
        _assert_close(mine, ms_ref, f"{name} vs nn.BatchNorm2d")
        if relu6 and name in ("grad gamma", "grad beta"):
            # A pre-activation of exactly 6 (channel 1): MindSpore's ReLU6 passes the gradient, torch's not.
            mine, pt_ref = np.delete(mine, 1), np.delete(pt_ref, 1)
        _assert_close(mine, pt_ref, f"{name} vs torch")
    if relu6:
        y, dx, dbeta = got[0], got[1], got[3]
        assert (y[:, 0] == 0).all() and (y[:, 1] == 6).all() and (dx[:, :2] == 0).all()  # on the clamps
        assert dbeta[0] == 0 and dbeta[1] == pytest.approx(case[1][:, 1].sum(), rel=1e-5)  # 0 stops, 6 passes
        if y.size >= 500:  # the other channels have values on both sides of the clamps, too
            assert ((y > 0) & (y < 6)).any() and (y == 0).sum() > y[:, 0].size and (y == 6).sum() > y[:, 1].size


def test_batch_norm_kernel_without_batch_statistics_is_mindspores(fast_conv, ms_pynative):
    """use_batch_statistics=False (the trainer's --freeze_bn): moving statistics, never updated, also in
    training mode, as nn.BatchNorm2d; eval mode too. The kernel is not used there."""
    import mindspore as ms

    from ms_impl.mobilenetv2 import batch_norm

    x, upstream, gamma, beta = _batch_norm_case((2, 6, 5, 3), seed=4)
    mean, variance = np.linspace(-1, 1, 6, dtype=np.float32), np.linspace(0.5, 2, 6, dtype=np.float32)
    for relu6 in (True, False):
        results = []
        for kind in ("on", "off"):
            bn = batch_norm(6, kind)
            bn.use_batch_statistics = False
            bn.moving_mean.set_data(ms.Tensor(mean))
            bn.moving_variance.set_data(ms.Tensor(variance))
            results.append(_ms_batch_norm_step(bn, relu6, x, upstream, gamma, beta))
            np.testing.assert_array_equal(bn.moving_mean.asnumpy(), mean)
            np.testing.assert_array_equal(bn.moving_variance.asnumpy(), variance)
            bn.use_batch_statistics = None
            bn.set_train(False)
            results[-1] += (bn(ms.Tensor(x)).asnumpy(),)
        for mine, reference in zip(*results):
            np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("relu6", [True, False], ids=["bn_relu6", "bn"])
@pytest.mark.parametrize("mode", ["eval", "frozen_bn_training"])
@pytest.mark.parametrize("shape", [(2, 5, 3, 3), (1, 7, 1, 3)])
def test_batch_norm_on_moving_statistics_matches_mindspore(fast_conv, ms_pynative, shape, mode, relu6):
    """BatchNorm on its moving statistics (eval mode, or training with use_batch_statistics=False: the
    trainer's --freeze_bn) in one pass (affine[_relu6] and its grad): forward and gradients (input, gamma,
    beta) against nn.BatchNorm2d (+ nn.ReLU6); the moving statistics stay as they were."""
    import mindspore as ms

    from ms_impl.mobilenetv2 import batch_norm

    x, upstream, gamma, beta = _batch_norm_case(shape, seed=7)
    rng = np.random.default_rng(8)
    mean = rng.uniform(-1, 1, shape[1]).astype(np.float32)
    variance = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
    results = []
    for kind in ("on", "off"):
        bn = batch_norm(shape[1], kind)
        bn.moving_mean.set_data(ms.Tensor(mean))
        bn.moving_variance.set_data(ms.Tensor(variance))
        if mode == "frozen_bn_training":
            bn.use_batch_statistics = False
        results.append(_ms_batch_norm_step(bn, relu6, x, upstream, gamma, beta, train=mode != "eval"))
    names = ("forward", "grad input", "grad gamma", "grad beta", "moving mean", "moving variance")
    for name, mine, reference in zip(names, *results):
        _assert_close(mine, reference, f"{mode} {name} vs nn.BatchNorm2d{' + nn.ReLU6' * relu6}")
    np.testing.assert_array_equal(results[0][4], mean)
    np.testing.assert_array_equal(results[0][5], variance)
    if relu6:  # the case's values reach both clamps
        assert (results[0][0][:, 0] == 0).all() and (results[0][0][:, 1] == 6).all()


def test_batch_norm_entry_points_refuse_wrong_shapes(fast_conv):
    import ctypes

    library = ctypes.CDLL(str(fast_conv.kernel_library()))
    call = fast_conv.call_entry_point
    x = np.ones((2, 4, 3, 5), dtype=np.float32)
    v, constants, saved = np.ones(4, dtype=np.float32), np.array([1e-5, 0.1], dtype=np.float32), np.ones((2, 4))
    forward_outputs = [np.zeros(x.shape), np.zeros((2, 4)), np.zeros(4), np.zeros(4)]
    grad_outputs = [np.zeros(x.shape), np.zeros(4), np.zeros(4)]
    assert call(library, "bn_train_forward", [x, v, v, v, v, constants] + forward_outputs, outputs=4)[0] == 0
    assert call(library, "bn_relu6_train_grad", [x, x, v, v, saved] + grad_outputs, outputs=3)[0] == 0
    refused = [
        ("bn_train_forward", [x, np.ones(3), v, v, v, constants] + forward_outputs),  # gamma length
        ("bn_relu6_train_forward", [x, v, v, v, np.ones(5), constants] + forward_outputs),  # moving variance
        ("bn_train_forward", [x, v, v, v, v, np.ones(1)] + forward_outputs),  # eps and momentum
        ("bn_train_forward", [x, v, v, v, v, constants, np.zeros((2, 4, 3, 4))] + forward_outputs[1:]),  # y
        ("bn_train_forward", [x, v, v, v, v, constants, forward_outputs[0], np.zeros((3, 4))]
         + forward_outputs[2:]),  # saved statistics
        ("bn_train_forward", [x, v, v, v, v] + forward_outputs),  # an input missing
        ("bn_train_grad", [np.zeros((1, 4, 3, 5)), x, v, saved] + grad_outputs),  # batch of dy
        ("bn_relu6_train_grad", [x, x, v, np.ones(3), saved] + grad_outputs),  # beta length
        ("bn_relu6_train_grad", [x, x, v, saved] + grad_outputs),  # no beta
        ("bn_train_grad", [x, x, v, saved, np.zeros(x.shape), np.zeros(4), np.zeros(3)]),  # dbeta length
        ("affine_relu6", [x, v, np.ones(3), np.zeros(x.shape)]),  # shift length
        ("affine", [x, v, v, np.zeros((2, 4, 3, 4))]),  # y
        ("affine_grad", [np.zeros((1, 4, 3, 5)), x, v, v] + grad_outputs),  # batch of dy
        ("affine_relu6_grad", [x, x, np.ones(3), v] + grad_outputs),  # scale length
        ("affine_grad", [x, x, v, v, np.zeros(x.shape), np.zeros(4), np.zeros(3)]),  # dshift length
    ]
    for name, arrays in refused:
        assert call(library, name, arrays, outputs=3)[0] == 1, name


def test_layer_keeps_conv2d_identity(fast_conv):
    from mindspore import nn

    layer = fast_conv.FastConv3x3(24, 24, 2, 24, "HeNormal")
    assert isinstance(layer, nn.Conv2d)
    assert layer.weight.shape == (24, 1, 3, 3) and layer.pad_mode == "pad" and layer.padding == 1
    assert layer.has_bias is False
    assert fast_conv.FastConv3x3(3, 32, 2, 1, "HeNormal").weight.shape == (32, 3, 3, 3)
    with pytest.raises(ValueError, match="stride"):
        fast_conv.FastConv3x3(8, 8, 3, 8, "HeNormal")
    with pytest.raises(ValueError, match="depthwise or dense"):
        fast_conv.FastConv3x3(8, 16, 1, 4, "HeNormal")
    with pytest.raises(ValueError, match="fast_conv"):
        fast_conv.resolve_fast_conv("yes")
    with pytest.raises(ValueError, match="fast_conv"):
        fast_conv.conv2d(16, 96, 1, 1, 1, "HeNormal", "yes")
    # GPU/Ascend keep MindSpore's kernels in every mode; the default device is the context's, read at build.
    assert not fast_conv.resolve_fast_conv("on", device_target="GPU")
    assert not fast_conv.resolve_fast_conv("auto", device_target="Ascend")
    # Only 3x3 layers with stride 1/2, depthwise or dense, take the kernels.
    assert isinstance(fast_conv.conv2d(16, 16, 3, 1, 16, "HeNormal", "on"), fast_conv.FastConv3x3)
    assert not isinstance(fast_conv.conv2d(16, 96, 1, 1, 1, "HeNormal", "on"), fast_conv.FastConv3x3)
    assert not isinstance(fast_conv.conv2d(16, 16, 3, 1, 16, "HeNormal", "off"), fast_conv.FastConv3x3)


@pytest.fixture()
def fresh_build_state(fast_conv, monkeypatch, tmp_path):
    """Forget the resolved library (and the one warning) for this test, restore both afterwards. The default
    target (`native`): another MBV2_KERNEL_MARCH or a MBV2_KERNEL_LANES from the caller's environment adds a
    compiler probe."""
    monkeypatch.setenv("MBV2_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MBV2_KERNEL_MARCH", raising=False)
    monkeypatch.delenv("MBV2_KERNEL_LANES", raising=False)
    fast_conv.forget_resolution()
    yield fast_conv
    monkeypatch.undo()  # back to the session's cache before resolving again
    fast_conv.forget_resolution()


def _fake_compiler(tmp_path: Path, outcome: str, library: str = "") -> str:
    """A `c++` that fails the build, 'succeeds' writing a file that is no library, or 'builds' by copying
    `library` (a real build). Every build appends a line to builds.log beside it."""
    body = {
        "failing": 'echo "internal compiler error" >&2\nexit 1\n',
        "garbage": 'while [ "$#" -gt 0 ]; do [ "$1" = "-o" ] && echo "not a library" > "$2"; shift; done\nexit 0\n',
        "copying": f'while [ "$#" -gt 0 ]; do [ "$1" = "-o" ] && cp "{library}" "$2"; shift; done\nexit 0\n',
    }[outcome]
    script = tmp_path / f"{outcome}-c++"
    script.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fake 1.0"; exit 0; fi\n'
                      f'echo build >> "{tmp_path / "builds.log"}"\n' + body)
    script.chmod(0o755)
    return str(script)


def _builds(tmp_path: Path) -> int:
    log = tmp_path / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("compiler", ["missing", "failing", "garbage"])
def test_fallback_without_working_compiler(fresh_build_state, monkeypatch, tmp_path, compiler):
    from mindspore import nn

    from ms_impl.mobilenetv2 import MobileNetV2

    fast_conv = fresh_build_state
    monkeypatch.setenv("CXX", "/nonexistent/c++" if compiler == "missing" else _fake_compiler(tmp_path, compiler))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = MobileNetV2(num_classes=10, width_mult=0.35, fast_conv="auto")
        MobileNetV2(num_classes=10, width_mult=0.35, fast_conv="auto")
    ours = [w for w in caught if "fast_conv='auto'" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]  # one warning per process, not per layer
    convs = [c for _, c in net.cells_and_names() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 52 and not any(isinstance(c, fast_conv.FastConv3x3) for c in convs)
    assert not any(isinstance(c, fast_conv.FastBatchNorm2d) for _, c in net.cells_and_names())
    with pytest.raises(fast_conv.FastConvUnavailable, match="unavailable"):
        MobileNetV2(num_classes=10, width_mult=0.35, fast_conv="on")
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.iterdir() if "tmp" in p.name]  # no partial file left
    if compiler == "garbage":
        assert _builds(tmp_path) == 2  # the library failed its self-test: rebuilt once, then given up


def test_corrupted_cached_library_is_rebuilt_once(fresh_build_state, monkeypatch, tmp_path):
    fast_conv = fresh_build_state
    monkeypatch.undo()
    real_library = str(fast_conv.kernel_library())  # the session's real build (cached)
    monkeypatch.setenv("MBV2_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MBV2_KERNEL_MARCH", raising=False)  # the default target: no compiler probe first
    monkeypatch.delenv("MBV2_KERNEL_LANES", raising=False)
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, "copying", real_library))
    target = fast_conv.kernel_library()
    assert _builds(tmp_path) == 1
    target.write_bytes(target.read_bytes()[:1000])  # truncated, as by a full disk or an interrupted copy
    fast_conv.forget_resolution()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the rebuilt library is used
        assert fast_conv.resolve_fast_conv("auto")
    assert _builds(tmp_path) == 2 and target.stat().st_size == Path(real_library).stat().st_size
    assert target.stat().st_mode & 0o777 == default_file_mode()  # usable by others per umask, not mkstemp's 0600


def test_no_home_directory_falls_back(fresh_build_state, monkeypatch, tmp_path):
    fast_conv = fresh_build_state
    for name in ("MBV2_KERNEL_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    cache = fast_conv.cache_dir()
    assert cache.parent == tmp_path and cache.stat().st_mode & 0o077 == 0  # private to this user
    cache.chmod(0o777)  # someone could plant a library there now: refused, `auto` falls back
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not fast_conv.resolve_fast_conv("auto")
    assert any("not private" in str(w.message) for w in caught)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fast_conv.cache_dir() == tmp_path / "xdg" / "mbv2-twins" / "kernels"


@pytest.mark.slow
def test_concurrent_first_use_in_two_processes_compiles_once(tmp_path, cli_env, python_exe):
    import subprocess

    real = __import__("shutil").which("c++") or __import__("shutil").which("g++")
    wrapper = tmp_path / "logging-c++"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = "--version" ] || echo build >> "{tmp_path / "builds.log"}"\n'
                       f'exec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(cli_env, CXX=str(wrapper), MBV2_KERNEL_CACHE=str(tmp_path / "cache"))
    env.pop("MBV2_KERNEL_MARCH", None)  # the default target: another one adds a compiler probe to the count
    env.pop("MBV2_KERNEL_LANES", None)
    code = "from ms_impl.fast_conv import kernel_library; print(kernel_library())"
    workers = [subprocess.Popen([python_exe, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    paths = {w.communicate(timeout=600)[0].strip() for w in workers}
    assert all(w.returncode == 0 for w in workers) and len(paths) == 1
    assert _builds(tmp_path) == 1  # the second waited on the lock and found the library built


def test_entry_points_refuse_wrong_shapes_and_survive_failures(fast_conv):
    import ctypes

    library = ctypes.CDLL(str(fast_conv.kernel_library()))
    call = fast_conv.call_entry_point
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 6, 5), dtype=np.float32)
    dw_w = rng.standard_normal((4, 1, 3, 3), dtype=np.float32)
    dense_w = rng.standard_normal((3, 4, 3, 3), dtype=np.float32)
    y = np.zeros((2, 4, 3, 3), dtype=np.float32)
    assert call(library, "dw_forward_s2", [x, dw_w, y])[0] == 0
    refused = [
        ("dw_forward_s2", [x, dw_w, np.zeros((1, 4, 3, 3))]),  # batch of y
        ("dw_forward_s2", [x, dw_w, np.zeros((2, 3, 3, 3))]),  # channels of y
        ("dw_forward_s2", [x, rng.standard_normal((4, 2, 3, 3)), y]),  # depthwise needs w[1] == 1
        ("dw_forward_s2", [x, rng.standard_normal((4, 1, 5, 5)), y]),  # not 3x3
        ("dw_grad_input_s2", [np.zeros((1, 4, 3, 3)), dw_w, x, np.zeros(x.shape)]),  # batch of dy
        ("dw_grad_weight_s2", [x, np.zeros((1, 4, 3, 3)), np.zeros((4, 1, 3, 3))]),  # batch of dy
        ("dense_forward_s1", [x, rng.standard_normal((3, 4, 5, 5)), np.zeros((2, 3, 6, 5))]),  # not 3x3
        ("dense_forward_s1", [x, dense_w, np.zeros((2, 4, 6, 5))]),  # channels of y
        ("dense_forward_s1", [np.zeros((1, 0, 5, 5)), np.zeros((4, 0, 3, 3)), np.zeros((1, 4, 5, 5))]),  # no channels
        ("dense_grad_input_s1", [np.zeros((1, 3, 6, 5)), dense_w, x, np.zeros(x.shape)]),  # batch of dy
        ("dense_grad_weight_s1", [x, np.zeros((1, 3, 6, 5)), np.zeros((3, 4, 3, 3))]),  # batch of dy
        ("dw_forward_bias_relu6_s2", [x, dw_w, np.zeros(3), y]),  # bias length
        # the folded layers' backward: (dy, y, x, w) -> (dx, dw, db); (dy[, y]) -> ([dz,] db)
        ("dw_bias_relu6_grad_s2", [y, np.zeros((2, 4, 3, 2)), x, dw_w, np.zeros(x.shape), np.zeros(dw_w.shape),
                                   np.zeros(4)]),  # y's shape is not dy's
        ("dw_bias_relu6_grad_s2", [y, y, x, dw_w, np.zeros(x.shape), np.zeros(dw_w.shape), np.zeros(3)]),  # db length
        ("dw_bias_relu6_grad_s1", [y, y, x, dw_w, np.zeros(x.shape), np.zeros(dw_w.shape), np.zeros(4)]),  # stride
        # the depthwise layer with the expand layer's bias + ReLU6 on its input: (z, a, w, b) -> y and
        # (dy, y, z, a, w) -> (dz, dw, db, da)
        ("dw_forward_relu6_input_s2", [x, np.zeros(3), dw_w, np.zeros(4), y]),  # a's length
        ("dw_forward_relu6_input_s2", [x, np.zeros(4), dw_w, np.zeros(4), np.zeros((2, 4, 6, 5))]),  # y's shape (stride)
        ("dw_relu6_input_grad_s2", [y, y, x, np.zeros(4), dw_w, np.zeros(x.shape), np.zeros(dw_w.shape), np.zeros(4),
                                    np.zeros(3)]),  # da length
        ("dw_relu6_input_grad_s2", [y, y, x, np.zeros(4), dw_w, np.zeros((2, 4, 6, 4)), np.zeros(dw_w.shape),
                                    np.zeros(4), np.zeros(4)]),  # dz's shape is not z's
        ("bias_grad", [x, np.zeros(3)]),  # db length
        ("bias_relu6_grad", [x, np.zeros((2, 4, 6, 4)), np.zeros(x.shape), np.zeros(4)]),  # y's shape
        ("bias_relu6_grad", [x, x, np.zeros((2, 4, 6, 4)), np.zeros(4)]),  # dz's shape
    ]
    assert call(library, "dw_bias_relu6_grad_s2", [y, y, x, dw_w, np.zeros(x.shape), np.zeros(dw_w.shape), np.zeros(4)],
                outputs=3)[0] == 0
    assert call(library, "dw_forward_relu6_input_s2", [x, np.zeros(4), dw_w, np.zeros(4), y])[0] == 0
    assert call(library, "dw_relu6_input_grad_s2", [y, y, x, np.zeros(4), dw_w, np.zeros(x.shape), np.zeros(dw_w.shape),
                                                    np.zeros(4), np.zeros(4)], outputs=4)[0] == 0
    for name, arrays in refused:
        assert call(library, name, arrays)[0] == 1, name
    # Shapes that pass the checks but whose scratch space cannot be allocated: the C++ exception
    # (in a pool thread, and in the calling thread) becomes status 1, not an abort of the process.
    huge = 1 << 31
    tiny = [np.zeros(1, dtype=np.float32) for _ in range(3)]
    assert call(library, "dw_forward_s1", tiny, shapes=[(2, 4, huge, huge), (4, 1, 3, 3), (2, 4, huge, huge)])[0] == 1
    assert call(library, "dense_forward_s1", tiny, shapes=[(2, 4, huge, huge), (3, 4, 3, 3), (2, 3, huge, huge)])[0] == 1
    assert call(library, "dw_forward_s2", [x, dw_w, y])[0] == 0  # the pool still works afterwards


def test_build_cache_concurrent_first_use(fresh_build_state, tmp_path):
    fast_conv = fresh_build_state
    results: list = []

    def build() -> None:
        results.append(fast_conv.kernel_library())

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    built = sorted(p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock"))
    assert built == [results[0]] and built[0].suffix == ".so"  # no temp files left behind
    mtime = built[0].stat().st_mtime_ns
    assert fast_conv.kernel_library() == results[0] and built[0].stat().st_mtime_ns == mtime  # cache hit


def test_build_cache_key_covers_every_source_file_and_the_march(fresh_build_state, monkeypatch, tmp_path):
    """Editing any kernel file, the shared header included, or naming another -march target builds a new
    library; the target is part of its name."""
    import shutil

    from ms_impl.fast_conv import build

    fast_conv = fresh_build_state
    sources = tmp_path / "kernels"
    shutil.copytree(build.KERNEL_DIR, sources)
    monkeypatch.setattr(build, "KERNEL_DIR", sources)
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, "copying", str(tmp_path / "no-library")))
    monkeypatch.delenv(build.MARCH_VARIABLE, raising=False)
    names = [fast_conv.kernel_library().name]
    assert names[0].startswith("mbv2-kernels-native-") and _builds(tmp_path) == 1
    assert fast_conv.kernel_library().name == names[0] and _builds(tmp_path) == 1  # a cache hit
    for edited in ("common.h", "threads.cc", "pointwise.cc"):
        with open(sources / edited, "a", encoding="utf-8") as handle:
            handle.write("// edited\n")
        names.append(fast_conv.kernel_library().name)
    assert len(set(names)) == 4 and _builds(tmp_path) == 4
    if build.platform.machine() in ("x86_64", "AMD64"):  # the fake compiler accepts any -march; the name shows it
        monkeypatch.setattr(build, "cpu_flags", lambda: ("", []))
        monkeypatch.setenv(build.MARCH_VARIABLE, "x86-64-v2")
        assert fast_conv.kernel_library().name.startswith("mbv2-kernels-x86-64-v2-")


def _march_error(fast_conv, monkeypatch, value: str) -> str:
    """The one error a bad MBV2_KERNEL_MARCH gives: raised with fast_conv="on", one warning and MindSpore's
    own layers with "auto"."""
    from mindspore import nn

    monkeypatch.setenv(fast_conv.MARCH_VARIABLE, value)
    fast_conv.forget_resolution()
    with pytest.raises(fast_conv.FastConvUnavailable) as raised:
        fast_conv.resolve_fast_conv("on")
    message = str(raised.value)
    assert f"MBV2_KERNEL_MARCH={value!r}" in message and "\n" not in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not fast_conv.resolve_fast_conv("auto") and not fast_conv.resolve_fast_conv("auto")
        assert type(fast_conv.conv2d(8, 8, 3, 1, 8, "HeNormal", "auto")) is nn.Conv2d
    assert [str(w.message) for w in caught] == [f"fast_conv='auto': using nn.Conv2d, the CPU kernels are unavailable: "
                                               f"{message.split('unavailable: ', 1)[1]}"]
    return message


def test_bad_kernel_march_is_one_clear_error(fresh_build_state, monkeypatch, tmp_path):
    from ms_impl.fast_conv import build

    fast_conv = fresh_build_state
    assert "not a -march target" in _march_error(fast_conv, monkeypatch, "native -O0")
    assert "does not accept -march=x86-64-v9" in _march_error(fast_conv, monkeypatch, "x86-64-v9")
    if build.platform.machine() in ("x86_64", "AMD64"):
        # A target whose instructions this CPU lacks is refused before its library could be loaded (SIGILL).
        monkeypatch.setattr(build, "cpu_flags", lambda: ("an old CPU", ["fpu", "sse2"]))
        message = _march_error(fast_conv, monkeypatch, "x86-64-v3")
        assert "this CPU lacks " in message and " avx2, " in message and "avx512" not in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing was built


def _has_x86_64_v3() -> bool:
    from ms_impl.fast_conv import build

    flags = build.cpu_flags()[1]
    return build.platform.machine() == "x86_64" and {"avx2", "fma", "bmi2", "movbe"} <= set(flags)


def _batch_norm_layer(rng, shape) -> list:
    """One layer's inputs to a block pass that folds its BatchNorm: w, gamma, beta, mean, var, (eps, momentum)."""
    channels = shape[0]
    return [rng.standard_normal(shape), rng.uniform(0.5, 1.5, channels), rng.uniform(-1.0, 3.0, channels),
            rng.uniform(-0.5, 0.5, channels), rng.uniform(0.5, 2.0, channels), np.array([1e-5, 0.1])]


def _entry_point_cases(rng) -> list:
    """(entry point, arrays, outputs) for comparing two builds of the kernels: every kind of kernel, on sizes
    past one 16-float vector and one 32-channel tile with partial ones left (the AVX-512 layout's tails)."""
    x = rng.standard_normal((2, 24, 17, 15), dtype=np.float32)
    dw_w = rng.standard_normal((24, 1, 3, 3), dtype=np.float32)
    dense_w = rng.standard_normal((8, 24, 3, 3), dtype=np.float32)
    pw_w, bias = rng.standard_normal((40, 24, 1, 1), dtype=np.float32), rng.standard_normal(40, dtype=np.float32)
    gamma, beta = rng.uniform(0.5, 2, 24).astype(np.float32), rng.uniform(-1, 3, 24).astype(np.float32)
    dy = rng.standard_normal((2, 24, 9, 8), dtype=np.float32)
    stem_x, stem_w = rng.standard_normal((2, 3, 35, 34)), rng.standard_normal((16, 3, 3, 3))
    x28 = rng.standard_normal((2, 24, 28, 29))
    cases = [
        ("dw_forward_s2", [x, dw_w, np.zeros((2, 24, 9, 8))], 1),
        ("dw_grad_weight_s2", [x, dy, np.zeros(dw_w.shape)], 1),
        ("dw_grad_input_s1", [rng.standard_normal(x.shape), dw_w, x, np.zeros(x.shape)], 1),
        ("dense_forward_bias_relu6_s1", [x, dense_w, bias[:8], np.zeros((2, 8, 17, 15))], 1),
        ("dense_forward_bias_relu6_s2", [stem_x, stem_w, bias[:16], np.zeros((2, 16, 18, 17))], 1),
        ("dense_grad_weight_s2", [stem_x, rng.standard_normal((2, 16, 18, 17)), np.zeros(stem_w.shape)], 1),
        ("pw_forward_bias_relu6_s1", [x, pw_w, bias, np.zeros((2, 40, 17, 15))], 1),
        ("pw_forward_bias_s1", [x[:, :, :7, :7], pw_w, bias, np.zeros((2, 40, 7, 7))], 1),
        ("pw_grad_weight_s1", [x, rng.standard_normal((2, 40, 17, 15)), np.zeros(pw_w.shape)], 1),
        ("pw_grad_weight_s1", [x28, rng.standard_normal((2, 40, 28, 29)),
                               np.zeros(pw_w.shape)], 1),  # its dot-product form (784 pixels and more)
        ("dw_forward_bias_relu6_s1", [rng.standard_normal((2, 24, 9, 37)), dw_w, bias[:24], np.zeros((2, 24, 9, 37))], 1),
        ("dw_forward_bias_relu6_s2", [x28, dw_w, bias[:24], np.zeros((2, 24, 14, 15))], 1),
        ("dw_forward_s2", [stem_x[:, :1].repeat(24, axis=1), dw_w, np.zeros((2, 24, 18, 17))], 1),
        ("pw_dw_forward_s2", [x, pw_w, bias, rng.standard_normal((40, 1, 3, 3)), bias, np.zeros((2, 40, 9, 8))], 1),
        ("bn_relu6_train_forward", [x, gamma, beta, np.zeros(24), np.ones(24), np.array([1e-5, 0.1]), np.zeros(x.shape),
                                    np.zeros((2, 24)), np.zeros(24), np.zeros(24)], 4),
    ]
    # Whole blocks: (x shape, hidden channels or None without an expansion, out channels, stride).
    for shape, hidden, out, stride in (((2, 8, 33, 32), 40, 12, 2), ((2, 8, 9, 32), 24, 10, 1),
                                       ((2, 12, 16, 35), 37, 12, 1), ((4, 16, 7, 7), 72, 16, 1),
                                       ((4, 12, 13, 14), 50, 36, 2), ((4, 20, 14, 14), None, 20, 1),
                                       ((2, 16, 31, 34), None, 24, 2)):
        n, cin, h, w = shape
        block_x = rng.standard_normal(shape)
        channels = hidden or cin
        layers = ([(hidden, cin, 1, 1)] if hidden else []) + [(channels, 1, 3, 3), (out, channels, 1, 1)]
        y = np.zeros((n, out, (h - 1) // stride + 1, (w - 1) // stride + 1))
        kind = ("block_forward" if hidden else "dw_block_forward") + ("_bn" if stride == 2 or out == 16 else "")
        name = f"{kind}_residual_s1" if stride == 1 and out == cin else f"{kind}_s{stride}"
        if "_bn" in kind:
            weights = [array for layer in layers for array in _batch_norm_layer(rng, layer)]
        else:
            weights = [array for layer in layers for array in (rng.standard_normal(layer), rng.uniform(-1, 3, layer[0]))]
        cases.append((name, [block_x] + weights + [y], 1))
    return cases


# Another build of the kernels than the default one, and what it needs from this CPU.
OTHER_BUILDS = {
    "x86-64-v3": ("MBV2_KERNEL_MARCH", "x86-64-v3", "mbv2-kernels-x86-64-v3-"),  # a library for every AVX2 CPU
    "lanes16": ("MBV2_KERNEL_LANES", "16", "mbv2-kernels-native-lanes16-"),  # the AVX-512 layout on any CPU
}


@pytest.mark.slow
@pytest.mark.parametrize("build", sorted(OTHER_BUILDS))
def test_other_kernel_build_has_its_own_library_with_the_same_results(fast_conv, monkeypatch, tmp_path, build):
    """MBV2_KERNEL_MARCH=x86-64-v3 (a library for every AVX2 CPU), and MBV2_KERNEL_LANES=16 (the AVX-512 build's
    16-float vectors and 12 x 32 tiles, here on a CPU with or without AVX-512): a cached file of its own, the
    self-test passes, MindSpore runs it, and every kind of kernel gives the default build's results within the
    kernels' tolerance (another vector width sums in another order)."""
    import ctypes

    variable, value, prefix = OTHER_BUILDS[build]
    if build == "x86-64-v3" and not _has_x86_64_v3():
        pytest.skip("x86-64-v3 code needs an x86-64 CPU with AVX2, FMA, BMI2 and MOVBE")
    for name in ("MBV2_KERNEL_MARCH", "MBV2_KERNEL_LANES"):
        monkeypatch.delenv(name, raising=False)
    default = fast_conv.kernel_library()  # the session's build
    monkeypatch.setenv("MBV2_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(variable, value)
    fast_conv.forget_resolution()
    try:
        assert fast_conv.resolve_fast_conv("on")  # built, self-tested, run through MindSpore
        other = fast_conv.kernel_library()
    finally:
        monkeypatch.undo()  # the session's library again for the tests after this one
        fast_conv.forget_resolution()
    assert other.name.startswith(prefix) and default.name.startswith("mbv2-kernels-native-")
    assert [p.name for p in (tmp_path / "cache").glob("*.so")] == [other.name]
    fast_conv.check_entry_points(other)
    libraries = [ctypes.CDLL(str(path)) for path in (default, other)]
    try:
        # One thread: the channel-blocked form for every batch of 2 or more small planes; 3 threads: the NCHW form
        # for batches under 6.
        for threads in (1, 3):
            for library in libraries:
                library.mbv2_set_threads(threads)
            for name, arrays, outputs in _entry_point_cases(np.random.default_rng(9)):
                (status_default, want), (status_other, got) = (
                    fast_conv.call_entry_point(library, name, arrays, outputs=outputs) for library in libraries)
                assert status_default == status_other == 0, name
                for mine, reference in zip(*((got, want) if outputs > 1 else ((got,), (want,)))):
                    _assert_close(mine, reference, f"{name}, {threads} threads: {variable}={value} vs the default build")
    finally:
        for library in libraries:
            library.mbv2_set_threads(fast_conv.kernel_threads())


def test_bad_kernel_lanes_is_one_clear_error(fresh_build_state, monkeypatch, tmp_path):
    """A MBV2_KERNEL_LANES that names no build: one line naming the variable and the values it takes."""
    from ms_impl.fast_conv import build

    fast_conv = fresh_build_state
    monkeypatch.setenv("MBV2_KERNEL_LANES", "32")
    with pytest.raises(fast_conv.FastConvUnavailable) as caught:
        fast_conv.kernel_library()
    message = str(caught.value)
    assert message.startswith("MBV2_KERNEL_LANES='32': not one of '16', '16-simde'") and "\n" not in message
    # The SIMDe check build where the compiler finds no SIMDe headers: one line saying which package has them.
    monkeypatch.setenv("MBV2_KERNEL_LANES", "16-simde")
    monkeypatch.setattr(build, "SIMDE_HEADER", "simde/x86/no-such-header.h")
    with pytest.raises(fast_conv.FastConvUnavailable) as caught:
        fast_conv.kernel_library()
    message = str(caught.value)
    assert message.startswith("MBV2_KERNEL_LANES='16-simde': ") and "libsimde-dev" in message and "\n" not in message
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())  # nothing built


def test_blocks_are_the_twins_own_classes_or_their_fused_subclasses(fast_conv):
    """With the kernels, the twin's blocks are subclasses of its own ConvBNReLU and InvertedResidual (the
    fold and fusion paths); without them, its own classes, as in the PyTorch twin."""
    from ms_impl.mobilenetv2 import ConvBNReLU, InvertedResidual, MobileNetV2

    fused = fast_conv.fused_blocks(ConvBNReLU, InvertedResidual)
    assert fast_conv.block_classes(ConvBNReLU, InvertedResidual, "on") == fused
    assert fast_conv.block_classes(ConvBNReLU, InvertedResidual, "off") == (ConvBNReLU, InvertedResidual)
    assert issubclass(fused[0], ConvBNReLU) and issubclass(fused[1], InvertedResidual)
    for mode, (layer, block) in (("on", fused), ("off", (ConvBNReLU, InvertedResidual))):
        net = MobileNetV2(num_classes=10, width_mult=0.35, fast_conv=mode)
        kinds = [type(cell) for _, cell in net.cells_and_names() if isinstance(cell, (ConvBNReLU, InvertedResidual))]
        assert kinds.count(layer) == 35 and kinds.count(block) == 17 and len(kinds) == 52


@pytest.mark.parametrize("width", (0.35, 1.0))
def test_twin_names_and_shapes_unchanged(fast_conv, width):
    from ms_impl.mobilenetv2 import MobileNetV2

    on = MobileNetV2(num_classes=26, width_mult=width, fast_conv="on")
    off = MobileNetV2(num_classes=26, width_mult=width, fast_conv="off")
    fast_layers = [name for name, c in on.cells_and_names() if isinstance(c, fast_conv.FastConv3x3)]
    assert len(fast_layers) == 18  # the stem and the 17 depthwise convolutions
    batch_norms = [c for _, c in on.cells_and_names() if isinstance(c, fast_conv.FastBatchNorm2d)]
    assert len(batch_norms) == 52  # every BatchNorm: 35 followed by ReLU6 (fused), 17 projections
    assert not any(isinstance(c, fast_conv.FastBatchNorm2d) for _, c in off.cells_and_names())
    shapes_on = {p.name: p.shape for p in on.get_parameters()}
    assert shapes_on == {p.name: p.shape for p in off.get_parameters()}
    assert sorted(shapes_on) == sorted(official_ms_names())
    assert "features.0.features.0.weight" in shapes_on and "features.1.conv.0.features.0.weight" in shapes_on


def test_checkpoint_from_kernels_on_loads_with_kernels_off(fast_conv, tmp_path):
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2

    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, 48, 48), dtype=np.float32))
    on = MobileNetV2(num_classes=26, width_mult=0.35, fast_conv="on")
    # Training-mode forwards move the BN statistics away from their init, so the file carries real state.
    on(x)
    on.set_train(False)
    path = str(tmp_path / "on.ckpt")
    ms.save_checkpoint(on, path)
    off = MobileNetV2(num_classes=26, width_mult=0.35, fast_conv="off")
    not_loaded, unused = ms.load_param_into_net(off, ms.load_checkpoint(path))
    assert not_loaded == [] and unused == []
    off.set_train(False)
    want, got = on(x).asnumpy(), off(x).asnumpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def _one_training_step(mode: int, fast: str, params: dict, x: np.ndarray, y: np.ndarray) -> dict:
    import mindspore as ms
    from mindspore import nn

    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.mobilenetv2 import MobileNetV2
    from ms_impl.optim import build_optimizer

    ms.set_context(mode=mode)
    net = MobileNetV2(num_classes=10, width_mult=0.35, dropout=0.0, fast_conv=fast)
    ms.load_param_into_net(net, {k: ms.Parameter(v.copy(), name=k) for k, v in params.items()})
    step = nn.TrainOneStepCell(nn.WithLossCell(net, smoothed_cross_entropy(0.1)),
                               build_optimizer(net.trainable_params(), np.full(4, 0.1, dtype=np.float32)))
    step.set_train(True)
    loss = step(ms.Tensor(x), ms.Tensor(y)).asnumpy()
    assert np.isfinite(loss)
    return {p.name: p.asnumpy() for p in net.get_parameters()}


def test_training_step_graph_and_pynative(fast_conv):
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2

    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3, 64, 64), dtype=np.float32)
    y = rng.integers(0, 10, size=8).astype(np.int32)
    # A seeded init: how much one step amplifies rounding depends on the weights (over 5 unseeded inits of
    # this net at batch 4 the kernels' step differed from MindSpore's by 1e-5 to 4e-2 of the largest update).
    ms.set_seed(0)
    start = {p.name: p.asnumpy() for p in MobileNetV2(num_classes=10, width_mult=0.35).get_parameters()}
    try:
        reference = _one_training_step(ms.GRAPH_MODE, "off", start, x, y)
        largest_update = max(float(np.abs(w - start[k]).max()) for k, w in reference.items())
        for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
            updated = _one_training_step(mode, "on", start, x, y)
            for name in ("features.0.features.0.weight", "features.2.conv.1.features.0.weight"):
                assert not np.allclose(updated[name], start[name])  # the step reached our kernels' weights
            # One step of a tiny net in training mode (BN over 8 images of 2x2 at the end) is
            # ill-conditioned: with this init the kernels' rounding moves the update by ~1e-5 of the largest.
            # A wrong kernel (stride, flip, channel mix-up) moves it by ~100%.
            worst = max(float(np.abs(updated[k] - w).max()) for k, w in reference.items())
            assert worst <= 1e-2 * largest_update, (mode, worst, largest_update)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_bench_rejects_bad_options(capsys, tmp_path):
    from parity.harness import bench

    assert bench.main(["--batch", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --batch: ") and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    for weights in (tmp_path / "missing.ckpt", broken):
        assert bench.main(["--weights", str(weights), "--batch", "2", "--image-size", "32"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --weights: ") and str(weights) in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_reports_every_peer_and_the_ratios(ms_pynative, capsys):
    """Every peer runs on a tiny input and is reported (or skipped with a reason); no time is asserted.

    The compiled peer uses torch.compile's "eager" backend here (graph capture, no code generation):
    inductor's compile alone takes minutes on a small machine, the benchmark itself uses it."""
    from parity.harness import bench

    argv = ["--mode", "pynative", "--batch", "2", "--image-size", "32", "--width", "0.35", "--steps", "1",
            "--warmup", "1", "--fast-conv", "on", "--num-classes", "10", "--threads", "1",
            "--compile-backend", "eager"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "each peer in a process of its own" in out
    assert f"# {bench.MS_TWIN}: mindspore " in out and "fast_conv=on (kernels on)" in out
    assert f"# {bench.PT_CHANNELS_LAST}: torch " in out
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")[1:]]
            for ln in out.splitlines() if ln.startswith("| ")}
    assert f"# {bench.OPENVINO}: openvino " in out and "latency hint" in out
    for peer in (*bench.PYTORCH_PEERS, bench.ORT, bench.OPENVINO, bench.MS_TWIN, bench.MS_OWN_KERNELS,
                 bench.MS_UNFOLDED):
        train, evaluation = rows[peer][0], rows[peer][1]
        for cell in ((evaluation,) if peer in (bench.ORT, bench.OPENVINO, bench.MS_UNFOLDED) else (train, evaluation)):
            if peer == bench.PT_COMPILED and cell.startswith("skipped: "):
                assert len(cell) > len("skipped: ")  # torch.compile may not work everywhere: the reason is given
                continue
            median, low, high = (float(v) for v in cell.replace("(", " ").replace(")", " ").replace("-", " ").split())
            assert 0 < low <= median <= high, (peer, cell)
    assert rows[bench.ORT][0] == rows[bench.OPENVINO][0] == "skipped: inference only"
    assert rows[bench.MS_UNFOLDED][0] == "skipped: training with batch statistics never folds"
    train_line = next(ln for ln in out.splitlines() if ln.startswith("- train step:"))
    eval_line = next(ln for ln in out.splitlines() if ln.startswith("- eval forward:"))
    assert "the best PyTorch peer (PyTorch" in train_line and "ONNX Runtime" in eval_line and "OpenVINO" in eval_line
    assert "without the BN folding" in eval_line
    assert "on MindSpore's own kernels" in train_line and "on MindSpore's own kernels" in eval_line
    for layer in ("stem 3x3", "depthwise 3x3 s2", "depthwise 3x3 s1", "pointwise 1x1", "BatchNorm", "BatchNorm + ReLU6",
                  "ReLU6"):
        cells = next(ln for ln in out.splitlines() if ln.startswith(f"| {layer}")).strip("|").split("|")[1:]
        assert len(cells) == 6 and all(float(c) > 0 for c in cells)


def test_kernel_threads_share_the_host_between_msrun_workers(monkeypatch):
    import os

    from ms_impl import fast_conv

    cpus = len(os.sched_getaffinity(0))
    for name in ("MBV2_KERNEL_THREADS", "MS_ROLE", "MS_WORKER_NUM", "MS_SCHED_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert fast_conv.kernel_threads() == cpus
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("MS_WORKER_NUM", "2")
    assert fast_conv.kernel_threads() == max(1, cpus // 2)  # msrun's default scheduler host is this one
    monkeypatch.setenv("MS_SCHED_HOST", "10.0.0.7")  # several hosts: the local count is unknown, not divided
    assert fast_conv.kernel_threads() == cpus
    monkeypatch.setenv("MBV2_KERNEL_THREADS", "3")
    assert fast_conv.kernel_threads() == 3


def test_bench_times_kernels_against_a_baseline_build(fast_conv, capsys, tmp_path):
    from parity.harness import bench

    assert bench.main(["--kernels-baseline", str(tmp_path / "missing.so")]) == 2
    assert "error: --kernels-baseline:" in capsys.readouterr().err
    # The current library as its own baseline: every case runs, outputs agree exactly, nothing timed is asserted.
    argv = ["--kernels-baseline", str(fast_conv.kernel_library()), "--batch", "1", "--steps", "1", "--warmup", "0",
            "--mode", "pynative"]
    assert bench.main(argv) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "relative" in ln]
    assert len(rows) == len(bench.kernel_cases(1)) and all("differ by 0.0e+00" in row for row in rows)


def test_bench_hosts_each_peer_in_a_process_of_its_own_unless_asked(tmp_path):
    from parity.harness import bench, bench_worker

    args = bench._parser().parse_args(["--data-path", str(tmp_path)])  # an existing folder: checked when parsed
    groups = bench._peer_groups(args)
    assert all(len(group) == 1 for group in groups)  # one process per peer: no framework shares a process
    assert {group[0] for group in groups} == set(bench_worker.PEERS)
    args = bench._parser().parse_args(["--one-process", "--skip-compile"])
    (group,) = bench._peer_groups(args)
    assert bench_worker.PT_COMPILED not in group and bench_worker.DATA not in group
    assert {bench_worker.MS_TWIN, bench_worker.PT_CHANNELS_LAST, bench_worker.ORT} <= set(group)


def test_bench_orders_steps_interleaved_or_one_peer_after_the_other():
    from parity.harness import bench

    calls = []

    def peer(name):
        def run():
            calls.append(name)
            return 0.5
        return run

    timings = bench._interleave({"a": peer("a"), "b": peer("b")}, warmup=1, steps=2)
    assert calls == ["a", "b"] * 3 and timings["a"].steps == [0.5, 0.5] and timings["a"].first_call == 0.5
    calls.clear()
    timings = bench._interleave({"a": peer("a"), "b": peer("b")}, warmup=1, steps=2, sequential=True)
    assert calls == ["a"] * 3 + ["b"] * 3 and timings["b"].steps == [0.5, 0.5]
