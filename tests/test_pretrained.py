"""--pretrained: checkpoints of every layout (made here) load into the MindSpore network, converted in memory."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

WIDTH = 0.35


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A randomly initialised torchvision-layout MobileNetV2 (1000-class head) saved in every layout and format."""
    import torch

    from parity.core.converter import checkpoint_from_state, convert, write_checkpoint
    from pt_impl.mobilenetv2 import MobileNetV2 as TorchMobileNetV2

    torch.manual_seed(0)
    model = TorchMobileNetV2(num_classes=1000, width_mult=WIDTH).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong mapping shows in the outputs
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    folder = tmp_path_factory.mktemp("pretrained")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    tv = checkpoint_from_state(state, layout="torchvision")
    files = {"torchvision.pth": folder / "tv.pth"}
    torch.save(model.state_dict(), files["torchvision.pth"])
    files["ms-official.ckpt"] = folder / "official.ckpt"
    write_checkpoint(convert(tv, "ms-official"), files["ms-official.ckpt"])
    files["mindcv.ckpt"] = folder / "mindcv.ckpt"
    write_checkpoint(convert(tv, "mindcv"), files["mindcv.ckpt"])
    files["torchvision.safetensors"] = folder / "tv.safetensors"
    write_checkpoint(tv, files["torchvision.safetensors"])
    files["backbone-only.safetensors"] = folder / "backbone.safetensors"
    write_checkpoint(convert(tv, "ms-official", drop_head=True), files["backbone-only.safetensors"])
    return {"model": model, "files": files, "folder": folder}


def torch_features(model, x):
    import torch

    with torch.no_grad():
        return model.forward_features(torch.from_numpy(x)).mean((2, 3)).numpy()


def ms_net(num_classes: int, width: float = WIDTH):
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2

    ms.set_seed(3)
    return MobileNetV2(num_classes=num_classes, width_mult=width)


@pytest.mark.parametrize("kind", ["torchvision.pth", "ms-official.ckpt", "mindcv.ckpt", "torchvision.safetensors",
                                  "backbone-only.safetensors"])
def test_every_layout_loads_and_computes_the_same_features(source, kind, ms_pynative, caplog):
    import mindspore as ms

    from ms_impl.trainer.pretrained import load_pretrained

    net = ms_net(26)
    head_before = net.head.dense.weight.asnumpy().copy()
    listing = sorted(os.listdir(source["folder"]))
    with caplog.at_level(logging.INFO, logger="ms_impl.trainer.pretrained"):
        info = load_pretrained(net, str(source["files"][kind]))
    assert sorted(os.listdir(source["folder"])) == listing  # converted in memory: no file written
    assert info.width_mult == WIDTH and not info.head_loaded
    dropped = [r.message for r in caplog.records if "dropped" in r.message]
    if kind.startswith("backbone-only"):
        assert info.file_classes is None and dropped == []
    else:
        # the 1000-class ImageNet head does not fit a 26-class run: dropped, said once
        assert info.file_classes == 1000
        assert len(dropped) == 1 and "1000-class head" in dropped[0] and "26 classes" in dropped[0]
    np.testing.assert_array_equal(net.head.dense.weight.asnumpy(), head_before)  # head keeps its fresh init

    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    net.set_train(False)
    got = net.forward_features(ms.Tensor(x)).asnumpy().mean((2, 3))
    np.testing.assert_allclose(got, torch_features(source["model"], x), atol=1e-4)


def test_a_head_of_the_same_class_count_is_loaded(source, ms_pynative):
    import mindspore as ms

    from ms_impl.trainer.pretrained import load_pretrained

    net = ms_net(1000)
    info = load_pretrained(net, str(source["files"]["mindcv.ckpt"]))
    assert info.head_loaded and info.layout == "mindcv"
    np.testing.assert_array_equal(net.head.dense.weight.asnumpy(), source["model"].classifier[1].weight.detach().numpy())
    x = np.random.default_rng(2).normal(size=(1, 3, 64, 64)).astype(np.float32)
    net.set_train(False)
    import torch

    with torch.no_grad():
        expected = source["model"](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net(ms.Tensor(x)).asnumpy(), expected, atol=1e-4)


def test_bad_pretrained_files_fail_with_one_line(source, tmp_path, ms_pynative):
    import torch

    from ms_impl.trainer.pretrained import PretrainedError, load_pretrained

    cases = {}
    cases["width"] = (source["files"]["torchvision.pth"], ms_net(26, width=0.5), "0.35x")
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, other)
    cases["other model"] = (other, ms_net(26), "not a MobileNetV2")
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"\0" * 16)
    cases["extension"] = (unknown, ms_net(26), "unknown extension")
    cases["missing"] = (tmp_path / "nope.ckpt", ms_net(26), "no such file")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"garbage")
    cases["broken"] = (broken, ms_net(26), str(broken))
    for what, (path, net, expected) in cases.items():
        before = net.backbone.features[0].features[0].weight.asnumpy().copy()
        with pytest.raises(PretrainedError) as info:
            load_pretrained(net, str(path))
        message = str(info.value)
        assert str(path) in message and expected in message and "\n" not in message, (what, message)
        np.testing.assert_array_equal(net.backbone.features[0].features[0].weight.asnumpy(), before)
