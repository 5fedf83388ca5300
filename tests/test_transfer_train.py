"""The trainer with --pretrained (every layout), --freeze-backbone (cached features) and backbone_lr_scale."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_TRAIN, train_cli

WIDTH = 0.35
TINY = TINY_TRAIN + ["--width-mult", str(WIDTH)]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A torchvision-layout MobileNetV2 0.35x with a 1000-class head, saved in three layouts / formats."""
    import torch

    from parity.core.converter import checkpoint_from_state, convert, write_checkpoint
    from pt_impl.mobilenetv2 import MobileNetV2 as TorchMobileNetV2

    torch.manual_seed(0)
    model = TorchMobileNetV2(num_classes=1000, width_mult=WIDTH)
    folder = tmp_path_factory.mktemp("pretrained")
    tv = checkpoint_from_state({k: v.numpy() for k, v in model.state_dict().items()}, layout="torchvision")
    files = {"torchvision.pth": folder / "tv.pth", "mindcv.ckpt": folder / "mindcv.ckpt",
             "ms-official.safetensors": folder / "official.safetensors"}
    torch.save(model.state_dict(), files["torchvision.pth"])
    write_checkpoint(convert(tv, "mindcv"), files["mindcv.ckpt"])
    write_checkpoint(convert(tv, "ms-official"), files["ms-official.safetensors"])
    official = convert(tv, "ms-official", drop_head=True).tensors
    return {"files": files, "backbone": official}


@pytest.mark.parametrize("kind", ["torchvision.pth", "mindcv.ckpt", "ms-official.safetensors"])
def test_pretrained_of_every_layout_loads_into_the_trainer(kind, pretrained, synthetic_cache, tmp_path, caplog, ms_pynative):
    import logging

    from ms_impl.trainer.run import build_config, build_network

    cfg = build_config(TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path),
                               "--pretrained", str(pretrained["files"][kind])])
    with caplog.at_level(logging.INFO, logger="ms_impl"):
        network = build_network(cfg)
    params = {p.name: p.asnumpy() for p in network.get_parameters()}
    for name, value in pretrained["backbone"].items():
        np.testing.assert_array_equal(params[name], value)
    dropped = [r.message for r in caplog.records if "dropped its 1000-class head" in r.message]
    assert len(dropped) == 1 and "26 classes" in dropped[0]
    assert os.listdir(tmp_path) == []  # converted in memory


def test_bad_pretrained_is_a_one_line_usage_error(pretrained, synthetic_cache, tmp_path, capsys):
    from ms_impl.train import main

    wrong_width = ["--width-mult", "0.5"]
    for extra, expected in ((wrong_width + ["--pretrained", str(pretrained["files"]["torchvision.pth"])], "0.35x"),
                            (["--pretrained", str(tmp_path / "missing.pth")], "no such file")):
        code = main(TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path / "out"), "--force", "true"] + extra)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and expected in errors[0] and "--pretrained" in errors[0], errors


def lr_of(optimizer, param) -> np.ndarray:
    """Per-step LRs of `param` (a group's Parameter, or the single schedule's cell)."""
    lr = optimizer.get_lr_parameter(param)
    return getattr(lr, "learning_rate", lr).asnumpy()


def test_backbone_lr_scale_in_full_fine_tuning(pretrained, synthetic_cache, tmp_path, ms_pynative):
    from ms_impl.trainer.run import build_config, build_run

    base = TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path)]
    # --pretrained alone runs the fine-tuning recipe (recipe_finetune in the config sets backbone_lr_scale)
    recipe_scale = build_config(base + ["--pretrained", str(pretrained["files"]["torchvision.pth"])]).recipe_finetune["backbone_lr_scale"]
    for extra, scale in (([], 1.0), (["--pretrained", str(pretrained["files"]["torchvision.pth"])], recipe_scale),
                         (["--pretrained", str(pretrained["files"]["torchvision.pth"]), "--backbone-lr-scale", "0.5"], 0.5)):
        run = build_run(build_config(base + extra))  # the run's own schedule, as the trainer builds it
        assert len(run.lr) == run.cfg.epochs * run.data.steps_per_epoch
        conv = run.network.backbone.features[-1].features[0].weight  # the last 1x1: trained by every recipe
        np.testing.assert_allclose(lr_of(run.optimizer, conv), run.lr * scale, rtol=1e-6)
        np.testing.assert_allclose(lr_of(run.optimizer, run.network.head.dense.weight), run.lr, rtol=1e-6)


@pytest.mark.slow
def test_frozen_backbone_run_keeps_the_backbone_and_reuses_its_cache(pretrained, synthetic_cache, tmp_path, cli_env, repo_root):
    from ms_impl.trainer.model_io import read_ms_checkpoint

    out = tmp_path / "run"
    args = TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", out, "--epochs", "3", "--lr-max", "0.05",
                   "--pretrained", pretrained["files"]["torchvision.pth"], "--freeze-backbone", "true"]
    first = train_cli(args, cli_env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stderr.count("dropped its 1000-class head") == 1
    assert "extracting features" in first.stderr  # progress lines (no terminal: plain log lines, no tqdm frames)
    assert "\r" not in first.stderr
    assert "train features: 104 x 1280, extracted" in first.stderr
    weights = read_ms_checkpoint(str(out / "checkpoints" / "mobilenetv2-best.ckpt"))
    for name, value in pretrained["backbone"].items():  # frozen: bit-identical to the pretrained backbone
        np.testing.assert_array_equal(weights[name], value)
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 4
    # the frozen recipe: eval crops and whole photos of train and val plus their mirror images
    # (feature_flip, feature_whole, tta flip+whole)
    assert sorted(n.rsplit("-", 1)[0] for n in os.listdir(out / "feature_cache") if n.endswith(".npz")) == [
        "train", "train-flip", "train-whole", "train-whole-flip", "val", "val-flip", "val-whole", "val-whole-flip"]

    again = train_cli(args + ["--force", "true"], cli_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "train features: 104 x 1280, reused" in again.stderr and "val features: 52 x 1280, reused" in again.stderr
    # the same features and seed give the same head
    again_weights = read_ms_checkpoint(str(out / "checkpoints" / "mobilenetv2-best.ckpt"))
    np.testing.assert_array_equal(again_weights["dense.weight"], weights["dense.weight"])

    # two-stage recipe: the frozen run's checkpoint (a training checkpoint) is the next run's --pretrained, head included
    from ms_impl.trainer.run import build_config, build_network
    from ms_impl.trainer.pretrained import load_pretrained

    cfg = build_config(TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path / "stage2")])
    network = build_network(cfg)
    info = load_pretrained(network, str(out / "checkpoints" / "mobilenetv2-best.ckpt"))
    assert info.head_loaded and info.layout == "ms-official"
    np.testing.assert_array_equal(network.head.dense.weight.asnumpy(), weights["dense.weight"])

    # the trainer's checkpoint serves predict directly (class names from the trainer's config)
    image = next(Path(synthetic_cache).rglob("*.jpg"))
    proc = subprocess.run([sys.executable, "ms_impl/predict.py", "--checkpoint", str(out / "checkpoints" / "mobilenetv2-best.ckpt"),
                           "--config", "configs/garbage26_cpu.yaml", "--image-size", "32", "--json", str(image)],
                          cwd=repo_root, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    top = json.loads(proc.stdout)["predictions"][0]["top_k"]
    assert len(top) == 5 and top[0]["category_zh"] in {"干垃圾", "可回收物", "湿垃圾", "有害垃圾"}



def test_frozen_resume_is_refused(synthetic_cache, tmp_path, capsys):
    from ms_impl.train import main

    code = main(TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path), "--freeze-backbone", "true",
                        "--resume", "auto"])
    assert code == 2 and "frozen-backbone run is not resumed" in capsys.readouterr().err


@pytest.mark.slow
def test_head_first_then_fine_tune_everything(pretrained, synthetic_cache, tmp_path, cli_env, repo_root):
    from ms_impl.trainer.model_io import read_ms_checkpoint

    out = tmp_path / "finetune"
    args = TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", out, "--epochs", "1", "--head-first-epochs", "2",
                   "--freeze-bn", "true", "--tta", "flip", "--pretrained", pretrained["files"]["torchvision.pth"]]
    proc = train_cli(args, cli_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stderr
    assert "recipe: finetune (auto: --pretrained without --freeze-backbone)" in log
    stage1, stage2 = log.index("stage 1 of 2: head alone on frozen features, 2 epochs"), log.index("stage 2 of 2")
    assert stage1 < log.index("head epoch 2/2") < stage2 < log.index("epoch 1/1: train loss") < log.index("final evaluation with --tta flip")
    assert "\r" not in log  # no progress-bar frames in a log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "finetune" and summary["tta"] == "flip"
    assert 0.0 <= summary["final"]["val_category_acc"] <= 1.0
    assert (out / "category_confusion.png").stat().st_size > 0
    assert "category accuracy" in (out / "category_confusion.txt").read_text()
    weights = read_ms_checkpoint(str(out / "checkpoints" / "mobilenetv2-last.ckpt"))
    # stage 2 trained the backbone (the recipe's backbone LR is tiny and these random weights' gradients
    # are small: some weights move, not necessarily the stem's)
    learned = [k for k in pretrained["backbone"] if not k.endswith(("moving_mean", "moving_variance"))]
    assert learned and any(not np.array_equal(weights[k], pretrained["backbone"][k]) for k in learned)
    bn_mean = "features.0.features.1.moving_mean"
    np.testing.assert_array_equal(weights[bn_mean], pretrained["backbone"][bn_mean])  # freeze_bn: statistics kept


@pytest.fixture(scope="module")
def pretrained_with_statistics(tmp_path_factory):
    """A torchvision-layout MobileNetV2 0.35x, 26 classes, with BatchNorm statistics and affine values far from
    their defaults (moving variances 0.1-2), so a frozen BatchNorm really shifts and scales its channels.
    Returns (path, torch model)."""
    import torch

    from pt_impl.mobilenetv2 import MobileNetV2 as TorchMobileNetV2

    torch.manual_seed(1)
    model = TorchMobileNetV2(num_classes=26, width_mult=WIDTH)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n) * 0.1)
                module.running_var.copy_(torch.exp(torch.empty(n).uniform_(np.log(0.1), np.log(2.0))))
                module.weight.copy_(torch.empty(n).uniform_(0.5, 1.5))
                module.bias.copy_(torch.randn(n) * 0.1)
    path = tmp_path_factory.mktemp("pretrained_stats") / "tv.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.mark.slow  # two graph compilations (train and eval), ~40 s on 2 loaded cores
def test_freeze_bn_train_step_matches_eval_forward_and_the_pytorch_twin(pretrained_with_statistics, synthetic_cache, tmp_path):
    """Regression test of the two-stage collapse (val 3.8%): with --freeze-bn the training graph is the eval
    network (logits equal with the dropout mask at 1, BN folded into our kernels in eval only), a step never
    touches the moving statistics, and the gradient is the PyTorch twin's (BatchNorm in eval mode) on the same
    weights and batch. The collapse was none of these: with frozen statistics the loss is about twice as steep
    (measured on the ImageNet weights: gradient norm 14.4 vs 7.3, identical in both twins), and stage 2 at lr 0.01
    (backbone 0.003, momentum 0.9) diverged; the fine-tuning recipe keeps the backbone at 1e-4 (README)."""
    import mindspore as ms

    path, torch_model = pretrained_with_statistics
    ms.set_device("CPU")
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)  # the trainer's mode: the compiled train and eval graphs are what is checked
    try:
        # every layer trained (the recipe's freeze_layers off): the stem's gradient is compared below
        check_freeze_bn(cfg_args=TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path), "--pretrained",
                                         str(path), "--freeze-bn", "true", "--fast-conv", "auto", "--dropout", "0.2", "--lr-max", "0.5",
                                         "--freeze-layers", "0"],
                        torch_model=torch_model)
    finally:
        ms.set_context(mode=mode)


def check_freeze_bn(cfg_args, torch_model) -> None:
    import mindspore as ms
    import torch

    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.trainer.run import build_config, build_lr_schedule, build_network, build_optimizer
    from ms_impl.trainer.train_step import NetWithLoss, build_train_step
    from pt_impl.loss import smoothed_cross_entropy as torch_smoothed_cross_entropy

    cfg = build_config(cfg_args)
    network = build_network(cfg)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(cfg.batch_size, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 26, cfg.batch_size).astype(np.int32)
    network.head.dropout.keep_mask.set_data(ms.Tensor(np.ones(network.head.dropout.keep_mask.shape, np.float32)))
    network.set_train(True)
    train_logits = network(ms.Tensor(images)).asnumpy()
    network.set_train(False)
    eval_logits = network(ms.Tensor(images)).asnumpy()
    np.testing.assert_allclose(train_logits, eval_logits, rtol=1e-4, atol=1e-4)

    # the gradient of the frozen-BN network is the PyTorch twin's with its BatchNorm in eval mode
    network.set_train(True)
    loss_net = NetWithLoss(network, smoothed_cross_entropy(0.1))
    loss_net.set_train(True)
    params = network.trainable_params()
    ms_loss, ms_grads = ms.value_and_grad(loss_net, grad_position=None, weights=params)(ms.Tensor(images), ms.Tensor(labels))
    torch_model.eval()  # BatchNorm with its running statistics; no dropout at p of the mask (all ones above)
    torch_params = dict(torch_model.named_parameters())
    torch_loss = torch_smoothed_cross_entropy(0.1)(torch_model(torch.from_numpy(images)), torch.from_numpy(labels.astype(np.int64)))
    torch_grads = dict(zip(torch_params, torch.autograd.grad(torch_loss, list(torch_params.values()))))
    np.testing.assert_allclose(float(ms_loss.asnumpy()), torch_loss.item(), rtol=1e-4)
    ms_named = {p.name: g.asnumpy() for p, g in zip(params, ms_grads)}
    for ms_name, torch_name in (("features.0.features.0.weight", "features.0.0.weight"),  # stem conv (our kernel)
                                ("features.0.features.1.gamma", "features.0.1.weight"),
                                ("features.2.conv.1.features.0.weight", "features.2.conv.1.0.weight"),  # depthwise (our kernel)
                                ("features.14.conv.2.weight", "features.14.conv.2.weight"),  # projection 1x1
                                ("features.14.conv.3.beta", "features.14.conv.3.bias"),
                                ("dense.weight", "classifier.1.weight")):
        expected = torch_grads[torch_name].numpy()
        # float32 sums in another order: compared as whole tensors (a backward with batch statistics is off by far more)
        assert np.linalg.norm(ms_named[ms_name] - expected) <= 1e-2 * np.linalg.norm(expected), ms_name

    # a training step: the moving statistics stay, gamma and the convolutions learn
    before = {p.name: p.asnumpy().copy() for p in network.get_parameters()}
    optimizer = build_optimizer(cfg, network, build_lr_schedule(cfg, 4))
    step = build_train_step(network, smoothed_cross_entropy(0.1), optimizer)
    for _ in range(2):  # the schedule's first LR is lr_init = 0
        assert np.isfinite(float(step(ms.Tensor(images), ms.Tensor(labels)).asnumpy()))
    after = {p.name: p.asnumpy() for p in network.get_parameters()}
    statistics = [n for n in before if n.endswith(("moving_mean", "moving_variance"))]
    assert statistics and all(np.array_equal(before[n], after[n]) for n in statistics)
    assert not np.array_equal(before["features.0.features.1.gamma"], after["features.0.features.1.gamma"])
    assert not np.array_equal(before["features.0.features.0.weight"], after["features.0.features.0.weight"])


@pytest.mark.slow  # two graph compilations, ~30 s on 2 loaded cores
def test_freeze_layers_keeps_the_first_layers_and_trains_the_rest_with_the_same_gradient(
        pretrained_with_statistics, synthetic_cache, tmp_path):
    """--freeze-layers 4: features.0-3 get no gradient (zero, not merely unused) and keep weights and BatchNorm
    statistics through training steps; every later parameter gets the gradient of the network without the
    cut, and later BatchNorms (batch statistics here) still update."""
    import mindspore as ms

    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.trainer.run import build_config, build_lr_schedule, build_network, build_optimizer
    from ms_impl.trainer.train_step import NetWithLoss, build_train_step

    path, _ = pretrained_with_statistics
    ms.set_device("CPU")
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)  # the trainer's mode: the unrolled loop of NetWithLoss is what is checked
    try:
        args = TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path), "--pretrained", str(path),
                       "--freeze-bn", "false", "--dropout", "0", "--lr-max", "0.5"]
        cfg = build_config(args + ["--freeze-layers", "4"])
        assert cfg.freeze_layers == 4
        frozen, reference = build_network(cfg), build_network(build_config(args))
        prefix = tuple(f"features.{i}." for i in range(4))
        trainable = {p.name for p in frozen.trainable_params()}
        assert trainable and not any(n.startswith(prefix) for n in trainable)
        assert trainable == {p.name for p in reference.trainable_params() if not p.name.startswith(prefix)}
        # the reference cuts nothing: the same prefix BatchNorms on moving statistics, gradients through everything
        for _, cell in reference.cells_and_names():
            if isinstance(cell, ms.nn.BatchNorm2d) and cell.gamma.name.startswith(prefix):
                cell.use_batch_statistics = False

        rng = np.random.default_rng(0)
        images = ms.Tensor(rng.normal(size=(cfg.batch_size, 3, 32, 32)).astype(np.float32))
        labels = ms.Tensor(rng.integers(0, 26, cfg.batch_size).astype(np.int32))
        every = [p for p in frozen.get_parameters() if p.name.startswith(prefix) and "moving" not in p.name]
        later = [p for p in frozen.trainable_params()]
        cut = NetWithLoss(frozen, smoothed_cross_entropy(0.1), cfg.freeze_layers)
        cut.set_train(True)
        loss, grads = ms.value_and_grad(cut, grad_position=None, weights=every + later)(images, labels)
        assert all(not g.asnumpy().any() for g in grads[:len(every)])  # nothing reaches the frozen layers
        whole = NetWithLoss(reference, smoothed_cross_entropy(0.1))
        whole.set_train(True)
        names = {p.name for p in later}
        ref_loss, ref_grads = ms.value_and_grad(whole, grad_position=None,
                                                weights=[p for p in reference.trainable_params() if p.name in names])(images, labels)
        np.testing.assert_allclose(float(loss.asnumpy()), float(ref_loss.asnumpy()), rtol=1e-5)
        for param, grad, ref_grad in zip(later, grads[len(every):], ref_grads):
            expected = ref_grad.asnumpy()
            assert np.linalg.norm(grad.asnumpy() - expected) <= 1e-4 * np.linalg.norm(expected) + 1e-7, param.name

        before = {p.name: p.asnumpy().copy() for p in frozen.get_parameters()}
        step = build_train_step(frozen, smoothed_cross_entropy(0.1), build_optimizer(cfg, frozen, build_lr_schedule(cfg, 4)),
                                cfg.freeze_layers)
        for _ in range(2):  # the schedule's first LR is lr_init = 0
            assert np.isfinite(float(step(images, labels).asnumpy()))
        after = {p.name: p.asnumpy().copy() for p in frozen.get_parameters()}  # asnumpy may share the memory
        assert all(np.array_equal(before[n], after[n]) for n in before if n.startswith(prefix))
        for name in ("features.4.conv.0.features.0.weight", "features.4.conv.0.features.1.moving_mean", "dense.weight"):
            assert not np.array_equal(before[name], after[name]), name
        # a mixed batch's step (--mixup-alpha/--cutmix-alpha: partner labels and lam) compiles with the cut too
        partner = ms.Tensor(np.roll(labels.asnumpy(), 1))
        assert np.isfinite(float(step(images, labels, partner, ms.Tensor(np.float32(0.7))).asnumpy()))
        mixed = {p.name: p.asnumpy() for p in frozen.get_parameters()}
        assert all(np.array_equal(before[n], mixed[n]) for n in before if n.startswith(prefix))
        assert not np.array_equal(after["dense.weight"], mixed["dense.weight"])
    finally:
        ms.set_context(mode=mode)


@pytest.mark.parametrize("extra, message", [
    (["--freeze-layers", "2"], "--freeze-layers: only for fine-tuning pretrained weights"),
    (["--freeze-layers", "2", "--pretrained", "W", "--freeze-backbone", "true"], "--freeze-layers: only for fine-tuning"),
    (["--freeze-layers", "20", "--pretrained", "W"], "--freeze-layers"),
])
def test_freeze_layers_outside_fine_tuning_or_range_is_a_usage_error(extra, message, synthetic_cache, tmp_path, capsys):
    from ms_impl.train import main

    code = main(TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path / "run")] + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_freeze_layers_before_loading_anything(pretrained, synthetic_cache, tmp_path, ms_pynative):
    """The optimizer holds state for the trained layers only: a checkpoint resumes with the freeze_layers it ran with;
    another value is refused naming both, before the network or optimizer is touched."""
    from ms_impl.trainer.run import build_config, build_run, restore
    from ms_impl.trainer.checkpoint import TrainState, save_training_checkpoint
    from ms_impl.trainer.errors import UsageError
    from ms_impl.trainer.train_step import model_parameters

    def config(count):
        return build_config(TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path / "run"),
                                    "--pretrained", str(pretrained["files"]["torchvision.pth"]), "--freeze-layers", str(count)])

    run = build_run(config(4))
    steps = run.data.steps_per_epoch
    path = tmp_path / "last.ckpt"
    save_training_checkpoint(path, model_parameters(run.network), run.optimizer,
                             TrainState(epoch=1, seed=run.cfg.seed, epochs=run.cfg.epochs, steps_per_epoch=steps, freeze_layers=4))
    other = build_run(config(2))
    before = {name: p.asnumpy().copy() for name, p in model_parameters(other.network).items()}
    with pytest.raises(UsageError, match="freeze_layers 4 in the checkpoint vs 2 now"):
        restore(other.cfg, path, other.network, other.optimizer, steps)
    assert all(np.array_equal(before[name], p.asnumpy()) for name, p in model_parameters(other.network).items())
    with pytest.raises(UsageError, match="freeze_layers 4 in the checkpoint vs 2 now"):  # a run built to resume it
        build_run(config(2), resume_from=path)
    resumed = build_run(config(4), resume_from=path)
    assert (resumed.state.freeze_layers, resumed.state.epoch, resumed.resumed_from) == (4, 1, path)
