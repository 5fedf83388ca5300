"""The start-up self-test of a built kernel library: every entry point on small problems, with numpy alone.

A library that fails it (a stale or truncated build, a miscompiled kernel) is rebuilt once, then given up
(`ops.py`): forwards against float64 references, gradients by the adjoint identities
<conv(x, w), dy> = <x, grad_input(dy)> = <w, grad_weight(x, dy)>, the fused kernels bit for bit against
the separate ones they replace, and wrong shapes refused.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ms_impl.fast_conv.build import FastConvUnavailable, call_entry_point
from parity.core.files import one_line


def reference_batch_norm_train(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float, relu6: bool,
                               dy: np.ndarray):
    """float64 reference of the training BatchNorm (+ ReLU6) kernels:
    (y, [batch mean, invstd], unbiased batch variance, dx, dgamma, dbeta)."""
    xd = x.astype(np.float64)
    values = x.size // x.shape[1]
    mean, var = xd.mean((0, 2, 3)), xd.var((0, 2, 3))
    invstd = 1.0 / np.sqrt(var + eps)
    z = (xd - mean[None, :, None, None]) * invstd[None, :, None, None]
    pre = z * gamma[None, :, None, None] + beta[None, :, None, None]
    y = np.clip(pre, 0.0, 6.0) if relu6 else pre
    g = dy * ((pre > 0) & (pre <= 6)) if relu6 else dy.astype(np.float64)  # MindSpore's ReLU6 passes at 6
    dbeta, dgamma = g.sum((0, 2, 3)), (g * z).sum((0, 2, 3))
    dx = (gamma * invstd)[None, :, None, None] * (g - (dbeta[None, :, None, None] + z * dgamma[None, :, None, None])
                                                  / values)
    with np.errstate(divide="ignore", invalid="ignore"):
        unbiased = var * values / (values - 1.0)
    return y, np.stack([mean, invstd]), unbiased, dx, dgamma, dbeta


def reference_conv(x: np.ndarray, w: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
    n, _, h, wd = x.shape
    cout = w.shape[0]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    y = np.zeros((n, cout, ho, wo))
    for kh in range(3):
        for kw in range(3):
            taps = padded[:, :, kh:kh + stride * (ho - 1) + 1:stride, kw:kw + stride * (wo - 1) + 1:stride]
            if depthwise:
                y += w[None, :, 0, kh, kw, None, None] * taps
            else:
                y += np.einsum("oi,nihw->nohw", w[:, :, kh, kw], taps)
    return y


def is_complete_elf(path: Path) -> bool:
    """Whether `path` is an ELF file that holds its section header table (it sits at the end of the file).

    A truncated library must never reach dlopen: mapping its missing pages
    kills the process with SIGBUS instead of raising.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(64)
        size = path.stat().st_size
    except OSError:
        return False
    if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2) or header[5] not in (1, 2):
        return False
    order = "little" if header[5] == 1 else "big"
    if header[4] == 2:  # 64-bit
        offset, entry, count = (int.from_bytes(header[a:b], order) for a, b in ((0x28, 0x30), (0x3A, 0x3C), (0x3C, 0x3E)))
    else:
        offset, entry, count = (int.from_bytes(header[a:b], order) for a, b in ((0x20, 0x24), (0x2E, 0x30), (0x30, 0x32)))
    return 0 < offset and offset + entry * count <= size


def check_entry_points(path: Path) -> None:
    """Runs every check below on the library at `path`; FastConvUnavailable names the first that fails."""
    if not is_complete_elf(path):
        raise FastConvUnavailable(f"the cached kernel library {path.name} is not a complete shared library")
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:
        raise FastConvUnavailable(f"the built kernel library does not load: {one_line(exc)}") from exc
    rng = np.random.default_rng(0)
    for check in (_check_convolutions, _check_batch_norm, _check_affine, _check_pointwise,
                  _check_expansion_depthwise):
        check(library, rng)


def _check_convolutions(library: ctypes.CDLL, rng: np.random.Generator) -> None:
    """The 3x3 kernels (depthwise and dense, stride 1 and 2): forwards, gradients, the depthwise fused forms."""
    for kind, cin, cout in (("dw", 3, 3), ("dense", 2, 3)):
        for stride in (1, 2):
            x = rng.standard_normal((2, cin, 5, 4)).astype(np.float32)
            w = rng.standard_normal((cout, 1 if kind == "dw" else cin, 3, 3)).astype(np.float32)
            bias = rng.standard_normal(cout).astype(np.float32)
            want = reference_conv(x, w, stride, kind == "dw")
            dy = rng.standard_normal(want.shape).astype(np.float32)
            checks = [
                (f"{kind}_forward_s{stride}", [x, w, np.zeros(want.shape)], want),
                (f"{kind}_forward_bias_relu6_s{stride}", [x, w, bias, np.zeros(want.shape)],
                 np.clip(want + bias[None, :, None, None], 0.0, 6.0)),
            ]
            for name, arrays, expected in checks:
                status, got = call_entry_point(library, name, arrays)
                if status != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                    raise FastConvUnavailable(f"self-test: {name} gives wrong results")
            inner = float(np.sum(want * dy))
            status_x, dx = call_entry_point(library, f"{kind}_grad_input_s{stride}", [dy, w, x, np.zeros(x.shape)])
            status_w, dw = call_entry_point(library, f"{kind}_grad_weight_s{stride}", [x, dy, np.zeros(w.shape)])
            for status, value, name in ((status_x, np.sum(x * dx), "grad_input"), (status_w, np.sum(w * dw),
                                                                                    "grad_weight")):
                if status != 0 or abs(float(value) - inner) > 1e-3 * max(1.0, abs(inner)):
                    raise FastConvUnavailable(f"self-test: {kind}_{name}_s{stride} gives wrong results")
            if kind == "dw":  # the fused backward of the folded layer: the separate kernels' results, bit for bit
                y = np.clip(want + bias[None, :, None, None], 0.0, 6.0).astype(np.float32)
                dz = np.where((y > 0) & (y < 6), dy, 0).astype(np.float32)
                status, (dx_all, dw_all, db_all) = call_entry_point(
                    library, f"dw_bias_relu6_grad_s{stride}", [dy, y, x, w, np.zeros(x.shape), np.zeros(w.shape),
                                                               np.zeros(cout)], outputs=3)
                parts = [call_entry_point(library, f"dw_grad_input_s{stride}", [dz, w, x, np.zeros(x.shape)])[1],
                         call_entry_point(library, f"dw_grad_weight_s{stride}", [x, dz, np.zeros(w.shape)])[1],
                         call_entry_point(library, "bias_grad", [dz, np.zeros(cout)])[1]]
                if status != 0 or not all(np.array_equal(a, b) for a, b in zip((dx_all, dw_all, db_all), parts)):
                    raise FastConvUnavailable(f"self-test: dw_bias_relu6_grad_s{stride} gives wrong results")
                # The expand layer's bias + ReLU6 moved onto the input (z + a = x): the same results, bit for bit.
                # relu6(z + a) on both sides of 0 and 6.
                a = rng.standard_normal(cout).astype(np.float32)
                z = (4 * x + 3 - a[None, :, None, None]).astype(np.float32)
                x_relu6 = np.clip(z + a[None, :, None, None], 0.0, 6.0).astype(np.float32)
                statuses = []
                for name, arrays, outputs in (
                        (f"dw_forward_bias_relu6_s{stride}", [x_relu6, w, bias, np.zeros(want.shape)], 1),
                        (f"dw_forward_relu6_input_s{stride}", [z, a, w, bias, np.zeros(want.shape)], 1)):
                    statuses.append(call_entry_point(library, name, arrays, outputs=outputs))
                (status_separate, y_relu6), (status_forward, y_moved) = statuses
                status_dw, (dx_relu6, dw_relu6, db_relu6) = call_entry_point(
                    library, f"dw_bias_relu6_grad_s{stride}", [dy, y_relu6, x_relu6, w, np.zeros(x.shape),
                                                               np.zeros(w.shape), np.zeros(cout)], outputs=3)
                status_bias, (dz_relu6, da_relu6) = call_entry_point(
                    library, "bias_relu6_grad", [dx_relu6, x_relu6, np.zeros(x.shape), np.zeros(cout)], outputs=2)
                status_grad, moved = call_entry_point(
                    library, f"dw_relu6_input_grad_s{stride}", [dy, y_moved, z, a, w, np.zeros(x.shape), np.zeros(w.shape),
                                                                np.zeros(cout), np.zeros(cout)], outputs=4)
                expected = (y_relu6, dz_relu6, dw_relu6, db_relu6, da_relu6)
                if status_separate or status_dw or status_bias or status_forward or status_grad or not all(
                        np.array_equal(p, q) for p, q in zip((y_moved,) + moved, expected)):
                    raise FastConvUnavailable(f"self-test: dw_forward_relu6_input_s{stride} / dw_relu6_input_grad_s{stride} "
                                              "give wrong results")
            status, _ = call_entry_point(library, f"{kind}_forward_s{stride}", [x, w, np.zeros((1, cout, 1, 1))])
            if status != 1:
                raise FastConvUnavailable(f"self-test: {kind}_forward_s{stride} accepts a wrong output shape")


def _check_batch_norm(library: ctypes.CDLL, rng: np.random.Generator) -> None:
    """BatchNorm (+ ReLU6) with batch statistics: outputs, moving statistics and gradients."""
    for relu6 in (False, True):
        x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32) * 2 + 1
        gamma, beta = rng.uniform(0.5, 2.0, 3).astype(np.float32), rng.uniform(-1.0, 4.0, 3).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        want = reference_batch_norm_train(x, gamma, beta, 1e-5, relu6, dy)
        prefix = "bn_relu6" if relu6 else "bn"
        moving_mean, moving_variance = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
        status, (y, saved, new_mean, new_variance) = call_entry_point(
            library, f"{prefix}_train_forward",
            [x, gamma, beta, moving_mean, moving_variance, np.array([1e-5, 0.1]), np.zeros(x.shape),
             np.zeros((2, 3)), np.zeros(3), np.zeros(3)], outputs=4)
        inputs = [dy, x, gamma, beta, saved] if relu6 else [dy, x, gamma, saved]
        status_grad, (dx, dgamma, dbeta) = call_entry_point(
            library, f"{prefix}_train_grad", inputs + [np.zeros(x.shape), np.zeros(3), np.zeros(3)], outputs=3)
        checks = ((status, y, want[0]), (status, saved, want[1]),
                  (status, new_mean, 0.9 * moving_mean + 0.1 * want[1][0]),
                  (status, new_variance, 0.9 * moving_variance + 0.1 * want[2]),
                  (status_grad, dx, want[3]), (status_grad, dgamma, want[4]), (status_grad, dbeta, want[5]))
        for index, (code, got, expected) in enumerate(checks):
            if code != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                raise FastConvUnavailable(f"self-test: {prefix}_train_{'forward' if index < 4 else 'grad'} "
                                          "gives wrong results")


def _check_affine(library: ctypes.CDLL, rng: np.random.Generator) -> None:
    """BatchNorm on its moving statistics (+ ReLU6), and folded into a convolution: forward and gradients."""
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32) * 4 + 2
    scale, shift = rng.uniform(0.5, 2.0, 3).astype(np.float32), rng.uniform(-1.0, 4.0, 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    pre = x * scale[None, :, None, None] + shift[None, :, None, None]
    passed = np.where((pre > 0) & (pre <= 6), dy, 0)  # ReLU6's gradient, MindSpore's rule
    # The fold into the convolution before it, and its gradient.
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    mean, var = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2.0, 3).astype(np.float32)
    constants = np.array([1e-5, 0.1], np.float32)
    root = np.sqrt(var.astype(np.float64) + 1e-5)
    status, (folded, folded_bias) = call_entry_point(library, "bn_fold", [w, scale, shift, mean, var, constants,
                                                                          np.zeros(w.shape), np.zeros(3)], outputs=2)
    dfolded, dbias = rng.standard_normal(w.shape).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    status_grad, (dw, dgamma) = call_entry_point(library, "bn_fold_grad", [dfolded, dbias, w, scale, mean, var, constants,
                                                                           np.zeros(w.shape), np.zeros(3)], outputs=2)
    factor = (scale / root)[:, None, None, None]
    for code, got, expected in ((status, folded, w * factor), (status, folded_bias, shift - mean * scale / root),
                                (status_grad, dw, dfolded * factor),
                                (status_grad, dgamma, ((dfolded * w).sum(axis=(1, 2, 3)) - mean * dbias) / root)):
        if code != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            raise FastConvUnavailable("self-test: bn_fold / bn_fold_grad give wrong results")
    for name, y_want, g in (("affine", pre, dy), ("affine_relu6", np.clip(pre, 0, 6), passed)):
        status, y = call_entry_point(library, name, [x, scale, shift, np.zeros(x.shape)])
        status_grad, (dx, dscale, dshift) = call_entry_point(
            library, f"{name}_grad", [dy, x, scale, shift, np.zeros(x.shape), np.zeros(3), np.zeros(3)], outputs=3)
        checks = ((status, y, y_want), (status_grad, dx, g * scale[None, :, None, None]),
                  (status_grad, dscale, (g * x).sum(axis=(0, 2, 3))), (status_grad, dshift, g.sum(axis=(0, 2, 3))))
        for index, (code, got, expected) in enumerate(checks):
            if code != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
                raise FastConvUnavailable(f"self-test: {name}{'_grad' if index else ''} gives wrong results")


def _check_pointwise(library: ctypes.CDLL, rng: np.random.Generator) -> None:
    """The 1x1 kernels (with the residual in the epilogue), the head's pooling and the folded BatchNorm's bias
    gradients."""
    # Pointwise: shapes that leave partial tiles (rows and pixels) and cross images within a tile.
    x = rng.standard_normal((3, 5, 3, 7)).astype(np.float32)
    w = rng.standard_normal((13, 5, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(13).astype(np.float32)
    want = np.einsum("mk,nkhw->nmhw", w[:, :, 0, 0].astype(np.float64), x)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    checks = [("pw_forward_s1", [x, w, np.zeros(want.shape)], want),
              ("pw_forward_bias_s1", [x, w, bias, np.zeros(want.shape)], want + bias[None, :, None, None]),
              ("pw_forward_bias_relu6_s1", [x, w, bias, np.zeros(want.shape)],
               np.clip(want + bias[None, :, None, None], 0.0, 6.0)),
              ("pw_grad_input_s1", [dy, w, x, np.zeros(x.shape)], np.einsum("mk,nmhw->nkhw", w[:, :, 0, 0], dy)),
              ("pw_grad_weight_s1", [x, dy, np.zeros(w.shape)], np.einsum("nmhw,nkhw->mk", dy, x)[:, :, None, None])]
    for name, arrays, expected in checks:
        status, got = call_entry_point(library, name, arrays)
        if status != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            raise FastConvUnavailable(f"self-test: {name} gives wrong results")
    # The residual in the projection's epilogue: the bias form, then the add, bit for bit.
    residual = rng.standard_normal(want.shape).astype(np.float32)
    status_bias, biased = call_entry_point(library, "pw_forward_bias_s1", [x, w, bias, np.zeros(want.shape)])
    status, added = call_entry_point(library, "pw_forward_bias_add_s1", [x, w, bias, residual, np.zeros(want.shape)])
    if status or status_bias or not np.array_equal(added, (biased + residual).astype(np.float32)):
        raise FastConvUnavailable("self-test: pw_forward_bias_add_s1 gives wrong results")
    # The head's global average pooling and its gradient.
    status, pooled = call_entry_point(library, "global_average_pool", [x, np.zeros(x.shape[:2])])
    pooled_dy = rng.standard_normal(x.shape[:2]).astype(np.float32)
    status_grad, spread = call_entry_point(library, "global_average_pool_grad", [pooled_dy, x, np.zeros(x.shape)])
    if (status or status_grad or not np.allclose(pooled, x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
            or not np.allclose(spread, np.broadcast_to(pooled_dy[:, :, None, None] / 21, x.shape), rtol=1e-6)):
        raise FastConvUnavailable("self-test: global_average_pool / global_average_pool_grad give wrong results")
    # The folded BatchNorm's bias gradients: y has values at 0, inside (0, 6) and at 6.
    y = np.clip(want + bias[None, :, None, None], 0.0, 6.0).astype(np.float32)
    dz_want = np.where((y > 0) & (y < 6), dy, 0)
    status, db = call_entry_point(library, "bias_grad", [dy, np.zeros(13)])
    status_relu6, (dz, db_relu6) = call_entry_point(library, "bias_relu6_grad", [dy, y, np.zeros(y.shape), np.zeros(13)],
                                                    outputs=2)
    for code, got, expected in ((status, db, dy.sum(axis=(0, 2, 3))), (status_relu6, dz, dz_want),
                                (status_relu6, db_relu6, dz_want.sum(axis=(0, 2, 3)))):
        if code != 0 or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            raise FastConvUnavailable("self-test: bias_grad / bias_relu6_grad give wrong results")
    # The weight gradient's dot-product form (784 pixels per image and more), with partial tiles.
    x, dy = rng.standard_normal((2, 4, 28, 29)).astype(np.float32), rng.standard_normal((2, 5, 28, 29)).astype(np.float32)
    status, dw = call_entry_point(library, "pw_grad_weight_s1", [x, dy, np.zeros((5, 4, 1, 1))])
    if status != 0 or not np.allclose(dw[:, :, 0, 0], np.einsum("nmhw,nkhw->mk", dy, x), rtol=1e-4, atol=1e-3):
        raise FastConvUnavailable("self-test: pw_grad_weight_s1 gives wrong results (many pixels)")


def _check_block_folding(library: ctypes.CDLL, rng: np.random.Generator, stride: int) -> None:
    """The block passes that fold their own BatchNorms: bn_fold on each layer, then the block pass, bit for bit."""
    x = rng.standard_normal((2, 5, 5, 4)).astype(np.float32)
    out_size = ((5 - 1) // stride + 1, (4 - 1) // stride + 1)
    for expand in (True, False):
        hidden = 7 if expand else 5
        shapes = ([(hidden, 5, 1, 1)] if expand else []) + [(hidden, 1, 3, 3), (5, hidden, 1, 1)]
        raw, folded = [], []
        for shape in shapes:
            channels = shape[0]
            layer = [rng.standard_normal(shape), rng.uniform(0.5, 1.5, channels), rng.uniform(-1.0, 3.0, channels),
                     rng.uniform(-0.5, 0.5, channels), rng.uniform(0.5, 2.0, channels), np.array([1e-5, 0.1])]
            status, pair = call_entry_point(library, "bn_fold", layer + [np.zeros(shape), np.zeros(channels)], outputs=2)
            if status:
                raise FastConvUnavailable("self-test: bn_fold fails")
            raw += layer
            folded += list(pair)
        prefix = "block_forward" if expand else "dw_block_forward"
        name = f"{prefix}_residual_s1" if stride == 1 else f"{prefix}_s{stride}"
        out = np.zeros((2, 5) + out_size)
        status, want = call_entry_point(library, name, [x] + folded + [out])
        status_bn, got = call_entry_point(library, name.replace(prefix, f"{prefix}_bn"), [x] + raw + [out])
        if status or status_bn or not np.array_equal(got, want):
            raise FastConvUnavailable(f"self-test: {name.replace(prefix, prefix + '_bn')} gives wrong results")


def _check_expansion_depthwise(library: ctypes.CDLL, rng: np.random.Generator) -> None:
    """Expansion and depthwise in one pass, the whole block in one pass, and a wrong output shape refused."""
    # Expansion and depthwise in one pass (inference): the two kernels' results, bit for bit.
    for stride in (1, 2):
        x = rng.standard_normal((2, 5, 5, 4)).astype(np.float32) * 2
        expand_weight, depthwise_weight = rng.standard_normal((7, 5, 1, 1)), rng.standard_normal((7, 1, 3, 3))
        expand_bias, bias = rng.uniform(-1.0, 3.0, 7), rng.uniform(-1.0, 3.0, 7)
        out_shape = (2, 7, (5 - 1) // stride + 1, (4 - 1) // stride + 1)
        status_pw, expanded = call_entry_point(library, "pw_forward_bias_relu6_s1",
                                               [x, expand_weight, expand_bias, np.zeros((2, 7, 5, 4))])
        status_dw, separate = call_entry_point(library, f"dw_forward_bias_relu6_s{stride}",
                                               [expanded, depthwise_weight, bias, np.zeros(out_shape)])
        status, fused = call_entry_point(library, f"pw_dw_forward_s{stride}",
                                         [x, expand_weight, expand_bias, depthwise_weight, bias, np.zeros(out_shape)])
        if status or status_pw or status_dw or not np.array_equal(fused, separate):
            raise FastConvUnavailable(f"self-test: pw_dw_forward_s{stride} gives wrong results")
        # The whole block in one pass: that output through the projection kernel (+ x where it is a residual
        # block), bit for bit.
        for residual, out_channels in ((False, 3), (stride == 1, 5)):
            projection_weight, projection_bias = rng.standard_normal((out_channels, 7, 1, 1)), rng.standard_normal(out_channels)
            block_shape = (2, out_channels) + out_shape[2:]
            if residual:
                status_p, projected = call_entry_point(library, "pw_forward_bias_add_s1",
                                                       [separate, projection_weight, projection_bias, x, np.zeros(block_shape)])
            else:
                status_p, projected = call_entry_point(library, "pw_forward_bias_s1",
                                                       [separate, projection_weight, projection_bias, np.zeros(block_shape)])
            name = "block_forward_residual_s1" if residual else f"block_forward_s{stride}"
            status, block = call_entry_point(library, name, [x, expand_weight, expand_bias, depthwise_weight, bias,
                                                             projection_weight, projection_bias, np.zeros(block_shape)])
            if status or status_p or not np.array_equal(block, projected):
                raise FastConvUnavailable(f"self-test: {name} gives wrong results")
        # The channel-blocked form of the block pass (small planes, a batch of twice the threads at least).
        images = 2 * max(1, library.mbv2_thread_count())
        xs = np.repeat(x[:1], images, axis=0)
        projection_weight, projection_bias = rng.standard_normal((5, 7, 1, 1)), rng.standard_normal(5)
        status_h, hidden = call_entry_point(library, f"pw_dw_forward_s{stride}",
                                            [xs, expand_weight, expand_bias, depthwise_weight, bias,
                                             np.zeros((images, 7) + out_shape[2:])])
        name = "block_forward_residual_s1" if stride == 1 else f"block_forward_s{stride}"
        after = ("pw_forward_bias_add_s1", [hidden, projection_weight, projection_bias, xs]) if stride == 1 else \
            ("pw_forward_bias_s1", [hidden, projection_weight, projection_bias])
        status_p, projected = call_entry_point(library, after[0], after[1] + [np.zeros((images, 5) + out_shape[2:])])
        status, block = call_entry_point(library, name, [xs, expand_weight, expand_bias, depthwise_weight, bias,
                                                         projection_weight, projection_bias,
                                                         np.zeros((images, 5) + out_shape[2:])])
        if status or status_h or status_p or not np.array_equal(block, projected):
            raise FastConvUnavailable(f"self-test: {name} gives wrong results (channel-blocked form)")
        # A block without an expansion: the depthwise kernel, then the projection, bit for bit.
        dw_weight, dw_bias = depthwise_weight[:5], bias[:5]
        status_dw, depthwise = call_entry_point(library, f"dw_forward_bias_relu6_s{stride}",
                                                [x, dw_weight, dw_bias, np.zeros((2, 5) + out_shape[2:])])
        projection_weight, projection_bias = rng.standard_normal((3, 5, 1, 1)), rng.standard_normal(3)
        status_p, projected = call_entry_point(library, "pw_forward_bias_s1",
                                               [depthwise, projection_weight, projection_bias, np.zeros((2, 3) + out_shape[2:])])
        status, block = call_entry_point(library, f"dw_block_forward_s{stride}",
                                         [x, dw_weight, dw_bias, projection_weight, projection_bias,
                                          np.zeros((2, 3) + out_shape[2:])])
        if status or status_dw or status_p or not np.array_equal(block, projected):
            raise FastConvUnavailable(f"self-test: dw_block_forward_s{stride} gives wrong results")
        _check_block_folding(library, rng, stride)
    x = rng.standard_normal((3, 5, 3, 7)).astype(np.float32)
    if call_entry_point(library, "pw_forward_s1", [x, np.zeros((13, 5, 1, 1)), np.zeros((3, 12, 3, 7))])[0] != 1:
        raise FastConvUnavailable("self-test: pw_forward_s1 accepts a wrong output shape")
