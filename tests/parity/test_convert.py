"""Checkpoint converter: layouts, bit-exact round trips, twin parity after conversion, bad input (issue 4)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from parity.core import converter as cv
from parity.core import tolerances
from parity.core.layouts import FRAMEWORK_OF_LAYOUT, LAYOUTS, tensor_table
from parity.core.spec import build_spec
from parity.core.verdict import calibrated
from parity.harness import convert_cli
from parity.harness.verify import verify_conversion
from pt_impl import mobilenetv2 as pt_model
from pt_impl import weights as pt_weights

SMALL = 0.35  # width for tests that run a network: fast on 2 cores


def randomized_torch_net(width: float, num_classes: int, seed: int = 0, batches_tracked: int = 7):
    """PyTorch twin with random weights AND random BN statistics/affine (never the identity init).

    The running statistics are first set to those of a random batch (so the
    signal neither dies nor explodes through 17 blocks), then each is
    perturbed at random, and gamma/beta are drawn at random."""
    torch.manual_seed(seed)
    net = pt_model.MobileNetV2(num_classes, width)
    generator = torch.Generator().manual_seed(seed + 1)
    batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for module in batch_norms:
        module.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        net.train()(torch.randn(4, 3, 64, 64, generator=generator))
        for module in batch_norms:
            n = module.num_features
            module.running_var.mul_(torch.rand(n, generator=generator) * 0.45 + 0.8)
            module.running_mean.add_(torch.randn(n, generator=generator) * 0.1 * module.running_var.sqrt())
            # gamma in [0.6, 1.2]: activations stay O(1) and input-dependent through 52 BatchNorms
            module.weight.copy_(torch.rand(n, generator=generator) * 0.6 + 0.6)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            module.num_batches_tracked.fill_(batches_tracked)
            module.momentum = 0.1
        # A unit-gain head (not N(0, 0.01)) so that logits respond to every backbone tensor.
        dense = net.classifier[1]
        dense.weight.copy_(torch.randn(dense.weight.shape, generator=generator) / dense.in_features ** 0.5)
        dense.bias.copy_(torch.randn(num_classes, generator=generator) * 0.1)
    return net.eval()


def torch_state(net) -> Dict[str, np.ndarray]:
    return {name: value.detach().numpy().copy() for name, value in net.state_dict().items()}


def official_from_torchvision(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """ms-official names from torchvision ones, rewritten here independently of parity.core.layouts (the oracle)."""
    bn = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    out = {}
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name.startswith("classifier.1."):
            out["dense." + name.split(".")[-1]] = value
            continue
        parts = name.split(".")
        if value.ndim == 1:
            parts[-1] = bn[parts[-1]]
        # ConvBNReLU children `.0`/`.1` sit under `.features` in MindSpore; bare project conv/BN do not.
        if parts[2] != "conv":  # stem / last: features.i.{0,1}.x
            parts = parts[:2] + ["features"] + parts[2:]
        elif len(parts) == 6:  # features.i.conv.k.{0,1}.x
            parts = parts[:4] + ["features"] + parts[4:]
        out[".".join(parts)] = value
    return out


def mindcv_from_official(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Rename the official layout the way mindcv names its modules (mindspore-lab/mindcv
    models/mobilenet_v2.py): conv, BN and ReLU6 are separate cells of flat lists, so the stem takes
    features.0-2, blocks start at features.3, each block is `layers.{k}`, the head is classifier.1."""
    last = max(int(name.split(".")[1]) for name in state if name.startswith("features."))
    out = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[0] == "dense":
            out[f"classifier.1.{parts[1]}"] = value
        elif parts[1] == "0":  # stem: features.0.features.j.x -> features.j.x
            out[f"features.{parts[3]}.{parts[4]}"] = value
        elif int(parts[1]) == last:  # last 1x1: features.18.features.j.x -> features.(20 + j).x
            out[f"features.{last + 2 + int(parts[3])}.{parts[4]}"] = value
        else:
            block, k = int(parts[1]), int(parts[3])
            if parts[4] == "features":  # ConvBNReLU k: conv, BN, ReLU6 at 3k, 3k+1, 3k+2
                index = 3 * k + int(parts[5])
            elif value.ndim == 4:  # bare project conv
                index = 3 * k
            else:  # bare project BN right after it
                index = 3 * (k - 1) + 1
            out[f"features.{block + 2}.layers.{index}.{parts[-1]}"] = value
    return out


def save_ms(tensors: Dict[str, np.ndarray], path: Path, extra: Dict[str, np.ndarray] = None) -> None:
    import mindspore as ms

    entries = {**tensors, **(extra or {})}
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in entries.items()], str(path))


def load_ms(path: Path) -> Dict[str, np.ndarray]:
    import mindspore as ms

    return {name: param.asnumpy() for name, param in ms.load_checkpoint(str(path)).items()}


def assert_bit_exact(found: Dict[str, np.ndarray], expected: Dict[str, np.ndarray]) -> None:
    assert list(found) == list(expected) or set(found) == set(expected), set(found) ^ set(expected)
    for name, value in expected.items():
        assert found[name].dtype == value.dtype, name
        assert found[name].shape == value.shape, name
        assert np.array_equal(found[name], value), f"{name} changed"


def files_in(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("width", [SMALL, 1.0])
def test_layout_names_are_the_twins_names(width, ms_pynative):
    from ms_impl import mobilenetv2 as ms_model

    slots = tensor_table(build_spec(width), 1000)
    tv = {k: tuple(v.shape) for k, v in pt_model.MobileNetV2(1000, width).state_dict().items()
          if not k.endswith("num_batches_tracked")}
    assert {s.names["torchvision"]: s.shape for s in slots} == tv
    net = ms_model.MobileNetV2(1000, width)
    assert {s.names["ms-official"]: s.shape for s in slots} == {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert len(slots) == 262
    official = {s.names["ms-official"]: np.zeros(s.shape) for s in slots}
    assert {s.names["mindcv"] for s in slots} == set(mindcv_from_official(official))
    # every tensor keeps its place: the mindcv oracle and the table agree name by name
    renamed = mindcv_from_official({s.names["ms-official"]: np.full(s.shape, i) for i, s in enumerate(slots)})
    assert all(renamed[s.names["mindcv"]].flat[0] == i for i, s in enumerate(slots))
    assert FRAMEWORK_OF_LAYOUT == {"torchvision": "torch", "ms-official": "mindspore", "mindcv": "mindspore"}


# ---------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("width,classes", [(0.5, 26), (1.4, 1000)])
def test_round_trip_torchvision_ms_official_torchvision(tmp_path, width, classes):
    net = randomized_torch_net(width, classes)
    original = torch_state(net)
    torch.save(net.state_dict(), tmp_path / "src.pth")

    ckpt = cv.read_checkpoint(tmp_path / "src.pth")
    assert (ckpt.layout, ckpt.width_mult, ckpt.num_classes) == ("torchvision", width, classes)
    cv.write_checkpoint(cv.convert(ckpt, "ms-official"), tmp_path / "mid.ckpt")
    assert_bit_exact(load_ms(tmp_path / "mid.ckpt"), official_from_torchvision(original))

    back = cv.read_checkpoint(tmp_path / "mid.ckpt")
    assert back.layout == "ms-official"
    cv.write_checkpoint(cv.convert(back, "torchvision"), tmp_path / "back.pth")
    result = {k: v.numpy() for k, v in torch.load(tmp_path / "back.pth", weights_only=True).items()}
    counters = {k for k in original if k.endswith("num_batches_tracked")}
    assert_bit_exact({k: v for k, v in result.items() if k not in counters},
                     {k: v for k, v in original.items() if k not in counters})
    # num_batches_tracked is not carried through MindSpore: written as 0 so strict loading works
    assert all(result[k].dtype == np.int64 and int(result[k]) == 0 for k in counters)
    pt_model.MobileNetV2(classes, width).load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True),
                                                          strict=True)


def test_round_trip_ms_official_torchvision_ms_official_skips_training_state(tmp_path, capsys):
    original = official_from_torchvision(torch_state(randomized_torch_net(0.5, 26, seed=3)))
    moments = {f"moments.{name}": np.ones_like(value) for name, value in original.items()}
    scalars = {"learning_rate": np.array(0.1, np.float32), "global_step": np.array(120, np.int32),
               "epoch_num": np.array(4, np.int32)}
    save_ms(original, tmp_path / "src.ckpt", extra={**moments, **scalars})

    assert convert_cli.main([str(tmp_path / "src.ckpt"), str(tmp_path / "mid.pth")]) == 0
    out = capsys.readouterr().out
    summary = [line for line in out.splitlines() if "skipped" in line]
    assert len(summary) == 1 and "skipped 265 non-model entries" in summary[0]
    assert "moments.* (262)" in summary[0] and "learning_rate" in summary[0] and "global_step" in summary[0]

    assert convert_cli.main([str(tmp_path / "mid.pth"), str(tmp_path / "back.ckpt")]) == 0
    assert_bit_exact(load_ms(tmp_path / "back.ckpt"), original)


def test_round_trip_mindcv_torchvision_mindcv(tmp_path):
    original = mindcv_from_official(official_from_torchvision(torch_state(randomized_torch_net(0.5, 26, seed=5))))
    save_ms(original, tmp_path / "mindcv.ckpt")

    ckpt = cv.read_checkpoint(tmp_path / "mindcv.ckpt")
    assert (ckpt.layout, ckpt.width_mult, ckpt.num_classes) == ("mindcv", 0.5, 26)
    cv.write_checkpoint(cv.convert(ckpt, "torchvision"), tmp_path / "tv.pth")
    pt_model.MobileNetV2(26, 0.5).load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=True)
    back = cv.read_checkpoint(tmp_path / "tv.pth")
    cv.write_checkpoint(cv.convert(back, "mindcv"), tmp_path / "back.ckpt")
    assert_bit_exact(load_ms(tmp_path / "back.ckpt"), original)


def test_round_trip_through_safetensors_both_ways(tmp_path):
    net = randomized_torch_net(SMALL, 26, seed=7, batches_tracked=11)
    original_tv = torch_state(net)
    torch.save(net.state_dict(), tmp_path / "src.pth")

    # torchvision -> safetensors (ms-official) -> torchvision
    assert convert_cli.main([str(tmp_path / "src.pth"), str(tmp_path / "ms.safetensors")]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ms.safetensors"), framework="np") as handle:
        assert handle.metadata()["layout"] == "ms-official"
        assert "dense.weight" in set(handle.keys())
    assert convert_cli.main([str(tmp_path / "ms.safetensors"), str(tmp_path / "back.pth")]) == 0
    back = {k: v.numpy() for k, v in torch.load(tmp_path / "back.pth", weights_only=True).items()}
    assert_bit_exact(back, original_tv)  # the counter (11) travels in the safetensors metadata

    # ms-official .ckpt -> safetensors (torchvision) -> .ckpt
    official = official_from_torchvision(original_tv)
    save_ms(official, tmp_path / "src.ckpt")
    assert convert_cli.main([str(tmp_path / "src.ckpt"), str(tmp_path / "tv.safetensors")]) == 0
    with safe_open(str(tmp_path / "tv.safetensors"), framework="np") as handle:
        assert handle.metadata()["layout"] == "torchvision"
        assert "features.0.1.num_batches_tracked" in set(handle.keys())
    assert convert_cli.main([str(tmp_path / "tv.safetensors"), str(tmp_path / "back.ckpt")]) == 0
    assert_bit_exact(load_ms(tmp_path / "back.ckpt"), official)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_pth_is_read(tmp_path, wrapper):
    net = randomized_torch_net(SMALL, 26)
    torch.save({wrapper: net.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    ckpt = cv.read_checkpoint(tmp_path / "wrapped.pth")
    assert (ckpt.layout, ckpt.width_mult, ckpt.num_classes) == ("torchvision", SMALL, 26)
    assert ckpt.metadata["num_batches_tracked"] == "7"


def test_in_memory_round_trip_keeps_num_batches_tracked(tmp_path):
    net = randomized_torch_net(SMALL, 26, batches_tracked=42)
    ckpt = cv.checkpoint_from_state(pt_weights.state_of(net))
    back = cv.convert(cv.convert(ckpt, "mindcv"), "torchvision")
    cv.write_checkpoint(back, tmp_path / "back.pth")
    assert_bit_exact({k: v.numpy() for k, v in torch.load(tmp_path / "back.pth", weights_only=True).items()},
                     torch_state(net))


# ---------------------------------------------------------------------------- numbers after conversion

def test_converted_checkpoint_gives_same_logits_in_mindspore(ms_pynative):
    from ms_impl import mobilenetv2 as ms_model
    from ms_impl import weights as ms_weights

    net = randomized_torch_net(SMALL, 26, seed=11)
    assert not np.allclose(net.features[3].conv[0][1].running_var.numpy(), 1.0)  # not the identity init
    result = cv.convert(cv.checkpoint_from_state(pt_weights.state_of(net)), "ms-official")
    ms_net = ms_model.MobileNetV2(26, SMALL)
    ms_weights.load_into(ms_net, result.tensors, strict=True)
    ms_net.set_train(False)
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((2, 3, 64, 64)) + rng.uniform(-1, 1, (2, 3, 1, 1))).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(batch)).numpy()
    found = ms_net(ms_pynative.Tensor(batch)).asnumpy()
    with torch.no_grad():
        golden = net.double()(torch.from_numpy(batch.astype(np.float64))).numpy()
    verdict = calibrated(found, expected, golden)
    # the comparison is meaningful: logits are O(1), depend on the image, and differ far beyond the verdict's limit
    assert np.abs(expected).max() > 0.1 and np.abs(expected[0] - expected[1]).max() > 100 * verdict.limit
    assert verdict.passed, verdict
    assert_bit_exact(ms_weights.state_of(ms_net), result.tensors)


@pytest.mark.parametrize("source_layout", ["mindcv", "ms-official"])
def test_verify_mindspore_source_against_torch_twin(ms_pynative, source_layout):
    tv = cv.checkpoint_from_state(torch_state(randomized_torch_net(SMALL, 26, seed=13)))
    source = cv.convert(tv, source_layout)
    result = cv.convert(source, "torchvision" if source_layout == "mindcv" else "mindcv")
    report = verify_conversion(source, result, image_size=64)
    assert report.compared == "logits"
    assert report.reference.startswith("mindspore") and report.candidate.startswith("torch")
    assert report.ok and report.calibration.ratio <= tolerances.NOISE_MULTIPLE

    broken = cv.Checkpoint(dict(result.tensors), result.layout, result.width_mult, result.num_classes)
    name = [n for n in broken.tensors if n.endswith(("running_var", "moving_variance"))][-1]  # last BN
    broken.tensors[name] = broken.tensors[name] * 4.0
    assert not verify_conversion(source, broken, image_size=64).ok


# ---------------------------------------------------------------------------- head handling

def test_num_classes_mismatch_needs_drop_head_and_backbone_loads_into_ms_twin(tmp_path, ms_pynative):
    from ms_impl import mobilenetv2 as ms_model
    from ms_impl import weights as ms_weights

    ckpt = cv.checkpoint_from_state(torch_state(randomized_torch_net(SMALL, 1000)), source="imagenet.pth")
    with pytest.raises(cv.ConversionError, match=r"imagenet\.pth: has 1000 classes, not 26; pass --drop-head"):
        cv.convert(ckpt, "ms-official", num_classes=26)
    backbone = cv.convert(ckpt, "ms-official", num_classes=26, drop_head=True)
    assert backbone.num_classes is None and not any(n.startswith("dense") for n in backbone.tensors)

    ms_weights.load_into(ms_model.MobileNetV2Backbone(SMALL), backbone.tensors, strict=True)
    full = ms_model.MobileNetV2(26, SMALL)
    loaded = ms_weights.load_into(full, backbone.tensors, strict=False)
    assert sorted(loaded.missing) == ["dense.bias", "dense.weight"] and loaded.unexpected == []
    with pytest.raises(cv.ConversionError, match="missing dense"):
        ms_weights.load_into(ms_model.MobileNetV2(26, SMALL), backbone.tensors, strict=True)

    # through files: the backbone-only .ckpt is read back as backbone only
    cv.write_checkpoint(backbone, tmp_path / "backbone.ckpt")
    again = cv.read_checkpoint(tmp_path / "backbone.ckpt")
    assert (again.layout, again.num_classes, len(again.tensors)) == ("ms-official", None, 260)


@pytest.mark.slow
def test_cli_drop_head_with_verify_writes_backbone(tmp_path, python_exe, repo_root, cli_env):
    torch.save(randomized_torch_net(SMALL, 1000).state_dict(), tmp_path / "in.pth")
    done = subprocess.run([python_exe, "-m", "parity.convert", str(tmp_path / "in.pth"), str(tmp_path / "out.ckpt"),
                           "--num-classes", "26", "--drop-head", "--verify", "--verify-image-size", "64"],
                          cwd=repo_root, env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    match = re.search(r"pooled features: max abs diff \S+, max rel diff \S+; error vs float64 \S+ = (\S+) x", done.stdout)
    assert match and float(match.group(1)) <= tolerances.NOISE_MULTIPLE, done.stdout
    assert set(load_ms(tmp_path / "out.ckpt")) == {s.names["ms-official"] for s in tensor_table(build_spec(SMALL), None)}


# ---------------------------------------------------------------------------- bad input (exit 2, nothing written)

def _bad(tmp_path: Path, capsys, argv, pattern: str, code: int = 2) -> str:
    before = files_in(tmp_path)
    assert convert_cli.main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert files_in(tmp_path) == before  # no output, no temporary left behind
    return err


@pytest.fixture()
def small_pth(tmp_path) -> Path:
    path = tmp_path / "small.pth"
    torch.save(randomized_torch_net(SMALL, 26).state_dict(), path)
    return path


def test_missing_source(tmp_path, capsys):
    _bad(tmp_path, capsys, [tmp_path / "nope.pth", tmp_path / "out.ckpt"], r"nope\.pth: no such file")


def test_truncated_pth(tmp_path, capsys, small_pth):
    data = small_pth.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    _bad(tmp_path, capsys, [tmp_path / "cut.pth", tmp_path / "out.ckpt"], r"cut\.pth: cannot read as a PyTorch file")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_ckpt(tmp_path, capsys, damage):
    save_ms(official_from_torchvision(torch_state(randomized_torch_net(SMALL, 26))), tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    bad = data[: len(data) // 2] if damage == "truncated" else b"\x00garbage\xff" * 4000
    (tmp_path / "bad.ckpt").write_bytes(bad)
    _bad(tmp_path, capsys, [tmp_path / "bad.ckpt", tmp_path / "out.pth"],
         r"bad\.ckpt: cannot read as a MindSpore checkpoint")


def test_corrupted_safetensors(tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    _bad(tmp_path, capsys, [tmp_path / "bad.safetensors", tmp_path / "out.pth"],
         r"bad\.safetensors: cannot read as a safetensors file")


def test_resnet_state_dict_is_not_mobilenet(tmp_path, capsys):
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64), "bn1.bias": torch.zeros(64),
              "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "layer1.0.bn1.running_mean": torch.zeros(64),
              "layer1.0.bn1.running_var": torch.ones(64), "fc.weight": torch.zeros(1000, 512),
              "fc.bias": torch.zeros(1000)}
    torch.save(resnet, tmp_path / "resnet.pth")
    err = _bad(tmp_path, capsys, [tmp_path / "resnet.pth", tmp_path / "out.ckpt"],
               r"resnet\.pth: not a MobileNetV2 checkpoint: 8 keys match no layout \(tried torchvision\), "
               r"first: conv1\.weight, bn1\.weight, bn1\.bias, layer1\.0\.conv1\.weight, layer1\.0\.bn1\.running_mean "
               r"\(\+3 more\)")
    assert "fc.bias" not in err  # only the first few keys


def test_resnet_safetensors_lists_all_layouts_tried(tmp_path, capsys):
    from safetensors.numpy import save_file

    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "fc.bias": np.zeros(10, np.float32)},
              str(tmp_path / "resnet.safetensors"))
    _bad(tmp_path, capsys, [tmp_path / "resnet.safetensors", tmp_path / "out.pth"],
         r"not a MobileNetV2 checkpoint: .*tried torchvision, ms-official, mindcv")


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, capsys):
    state = randomized_torch_net(SMALL, 26).state_dict()
    state["features.5.conv.1.0.weight"] = torch.zeros(96, 1, 5, 5)
    torch.save(state, tmp_path / "odd.pth")
    _bad(tmp_path, capsys, [tmp_path / "odd.pth", tmp_path / "out.ckpt"],
         r"odd\.pth: tensor features\.5\.conv\.1\.0\.weight has shape \(96, 1, 5, 5\), expected \(96, 1, 3, 3\)")


@pytest.mark.parametrize("which", ["src", "dst"])
def test_unknown_extension(tmp_path, capsys, small_pth, which):
    src = tmp_path / "model.h5" if which == "src" else small_pth
    if which == "src":
        src.write_bytes(small_pth.read_bytes())
    dst = tmp_path / ("out.ckpt" if which == "src" else "out.onnx")
    _bad(tmp_path, capsys, [src, dst], rf"{'model.h5' if which == 'src' else 'out.onnx'}: unknown extension "
                                        rf"'\.{'h5' if which == 'src' else 'onnx'}'")


def test_existing_destination_needs_force(tmp_path, capsys, small_pth):
    (tmp_path / "out.ckpt").write_bytes(b"keep me")
    _bad(tmp_path, capsys, [small_pth, tmp_path / "out.ckpt"], r"out\.ckpt: already exists; pass --force")
    assert (tmp_path / "out.ckpt").read_bytes() == b"keep me"
    assert convert_cli.main([str(small_pth), str(tmp_path / "out.ckpt"), "--force"]) == 0
    assert cv.read_checkpoint(tmp_path / "out.ckpt").layout == "ms-official"


def test_destination_equal_to_source_needs_force(tmp_path, capsys, small_pth):
    original = small_pth.read_bytes()
    _bad(tmp_path, capsys, [small_pth, small_pth], r"small\.pth: is the source file; pass --force")
    assert small_pth.read_bytes() == original


def test_num_classes_mismatch_cli(tmp_path, capsys, small_pth):
    _bad(tmp_path, capsys, [small_pth, tmp_path / "out.ckpt", "--num-classes", "10"],
         r"small\.pth: has 26 classes, not 10; pass --drop-head")


def test_layout_that_the_format_cannot_hold(tmp_path, capsys, small_pth):
    _bad(tmp_path, capsys, [small_pth, tmp_path / "out.pth", "--to-layout", "mindcv"],
         r"out\.pth: a \.pth file cannot hold layout 'mindcv'")


def test_failed_verification_writes_nothing(tmp_path, capsys, small_pth, monkeypatch, ms_pynative):
    monkeypatch.setattr(tolerances, "NOISE_MULTIPLE", -1.0)  # any difference, even 0, now fails
    monkeypatch.setattr(tolerances, "ABS_FLOOR_EPS", -1.0)
    before = files_in(tmp_path)
    assert convert_cli.main([str(small_pth), str(tmp_path / "out.ckpt"), "--verify", "--verify-image-size", "64"]) == 1
    err = capsys.readouterr().err
    assert "the twins disagree: error vs float64" in err and "nothing written" in err
    assert len(err.strip().splitlines()) == 1
    assert files_in(tmp_path) == before


@pytest.mark.slow
def test_cli_process_exit_code_for_bad_input(tmp_path, python_exe, repo_root, cli_env):
    (tmp_path / "bad.pth").write_bytes(b"not a zip file at all")
    done = subprocess.run([python_exe, "-m", "parity.convert", str(tmp_path / "bad.pth"), str(tmp_path / "o.ckpt")],
                          cwd=repo_root, env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "bad.pth: cannot read as a PyTorch file" in done.stderr and "Traceback" not in done.stderr
    assert files_in(tmp_path) == ["bad.pth"]


@pytest.mark.slow
def test_importing_the_converter_loads_no_framework(python_exe, repo_root, cli_env):
    code = "import sys, parity.convert, parity.core.converter; print(sorted({'torch', 'mindspore', 'safetensors'} & set(sys.modules)))"
    done = subprocess.run([python_exe, "-c", code], cwd=repo_root, env=cli_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    assert cv.LAYOUTS == LAYOUTS == ("torchvision", "ms-official", "mindcv")
