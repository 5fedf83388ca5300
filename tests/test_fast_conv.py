"""Our CPU 3x3 convolution kernels for the MindSpore twin (issue 9): numerics, build, fallback, integration."""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import official_ms_names

# (batch, channels, height, width, stride): odd and even sizes, 1x1 planes, C from 1 to 960.
DEPTHWISE_SHAPES = [
    (1, 1, 1, 1, 1), (3, 1, 1, 1, 2), (1, 3, 7, 9, 1), (3, 5, 9, 7, 2), (1, 16, 12, 10, 2),
    (3, 32, 15, 8, 1), (1, 144, 11, 11, 2), (3, 384, 6, 5, 1), (1, 960, 7, 7, 1), (3, 960, 4, 3, 2),
]
# (batch, in, out, height, width, stride): the stem and other dense 3x3 layers.
DENSE_SHAPES = [(1, 3, 32, 9, 11, 2), (3, 3, 16, 16, 16, 2), (3, 5, 7, 8, 5, 1), (1, 1, 1, 1, 1, 2)]
RELATIVE_TOLERANCE = 1e-4  # max abs diff / max abs of the reference (summation order differs)


@pytest.fixture()
def fast_conv(ms_pynative):
    from ms_impl import fast_conv as module

    if not module.resolve_fast_conv("auto"):
        pytest.fail("the kernels must build on the test machine (a C++ compiler is part of the test setup)")
    return module


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
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1, groups=groups)
    (y * torch.from_numpy(upstream)).sum().backward()
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    scale = max(float(np.abs(want).max()), 1e-12)
    worst = float(np.abs(got - want).max()) / scale
    assert worst <= RELATIVE_TOLERANCE, f"{what}: max abs diff {worst:.2e} of the output scale"


def _check_against_references(fast_conv, cin: int, cout: int, groups: int, n: int, h: int, w: int, stride: int):
    from mindspore import nn

    rng = np.random.default_rng(cin * 1000 + h * 10 + w + stride)
    fast = fast_conv.FastConv3x3(cin, cout, stride, groups, "HeNormal")
    reference = nn.Conv2d(cin, cout, 3, stride, pad_mode="pad", padding=1, group=groups, has_bias=False)
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
    # Only 3x3 layers with stride 1/2, depthwise or dense, take the kernels.
    assert isinstance(fast_conv.conv2d(16, 16, 3, 1, 16, "HeNormal", "on"), fast_conv.FastConv3x3)
    assert not isinstance(fast_conv.conv2d(16, 96, 1, 1, 1, "HeNormal", "on"), fast_conv.FastConv3x3)
    assert not isinstance(fast_conv.conv2d(16, 16, 3, 1, 16, "HeNormal", "off"), fast_conv.FastConv3x3)


@pytest.fixture()
def fresh_build_state(fast_conv, monkeypatch, tmp_path):
    """Forget the resolved library (and the one warning) for this test, restore both afterwards."""
    monkeypatch.setenv("MBV2_KERNEL_CACHE", str(tmp_path / "cache"))
    fast_conv._cached_library.cache_clear()
    saved_warned = list(fast_conv._warned)
    fast_conv._warned.clear()
    yield fast_conv
    fast_conv._cached_library.cache_clear()
    fast_conv._warned[:] = saved_warned


def _fake_compiler(tmp_path: Path, outcome: str) -> str:
    """A `c++` that fails the build, or 'succeeds' writing a file that is no library."""
    body = {
        "failing": 'echo "internal compiler error" >&2\nexit 1\n',
        "garbage": 'while [ "$#" -gt 0 ]; do [ "$1" = "-o" ] && echo "not a library" > "$2"; shift; done\nexit 0\n',
    }[outcome]
    script = tmp_path / f"{outcome}-c++"
    script.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fake 1.0"; exit 0; fi\n' + body)
    script.chmod(0o755)
    return str(script)


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
    with pytest.raises(fast_conv.FastConvUnavailable, match="unavailable"):
        MobileNetV2(num_classes=10, width_mult=0.35, fast_conv="on")
    assert not list((tmp_path / "cache").glob("*.tmp.so"))  # a failed build leaves no partial file


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
    built = sorted((tmp_path / "cache").iterdir())
    assert built == [results[0]] and built[0].suffix == ".so"  # no temp files left behind
    mtime = built[0].stat().st_mtime_ns
    assert fast_conv.kernel_library() == results[0] and built[0].stat().st_mtime_ns == mtime  # cache hit


@pytest.mark.parametrize("width", (0.35, 1.0))
def test_twin_names_and_shapes_unchanged(fast_conv, width):
    from ms_impl.mobilenetv2 import MobileNetV2

    on = MobileNetV2(num_classes=26, width_mult=width, fast_conv="on")
    off = MobileNetV2(num_classes=26, width_mult=width, fast_conv="off")
    fast_layers = [name for name, c in on.cells_and_names() if isinstance(c, fast_conv.FastConv3x3)]
    assert len(fast_layers) == 18  # the stem and the 17 depthwise convolutions
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
    x = rng.standard_normal((4, 3, 64, 64), dtype=np.float32)
    y = rng.integers(0, 10, size=4).astype(np.int32)
    start = {p.name: p.asnumpy() for p in MobileNetV2(num_classes=10, width_mult=0.35).get_parameters()}
    try:
        reference = _one_training_step(ms.GRAPH_MODE, "off", start, x, y)
        largest_update = max(float(np.abs(w - start[k]).max()) for k, w in reference.items())
        for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
            updated = _one_training_step(mode, "on", start, x, y)
            for name in ("features.0.features.0.weight", "features.2.conv.1.features.0.weight"):
                assert not np.allclose(updated[name], start[name])  # the step reached our kernels' weights
            # One step of a tiny net in training mode (BN over 4 images of 2x2 at the end) is
            # ill-conditioned: perturbing the input by 1e-6 moves the update by ~1% as well.
            # A wrong kernel (stride, flip, channel mix-up) moves it by ~100%.
            worst = max(float(np.abs(updated[k] - w).max()) for k, w in reference.items())
            assert worst <= 3e-2 * largest_update, (mode, worst, largest_update)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_bench_reports_both_twins_and_rejects_bad_options(ms_pynative, capsys):
    from parity.harness import bench

    assert bench.main(["--batch", "0"]) == 2
    assert "--batch >= 1" in capsys.readouterr().err
    argv = ["--mode", "pynative", "--batch", "2", "--image-size", "32", "--width", "0.35", "--steps", "1",
            "--warmup", "1", "--fast-conv", "on", "--skip-breakdown", "--num-classes", "10"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "kernels on" in out
    for row in ("| train step |", "| eval forward |"):
        line = next(ln for ln in out.splitlines() if ln.startswith(row))
        ms_rate, pt_rate, ratio = (float(cell.strip().rstrip("x")) for cell in line.strip("|").split("|")[1:4])
        assert ms_rate > 0 and pt_rate > 0 and ratio == pytest.approx(ms_rate / pt_rate, rel=0.02, abs=0.01)
