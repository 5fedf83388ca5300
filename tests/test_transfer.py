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
    assert result.losses[-1] < 0.7 * result.losses[0]
    assert result.val_top1[-1] == 1.0 and top1(head_logits(head, feats), labels) == 1.0
    assert not head.training  # left in eval mode for saving / predicting
    # reproducible: the same seed gives the same head, dropout masks included
    again = MobileNetV2Head(64, 4, dropout=0.0)
    again.dense.weight.set_data(ms.Tensor(initial))
    train_head_on_features(again, feats, labels, epochs=15, batch_size=16, lr_max=0.1, dropout=0.2)
    np.testing.assert_array_equal(again.dense.weight.asnumpy(), head.dense.weight.asnumpy())


def test_backbone_lr_is_scaled_and_weight_decay_rule_kept():
    from ms_impl.mobilenetv2 import MobileNetV2
    from ms_impl.trainer.transfer import build_transfer_optimizer

    net = MobileNetV2(num_classes=5, width_mult=0.35)
    lr = np.linspace(0.1, 0.0, 7, dtype=np.float32)
    opt = build_transfer_optimizer(net, lr, backbone_lr_scale=0.1, weight_decay=4e-5)
    conv = net.backbone.features[0].features[0].weight
    gamma = net.backbone.features[0].features[1].gamma
    dense_w, dense_b = net.head.dense.weight, net.head.dense.bias
    np.testing.assert_allclose(opt.get_lr_parameter(conv).asnumpy(), lr * 0.1, rtol=1e-6)
    np.testing.assert_allclose(opt.get_lr_parameter(gamma).asnumpy(), lr * 0.1, rtol=1e-6)
    np.testing.assert_allclose(opt.get_lr_parameter(dense_w).asnumpy(), lr, rtol=1e-6)
    np.testing.assert_allclose(opt.get_lr_parameter(dense_b).asnumpy(), lr, rtol=1e-6)
    decay = {p.name: float(wd) for p, wd in zip(opt.parameters, opt.weight_decay)} if isinstance(opt.weight_decay, tuple) else None
    if decay is not None:
        assert decay[conv.name] == pytest.approx(4e-5) and decay[gamma.name] == 0.0 and decay[dense_b.name] == 0.0
    assert len(opt.parameters) == len(net.trainable_params())
    with pytest.raises(ValueError, match="backbone_lr_scale"):
        build_transfer_optimizer(net, lr, backbone_lr_scale=0.0)


def test_frozen_backbone_run_trains_only_the_head_and_reuses_the_cache(tmp_path):
    from ms_impl.trainer.feature_cache import FeatureSettings
    from ms_impl.trainer.transfer import train_frozen_backbone
    from transfer_fixtures import IMAGE_SIZE, calibrated_backbone_net, write_dataset

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
