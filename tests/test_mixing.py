"""Mixup and CutMix (--mixup-alpha, --cutmix-alpha): the mixed batch, its loss, replay, and the trainer using them."""
from __future__ import annotations

import numpy as np
import pytest

from ms_impl.trainer.mixing import MixSettings, mix_batch
from tests.helpers import TINY_TRAIN


def kind_of(mixed, images, lam):
    """"cutmix" when every image differs from itself only inside one box (lam = the share outside it), "mixup"
    when the batch is lam * images + (1 - lam) * a permutation of them; "none" when nothing changed."""
    changed = np.any(mixed != images, axis=(0, 1))
    if not changed.any():
        return "none"
    rows, cols = np.nonzero(changed)
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    if box.all() and lam == pytest.approx(1.0 - box.size / changed.size):
        return "cutmix"
    partners = [[k for k in range(len(images)) if np.allclose(m, lam * x + (1 - lam) * images[k], atol=1e-5)]
                for m, x in zip(mixed, images)]
    return "mixup" if all(partners) else "other"


def batch(n=8, size=12):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, 3, size, size)).astype(np.float32), np.arange(n, dtype=np.int32) % 5


def test_mixup_is_a_convex_blend_with_the_partner_and_its_label():
    images, labels = batch()
    mixed, partner_labels, lam = mix_batch(images, labels, MixSettings(mixup_alpha=0.4), seed=1, global_step=7)
    assert 0.0 < lam < 1.0 and mixed.dtype == np.float32 and mixed.shape == images.shape
    # the partner of each image: the one image whose blend reproduces it
    for i in range(len(images)):
        j = [k for k in range(len(images))
             if np.allclose(mixed[i], lam * images[i] + (1 - lam) * images[k], atol=1e-6)]
        assert len(j) == 1 and partner_labels[i] == labels[j[0]]
    assert sorted(partner_labels.tolist()) == sorted(labels.tolist())  # a permutation of the batch


def test_cutmix_pastes_one_box_of_the_partner_and_lam_is_the_area_left():
    images, labels = batch(size=16)
    for step in range(20):
        mixed, partner_labels, lam = mix_batch(images, labels, MixSettings(cutmix_alpha=1.0), seed=2, global_step=step)
        changed = np.any(mixed != images, axis=(0, 1))  # pixels taken from a partner, any image
        rows, cols = np.nonzero(changed)
        if rows.size:  # the box is a rectangle, and lam is exactly the share outside it
            box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all()
            assert lam == pytest.approx(1.0 - box.size / changed.size)
            for i in range(len(images)):  # inside the box: one other image of the batch, with that image's label
                inside = mixed[i][:, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
                sources = [k for k in range(len(images))
                           if np.array_equal(inside, images[k][:, rows.min():rows.max() + 1, cols.min():cols.max() + 1])]
                assert labels[sources[0]] == partner_labels[i]
        else:  # a box of zero size (a share that rounds to no pixel): nothing mixed
            assert lam == 1.0


def test_mixing_replays_from_seed_and_step_and_is_off_by_default():
    images, labels = batch()
    settings = MixSettings(mixup_alpha=0.2, cutmix_alpha=1.0)
    a = mix_batch(images, labels, settings, seed=5, global_step=11)
    b = mix_batch(images, labels, settings, seed=5, global_step=11)
    c = mix_batch(images, labels, settings, seed=5, global_step=12)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]  # a resumed run draws the same
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(mix_batch(images, labels, settings, 5, 11, shard_id=1)[0], a[0])  # each rank its own draw
    # both on: each batch is one of the two, and both occur
    def kinds(settings):
        draws = [mix_batch(images, labels, settings, 5, step) for step in range(30)]
        return {kind_of(mixed, images, lam) for mixed, _, lam in draws}

    assert kinds(settings) == {"cutmix", "mixup"}
    assert kinds(MixSettings(mixup_alpha=0.2)) <= {"mixup", "none"}
    assert kinds(MixSettings(cutmix_alpha=1.0)) <= {"cutmix", "none"}
    with pytest.raises(ValueError, match="mixup_alpha must be a finite number >= 0"):
        MixSettings(mixup_alpha=-0.5)
    off = mix_batch(images, labels, MixSettings(), seed=5, global_step=11)
    assert off[0] is images and off[1] is labels and off[2] == 1.0


def test_mixed_loss_is_lam_weighted_cross_entropy_of_both_labels(ms_pynative):
    import mindspore as ms
    from mindspore import nn

    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.trainer.train_step import NetWithLoss

    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.normal(size=(6, 10)).astype(np.float32))
    labels = ms.Tensor(np.array([0, 1, 2, 3, 4, 0], np.int32))
    partner = ms.Tensor(np.array([4, 4, 1, 0, 2, 3], np.int32))
    net = NetWithLoss(nn.Dense(10, 5), smoothed_cross_entropy(0.1))
    plain, other = float(net(x, labels).asnumpy()), float(net(x, partner).asnumpy())
    lam = np.float32(0.3)
    mixed = float(net(x, labels, partner, ms.Tensor(lam)).asnumpy())
    assert mixed == pytest.approx(lam * plain + (1 - lam) * other, rel=1e-6)
    assert float(net(x, labels, labels, ms.Tensor(np.float32(1.0))).asnumpy()) == pytest.approx(plain, rel=1e-6)


def test_the_trainer_mixes_every_step(synthetic_cache, tmp_path, monkeypatch):
    """The option reaches the epoch loop (GRAPH mode, the trainer's: the step compiled with the partner labels and
    lam): every step's batch goes through mix_batch with the run's seed and its global step (what makes a resumed
    run replay the same mixing)."""
    from ms_impl.train import main as train_main
    from ms_impl.trainer import mixing

    from ms_impl.trainer import train_step

    calls, stepped = [], []
    real_mix, real_build = mixing.mix_batch, train_step.build_train_step

    def spy(images, labels, settings, seed, global_step, shard_id=0):
        out = real_mix(images, labels, settings, seed, global_step, shard_id)
        calls.append((seed, global_step, settings, out[2], shard_id, out))
        return out

    def build_spy(*args, **kwargs):
        step = real_build(*args, **kwargs)

        def recorded(*inputs):
            stepped.append([t.asnumpy() for t in inputs])
            return step(*inputs)
        return recorded

    monkeypatch.setattr(mixing, "mix_batch", spy)
    monkeypatch.setattr(train_step, "build_train_step", build_spy)
    code = train_main(TINY_TRAIN + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(tmp_path / "run"),
                                    "--epochs", "2", "--seed", "4",
                                    "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0"])
    assert code == 0
    steps = len(calls)
    assert steps > 0 and [c[1] for c in calls] == list(range(steps)) and {c[0] for c in calls} == {4}
    assert calls[0][2] == MixSettings(0.2, 1.0) and any(c[3] < 1.0 for c in calls) and {c[4] for c in calls} == {0}
    # each step trains on what mix_batch returned: the mixed images, both label sets and lam
    assert len(stepped) == steps
    for (*_, (mixed, partner_labels, lam)), (images, labels, partners, lam_in) in zip(calls, stepped):
        assert np.array_equal(images, mixed) and np.array_equal(partners, partner_labels) and lam_in == np.float32(lam)
        assert labels.shape == partners.shape
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "mixing each training batch: mixup alpha 0.2 and CutMix alpha 1" in log


def test_frozen_head_mixup_mixes_the_feature_rows(ms_pynative, monkeypatch):
    """--mixup-alpha with a frozen backbone: the head's batches of cached features are mixed (seeded by the run's
    seed and the step), so the trained head differs from the unmixed one and two runs agree exactly."""
    from ms_impl.mobilenetv2 import MobileNetV2Head
    from ms_impl.trainer import mixing
    from ms_impl.trainer.transfer import train_head_on_features

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 8)
    features = (rng.normal(size=(32, 16)) + 2.0 * np.eye(4, 16)[labels]).astype(np.float32)
    calls = []
    real = mixing.mix_batch
    monkeypatch.setattr(mixing, "mix_batch", lambda *a, **k: calls.append(a[4]) or real(*a, **k))

    def trained(alpha):
        head = MobileNetV2Head(16, 4, dropout=0.0)
        for p in head.get_parameters():  # the same start for every head
            p.set_data(type(p)(np.full(p.shape, 0.01, np.float32)))
        result = train_head_on_features(head, features, labels, epochs=3, batch_size=8, lr_max=0.1, seed=7,
                                        mixup_alpha=alpha)
        return head.dense.weight.asnumpy(), result.losses

    plain, _ = trained(0.0)
    assert calls == []
    mixed, losses = trained(0.4)
    assert calls == list(range(12)) and np.all(np.isfinite(losses))  # 4 steps x 3 epochs, one draw per step
    again, _ = trained(0.4)
    assert np.array_equal(mixed, again) and not np.allclose(mixed, plain)


@pytest.mark.parametrize("extra, message", [
    (["--cutmix-alpha", "1", "--pretrained", "W", "--freeze-backbone", "true"], "--cutmix-alpha: pastes image regions"),
    (["--cutmix-alpha", "-1"], "--cutmix-alpha"),
    (["--mixup-alpha", "0.2", "--batch-size", "1"], "--mixup-alpha: mixes the images of a batch with each other"),
])
def test_mixing_usage_errors(extra, message, synthetic_cache, tmp_path, capsys):
    from ms_impl.train import main as train_main

    out = tmp_path / "run"
    code = train_main(TINY_TRAIN + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not out.exists()
