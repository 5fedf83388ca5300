"""The twins: names, shapes, counts and numerics settings (issue: foundation)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parity.core import spec as mbv2_spec
from tests.helpers import official_ms_names

WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.4)


def _divisible(v: float, divisor: int = 8) -> int:
    # Independent copy of torchvision's _make_divisible: the oracle for these tests.
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def torchvision_reference(width: float, num_classes: int = 1000) -> dict:
    """Key -> shape of torchvision.models.mobilenet_v2(width_mult=width), written from its source layout."""
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    shapes: dict = {}

    def conv_bn(prefix: str, cin: int, cout: int, k: int, groups: int = 1, bn_index: int = 1, conv_prefix=None):
        shapes[f"{conv_prefix or prefix + '.0'}.weight"] = (cout, cin // groups, k, k)
        bn = f"{prefix}.{bn_index}"
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{name}"] = (cout,)
        shapes[f"{bn}.num_batches_tracked"] = ()

    cin = _divisible(32 * width)
    last = _divisible(1280 * max(1.0, width))
    conv_bn("features.0", 3, cin, 3)
    index = 1
    for t, c, n, _ in table:
        cout = _divisible(c * width)
        for _ in range(n):
            hidden = int(round(cin * t))
            sub = 0
            if t != 1:
                conv_bn(f"features.{index}.conv.{sub}", cin, hidden, 1)
                sub += 1
            conv_bn(f"features.{index}.conv.{sub}", hidden, hidden, 3, groups=hidden)
            shapes[f"features.{index}.conv.{sub + 1}.weight"] = (cout, hidden, 1, 1)
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"features.{index}.conv.{sub + 2}.{name}"] = (cout,)
            shapes[f"features.{index}.conv.{sub + 2}.num_batches_tracked"] = ()
            cin = cout
            index += 1
    conv_bn(f"features.{index}", cin, last, 1)
    shapes["classifier.1.weight"] = (num_classes, last)
    shapes["classifier.1.bias"] = (num_classes,)
    return shapes


def test_spec_channel_rules():
    spec = mbv2_spec.build_spec(1.0)
    assert spec.stem.out_channels == 32 and spec.num_features == 1280 and len(spec.blocks) == 17
    assert mbv2_spec.build_spec(1.4).num_features == 1792  # 1280 * 1.4, rounded to 8
    assert mbv2_spec.build_spec(0.35).num_features == 1280  # never below 1280
    assert mbv2_spec.build_spec(0.35).stem.out_channels == 16
    assert mbv2_spec.make_divisible(1280 * 0.35) == 448
    assert [b.use_residual for b in spec.blocks].count(True) == 10
    with pytest.raises(ValueError, match="width_mult"):
        mbv2_spec.build_spec(0.0)


@pytest.mark.parametrize("width", WIDTHS)
def test_pt_state_dict_matches_torchvision_layout(width):
    from pt_impl.mobilenetv2 import MobileNetV2

    model = MobileNetV2(num_classes=1000, width_mult=width)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = torchvision_reference(width)
    assert list(got) == list(expected)
    assert got == expected


def test_pt_parameter_count_and_strict_load():
    from pt_impl.mobilenetv2 import MobileNetV2

    model = MobileNetV2()
    assert len(model.state_dict()) == 314
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's figure
    # A state_dict saved by another instance loads strictly (what a torchvision file needs).
    other = MobileNetV2()
    other.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("width", (0.75, 1.0))
def test_ms_parameter_names_are_official(width, ms_pynative):
    from ms_impl.mobilenetv2 import MobileNetV2

    net = MobileNetV2(num_classes=26, width_mult=width)
    names = [p.name for p in net.get_parameters()]
    assert sorted(names) == sorted(official_ms_names())
    assert len(names) == 262


def test_ms_trainable_count_equals_pt(ms_pynative):
    from ms_impl.mobilenetv2 import MobileNetV2

    net = MobileNetV2()
    assert sum(int(np.prod(p.shape)) for p in net.trainable_params()) == 3_504_872


def test_ms_full_checkpoint_loads_into_backbone(tmp_path, ms_pynative):
    ms = ms_pynative
    from ms_impl.mobilenetv2 import MobileNetV2, MobileNetV2Backbone

    net = MobileNetV2(num_classes=26, width_mult=0.5)
    path = str(tmp_path / "full.ckpt")
    ms.save_checkpoint(net, path)
    backbone = MobileNetV2Backbone(width_mult=0.5)
    param_not_load, ckpt_not_load = ms.load_param_into_net(backbone, ms.load_checkpoint(path))
    assert param_not_load == []
    assert sorted(ckpt_not_load) == ["dense.bias", "dense.weight"]
    for p in backbone.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), net.parameters_dict()[p.name].asnumpy())


@pytest.mark.parametrize("size", (96, 160, 224))
@pytest.mark.parametrize("batch", (1, 4))
def test_output_shapes(size, batch, ms_pynative):
    ms = ms_pynative
    from ms_impl.mobilenetv2 import MobileNetV2 as MsNet
    from pt_impl.mobilenetv2 import MobileNetV2 as PtNet

    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    ms_net = MsNet(num_classes=26, width_mult=0.35)
    ms_net.set_train(False)
    pt_net = PtNet(num_classes=26, width_mult=0.35).eval()
    cells = size // 32
    assert ms_net.forward_features(ms.Tensor(x)).shape == (batch, 1280, cells, cells)
    assert ms_net(ms.Tensor(x)).shape == (batch, 26)
    with torch.no_grad():
        assert tuple(pt_net.forward_features(torch.from_numpy(x)).shape) == (batch, 1280, cells, cells)
        assert tuple(pt_net(torch.from_numpy(x)).shape) == (batch, 26)


def test_numerics_settings_ms(ms_pynative):
    from mindspore import nn

    from ms_impl.mobilenetv2 import MobileNetV2

    net = MobileNetV2(num_classes=10)
    cells = [c for _, c in net.cells_and_names()]
    bns = [c for c in cells if isinstance(c, nn.BatchNorm2d)]
    convs = [c for c in cells if isinstance(c, nn.Conv2d)]
    assert len(bns) == 52 and len(convs) == 52
    for bn in bns:
        assert bn.eps == pytest.approx(1e-5)
        # Built with momentum=0.9 (MindSpore's convention, weight of the old value);
        # nn.BatchNorm2d stores the complement, the weight of the batch statistic.
        assert 1.0 - bn.momentum == pytest.approx(0.9)
    for conv in convs:
        k = conv.kernel_size[0]
        assert conv.pad_mode == "pad" and conv.padding == (k - 1) // 2 and conv.has_bias is False
    dropout = net.head.dropout
    assert isinstance(dropout, nn.Dropout) and dropout.p == pytest.approx(0.2)
    assert isinstance(MobileNetV2(dropout=0.0).head.dropout, nn.Identity)
    assert net.training  # like torch, a new twin starts in training mode


def test_numerics_settings_pt():
    from torch import nn

    from pt_impl.mobilenetv2 import MobileNetV2

    net = MobileNetV2(num_classes=10)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(bns) == 52 and len(convs) == 52
    assert all(bn.eps == pytest.approx(1e-5) and bn.momentum == pytest.approx(0.1) for bn in bns)
    assert all(c.padding == ((c.kernel_size[0] - 1) // 2,) * 2 and c.bias is None for c in convs)
    assert isinstance(net.classifier[0], nn.Dropout) and net.classifier[0].p == pytest.approx(0.2)
    assert isinstance(MobileNetV2(dropout=0.0).classifier[0], nn.Identity)  # as in the MindSpore twin
    assert net.training


def test_pt_forward_head_runs_the_head_and_keeps_torchvision_keys(monkeypatch):
    import torch

    from pt_impl import mobilenetv2 as pt_model

    net = pt_model.MobileNetV2(num_classes=10, width_mult=0.35).eval()
    assert net.head.classifier is net.classifier  # one set of head weights
    assert not any(k.startswith("head.") for k in net.state_dict())
    features = torch.randn(2, net.num_features, 3, 3)
    expected = net.classifier(features.mean((2, 3)))
    torch.testing.assert_close(net.forward_head(features), expected)
    calls = []
    monkeypatch.setattr(pt_model.MobileNetV2Head, "forward", lambda head, x: calls.append(head) or expected)
    net.forward_head(features)
    assert calls == [net.head]  # the head's own code, not a copy of it


@pytest.mark.parametrize("dropout", (-0.1, 1.0))
def test_bad_dropout_rejected(dropout, ms_pynative):
    from ms_impl.mobilenetv2 import MobileNetV2 as MsNet
    from pt_impl.mobilenetv2 import MobileNetV2 as PtNet

    for cls in (MsNet, PtNet):
        with pytest.raises(ValueError, match="dropout"):
            cls(dropout=dropout)


def test_ci_runs_readme_test_command(repo_root):
    """CI must run exactly what the README tells a user to run."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    ci = (repo_root / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[test]"' in readme and 'pip install -e ".[test]"' in ci
    assert "python -m pytest" in readme and "python -m pytest" in ci
