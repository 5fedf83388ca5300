"""The frozen recipe's whole-photo view (issue 12): `transforms.whole_transforms`, `feature_whole`, `tta: flip+whole`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import IMAGE_SIZE, calibrated_backbone_net, write_dataset


@pytest.fixture(autouse=True)
def _pynative(ms_pynative):
    yield


def _normalised(rgb):
    from parity.core import preprocess

    return (np.asarray(rgb, np.float64) - np.asarray(preprocess.MEAN_RGB)) / np.asarray(preprocess.STD_RGB)


def _encoded_stripes(tmp_path):
    """A 3:1 photo, red | green | blue thirds: the center crop sees only green, the whole photo all three."""
    from PIL import Image

    pixels = np.zeros((32, 96, 3), np.uint8)
    pixels[:, :32], pixels[:, 32:64], pixels[:, 64:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    path = tmp_path / "stripes.png"
    Image.fromarray(pixels).save(path)
    return np.fromfile(path, np.uint8)


def test_whole_transform_keeps_the_whole_photo_and_the_crop_does_not(tmp_path):
    from mindspore.dataset import transforms

    from ms_impl.transforms import eval_transforms, whole_transforms

    encoded = _encoded_stripes(tmp_path)
    whole = np.asarray(transforms.Compose(whole_transforms(32))(encoded), np.float64)
    crop = np.asarray(transforms.Compose(eval_transforms(32))(encoded), np.float64)
    assert whole.shape == crop.shape == (3, 32, 32)
    # whole: squashed 3:1 -> 1:1, so each colour fills a third of the width (interior columns exact)
    for columns, rgb in ((slice(1, 9), (255, 0, 0)), (slice(12, 20), (0, 255, 0)), (slice(23, 31), (0, 0, 255))):
        np.testing.assert_allclose(whole[:, :, columns], np.broadcast_to(_normalised(rgb)[:, None, None], (3, 32, 8)), atol=1e-4)
    # eval crop: shorter side to 37, center 32 of 111 columns -> all green
    np.testing.assert_allclose(crop, np.broadcast_to(_normalised((0, 255, 0))[:, None, None], (3, 32, 32)), atol=1e-4)


@pytest.mark.parametrize("whole_prob", [0.0, 0.25, 1.0])
def test_train_transforms_mix_whole_photo_views_at_train_whole_prob(tmp_path, whole_prob):
    import mindspore.dataset as ds

    from ms_impl.transforms import train_transforms

    encoded = _encoded_stripes(tmp_path)
    draws = 400
    seed = ds.config.get_seed()
    ds.config.set_seed(5)
    try:
        data = ds.NumpySlicesDataset({"image": [encoded] * draws}, shuffle=False)
        # crops of at most 10% of the area are narrower than a stripe: they never show red and blue at once
        data = data.map(train_transforms(32, scale=(0.05, 0.1), color_jitter=0.0, whole_prob=whole_prob), input_columns="image")
        views = [view for (view,) in data.create_tuple_iterator(output_numpy=True)]
    finally:
        ds.config.set_seed(seed)
    # binomial(400, 0.25): 4 standard deviations = 0.087
    assert abs(_count_whole_views(views) / draws - whole_prob) < 0.09


def _count_whole_views(views) -> int:
    """Views of the stripes photo that show red at one edge and blue at the other: whole-photo views."""
    red, blue = _normalised((255, 0, 0)), _normalised((0, 0, 255))
    count = 0
    for view in views:
        left, right = view[:, 16, 2], view[:, 16, 29]  # red | blue, or blue | red when flipped
        count += any(np.allclose(a, left, atol=1e-3) and np.allclose(b, right, atol=1e-3) for a, b in ((red, blue), (blue, red)))
    return count


@pytest.mark.parametrize("whole_prob", [0.0, 1.0])
def test_trainer_dataset_draws_whole_views_at_train_whole_prob(tmp_path, whole_prob):
    """The trainer's own pipeline (dataset.train_dataset) applies cfg.train_whole_prob."""
    from types import SimpleNamespace

    from PIL import Image

    from ms_impl.trainer import dataset

    folder = tmp_path / "data" / "train" / "Stripes"
    folder.mkdir(parents=True)
    pixels = np.zeros((32, 96, 3), np.uint8)
    pixels[:, :32], pixels[:, 32:64], pixels[:, 64:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    for i in range(8):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    images = dataset.scan_split(tmp_path / "data", "train", ["Stripes"])
    cfg = SimpleNamespace(seed=0, crop_scale_min=0.05, color_jitter=0.0, hflip_prob=0.5, train_whole_prob=whole_prob,
                          train_augment=True, num_workers=1, batch_size=4)
    # the crop's scale range is (crop_scale_min, 1): crops may show both edges too, so count on the crops' absence
    views = [v for batch in dataset.train_dataset(images, cfg, 32, epoch=0).create_tuple_iterator(output_numpy=True, num_epochs=1)
             for v in batch[0]]
    assert len(views) == 8
    whole = _count_whole_views(views)
    assert whole == 8 if whole_prob == 1.0 else whole < 8


def test_train_whole_prob_rules():
    from ms_impl.trainer.config import load_config
    from ms_impl.trainer.errors import UsageError

    with pytest.raises(UsageError, match="--train-whole-prob: .*cached features"):
        load_config(["--pretrained", "w.pth", "--freeze-backbone", "true", "--train-whole-prob", "0.5"])
    with pytest.raises(UsageError, match="--train-whole-prob: .*below 0.05"):
        load_config(["--train-whole-prob", "0.01"])
    assert load_config(["--train-whole-prob", "0.05"]).train_whole_prob == 0.05


def test_whole_views_have_their_own_cache_key_and_need_one_view():
    from ms_impl.trainer.feature_cache import FeatureSettings

    assert "whole" not in FeatureSettings(IMAGE_SIZE).key_fields()  # eval-crop caches keep their keys
    assert FeatureSettings(IMAGE_SIZE, whole=True).key_fields() == {"image_size": IMAGE_SIZE, "feature_views": 1, "whole": True}
    with pytest.raises(ValueError, match="feature_views must be 1"):
        FeatureSettings(IMAGE_SIZE, feature_views=2, whole=True)


def test_view_mean_logits_is_the_mean_over_views():
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2Head
    from ms_impl.trainer.metrics import average_flip_logits
    from ms_impl.trainer.transfer import head_logits, view_mean_logits

    rng = np.random.default_rng(0)
    head = MobileNetV2Head(8, 3, dropout=0.0)
    head.dense.weight.set_data(ms.Tensor(rng.normal(size=(3, 8)).astype(np.float32)))
    head.dense.bias.set_data(ms.Tensor(np.array([1.0, -2.0, 0.5], np.float32)))
    views = [rng.normal(size=(5, 8)).astype(np.float32) for _ in range(4)]
    np.testing.assert_array_equal(view_mean_logits(head, views[:1]), head_logits(head, views[0]))
    np.testing.assert_array_equal(view_mean_logits(head, views[:2]),
                                  average_flip_logits(head_logits(head, views[0]), head_logits(head, views[1])))
    # the head is affine: the mean of its logits is its logits on the mean feature
    np.testing.assert_allclose(view_mean_logits(head, views), head_logits(head, np.mean(views, axis=0)), rtol=1e-5, atol=1e-5)


def _four_view_logits(net, files):
    """The network's logits averaged over eval crop, its mirror, whole photo, its mirror (computed directly)."""
    import mindspore as ms
    from mindspore.dataset import transforms

    from ms_impl.transforms import eval_transforms, whole_transforms

    net.set_train(False)
    out = []
    for ops in (eval_transforms, whole_transforms):
        pipeline = transforms.Compose(ops(IMAGE_SIZE))
        images = np.stack([pipeline(np.fromfile(f, np.uint8)) for f in files]).astype(np.float32)
        out.append(net(ms.Tensor(images)).asnumpy().astype(np.float64))
        out.append(net(ms.Tensor(np.ascontiguousarray(images[..., ::-1]))).asnumpy().astype(np.float64))
    return np.mean(out, axis=0)


def test_frozen_run_trains_on_whole_views_and_evaluates_over_four_views(tmp_path):
    import os

    from ms_impl.trainer.dataset import ImageList, eval_dataset
    from ms_impl.trainer.feature_cache import FeatureSettings
    from ms_impl.trainer.metrics import evaluate, result_from_logits
    from ms_impl.trainer.transfer import train_frozen_backbone

    data = write_dataset(str(tmp_path / "data"), per_class=4, splits=("train",))
    files = [p for p, _ in data["train"]]
    labels = [l for _, l in data["train"]]
    net = calibrated_backbone_net(files)
    run = train_frozen_backbone(net, files, labels, files, labels, cache_dir=str(tmp_path / "cache"),
                                train_settings=FeatureSettings(IMAGE_SIZE), val_settings=FeatureSettings(IMAGE_SIZE),
                                epochs=3, batch_size=4, lr_max=0.05, dropout=0.0, label_smoothing=0.0, progress=False,
                                feature_norm="center", feature_flip=True, feature_whole=True, tta="flip+whole")
    cached = sorted(n.rsplit("-", 1)[0] for n in os.listdir(tmp_path / "cache") if n.endswith(".npz"))
    assert cached == ["train", "train-flip", "train-whole", "train-whole-flip", "val", "val-flip", "val-whole", "val-whole-flip"]
    # the reported val logits are the saved network's own logits, averaged over the four views
    expected = _four_view_logits(net, files)
    np.testing.assert_allclose(run.val_logits, expected, rtol=1e-4, atol=1e-4)
    # eval.py's path (metrics.evaluate with the whole-photo dataset) gives the same numbers
    images = ImageList("val", [Path(f) for f in files], np.asarray(labels))
    with pytest.raises(ValueError, match="whole_dataset"):
        evaluate(net, eval_dataset(images, IMAGE_SIZE, 4, 1), 3, tta="flip+whole")
    result = evaluate(net, eval_dataset(images, IMAGE_SIZE, 4, 1), 3, tta="flip+whole",
                      whole_dataset=eval_dataset(images, IMAGE_SIZE, 4, 1, whole=True))
    direct = result_from_logits(expected, np.asarray(labels), 3)
    np.testing.assert_array_equal(result.confusion, direct.confusion)
    assert result.loss == pytest.approx(direct.loss, rel=1e-4)
    # predict.py's path: the same four-view mean, as class probabilities
    from ms_impl import predict
    from ms_impl.trainer.classes import ClassInfo
    from ms_impl.trainer.metrics import softmax

    classes = [ClassInfo(i, f"C{i}", f"类{i}", "干垃圾", "Residual waste") for i in range(3)]
    records, errors = predict.predict_files(net, files, classes, IMAGE_SIZE, top_k=3, tta="flip+whole")
    assert errors == [] and len(records) == len(files)
    for record, row in zip(records, softmax(expected)):
        for entry in record["top_k"]:
            assert entry["probability"] == pytest.approx(row[entry["index"]], abs=1e-5)


def test_eval_and_predict_default_to_the_tta_of_the_checkpoints_run(tmp_path):
    """eval.py and predict.py without --tta use the run's own evaluation mode, read from its summary.json."""
    import json

    from ms_impl.trainer.run_folder import recorded_tta

    checkpoint = tmp_path / "run" / "checkpoints" / "mobilenetv2-best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert recorded_tta(checkpoint) is None  # a checkpoint from elsewhere: no summary
    summary = tmp_path / "run" / "summary.json"
    summary.write_text(json.dumps({"tta": "flip+whole", "final": {}}), encoding="utf-8")
    assert recorded_tta(checkpoint) == "flip+whole"
    for text in ("{not json", json.dumps({"tta": "sideways"}), json.dumps(["tta"])):
        summary.write_text(text, encoding="utf-8")
        assert recorded_tta(checkpoint) is None


def test_parse_config_reports_the_keys_the_command_line_sets():
    """eval.py keeps an explicit --tta (even one equal to the default) and otherwise uses the checkpoint's."""
    from ms_impl.trainer.config import parse_config

    cfg, known = parse_config(["--tta", "none", "--epochs", "3"])
    assert known.command_line_keys == {"tta", "epochs"} and cfg.tta == "none"
    _, known = parse_config(["--device", "CPU", "--pretrained", "w.pth"])  # the recipe's values are not the user's
    assert known.command_line_keys == {"device", "pretrained"}
