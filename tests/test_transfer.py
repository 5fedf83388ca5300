"""Transfer-learning pieces: head training on cached features, backbone learning-rate scale."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _pynative(ms_pynative):
    yield


def test_head_learns_from_features():
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2Head
    from ms_impl.trainer.metrics import top1
    from ms_impl.trainer.transfer import head_logits, train_head_on_features

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 64)).astype(np.float32)
    labels = np.repeat(np.arange(4), 20).astype(np.int32)
    feats = centres[labels] + 0.3 * rng.normal(0, 1, (80, 64)).astype(np.float32)
    head = MobileNetV2Head(64, 4, dropout=0.0)
    initial = head.dense.weight.asnumpy().copy()
    result = train_head_on_features(head, feats, labels, epochs=15, batch_size=16, lr_max=0.1, dropout=0.2, val=(feats, labels))
    # Four clusters ~11 apart with noise of radius ~2.4, a convex fit: every point's true logit leads by >= 2.6
    # here and the loss ends at 0.54 of its start, so rounding (any CPU) cannot flip a point or the loss check.
    assert result.losses[-1] < 0.7 * result.losses[0]
    assert result.val_top1[-1] == 1.0 and top1(head_logits(head, feats), labels) == 1.0
    assert not head.training  # left in eval mode for saving / predicting
    # reproducible: the same seed gives the same head, dropout masks included
    again = MobileNetV2Head(64, 4, dropout=0.0)
    again.dense.weight.set_data(ms.Tensor(initial))
    train_head_on_features(again, feats, labels, epochs=15, batch_size=16, lr_max=0.1, dropout=0.2)
    np.testing.assert_array_equal(again.dense.weight.asnumpy(), head.dense.weight.asnumpy())


def test_backbone_lr_is_scaled_and_weight_decay_rule_kept():
    """One step with zero gradients: w <- w - lr * scale * wd * w for conv/dense weights, nothing else moves."""
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2
    from ms_impl.optim import build_optimizer
    from ms_impl.trainer.transfer import backbone_lr_scale

    net = MobileNetV2(num_classes=5, width_mult=0.35)
    params = net.trainable_params()
    rng = np.random.default_rng(0)
    for p in params:  # BN gamma/beta start at 1/0 and biases at 0: give every tensor non-trivial values
        p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
    before = {p.name: p.asnumpy().copy() for p in params}
    lr, weight_decay = np.full(3, 0.5, np.float32), 0.01
    opt = build_optimizer(params, lr, weight_decay=weight_decay, lr_scale=backbone_lr_scale(net, 0.1))
    opt(tuple(ms.ops.zeros_like(p) for p in opt.parameters))  # gradients in the optimizer's order
    backbone = {p.name for p in net.backbone.trainable_params()}
    moved = set()
    for p in params:
        if np.array_equal(p.asnumpy(), before[p.name]):
            continue
        scale = 0.1 if p.name in backbone else 1.0
        np.testing.assert_allclose(p.asnumpy(), before[p.name] * (1 - 0.5 * scale * weight_decay), rtol=1e-6)
        moved.add(p.name)
    assert moved == {p.name for p in params if p.name.endswith(".weight") and len(p.shape) >= 2}
    assert {"dense.weight", "features.0.features.0.weight"} <= moved
    assert len(opt.parameters) == len(params)
    with pytest.raises(ValueError, match="backbone_lr_scale"):
        backbone_lr_scale(net, 0.0)


def test_frozen_backbone_run_trains_only_the_head_and_reuses_the_cache(tmp_path):
    from ms_impl.trainer.feature_cache import FeatureSettings
    from ms_impl.trainer.transfer import train_frozen_backbone
    from tests.helpers import IMAGE_SIZE, calibrated_backbone_net, write_dataset

    data = write_dataset(str(tmp_path / "data"), per_class=4, splits=("train",))
    files = [p for p, _ in data["train"]]
    labels = [l for _, l in data["train"]]
    net = calibrated_backbone_net(files)
    backbone_before = {p.name: p.asnumpy().copy() for p in net.backbone.get_parameters()}
    head_before = net.head.dense.weight.asnumpy().copy()

    def run():
        # val = train here: a random backbone's features do not generalise, but must be fitted
        return train_frozen_backbone(net, files, labels, files, labels, cache_dir=str(tmp_path / "cache"),
                                     train_settings=FeatureSettings(IMAGE_SIZE), val_settings=FeatureSettings(IMAGE_SIZE),
                                     epochs=15, batch_size=4, lr_max=0.05, dropout=0.0, label_smoothing=0.0, progress=False)

    first = run()
    # fitted with a margin: the head is convex on fixed features and each true logit leads by >= 7 here
    assert not first.train_features.reused and first.history.val_top1[-1] == 1.0
    assert (first.val_logits.argmax(1) == labels).all()
    assert not np.allclose(net.head.dense.weight.asnumpy(), head_before)
    for p in net.backbone.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), backbone_before[p.name])
    # the cached-feature logits are the network's own logits on the images (eval pipeline)
    import mindspore as ms
    from mindspore.dataset import transforms

    from ms_impl.transforms import eval_transforms

    pipeline = transforms.Compose(eval_transforms(IMAGE_SIZE))
    images = np.stack([pipeline(np.fromfile(f, np.uint8)) for f in files]).astype(np.float32)
    net.set_train(False)
    np.testing.assert_allclose(net(ms.Tensor(images)).asnumpy(), first.val_logits, rtol=1e-4, atol=1e-4)
    second = run()
    assert second.train_features.reused and second.val_features.reused
