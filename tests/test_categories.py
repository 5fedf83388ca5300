"""Garbage categories (summed-probability rule, accuracy, confusion), flip TTA, feature normalisation folding,
and the recommended recipes the default transfer-learning commands resolve to."""
from __future__ import annotations

import numpy as np
import pytest

# 5 classes in 3 categories: classes 0, 1, 2 -> category 0; 3 -> 1; 4 -> 2
GROUPS = np.array([0, 0, 0, 1, 2])


def test_category_is_chosen_by_summed_probability_not_by_the_top_class():
    from ms_impl.trainer.metrics import category_predictions, category_probabilities

    # top-1 class is 3 (category 1, p = 0.4), but classes 0-2 together hold 0.5 (category 0)
    probs = np.array([[0.16, 0.17, 0.17, 0.40, 0.10],
                      [0.05, 0.05, 0.05, 0.05, 0.80]])
    logits = np.log(probs) + 3.0  # any shift: softmax gives back `probs`
    np.testing.assert_allclose(category_probabilities(logits, GROUPS), [[0.5, 0.4, 0.1], [0.15, 0.05, 0.8]], atol=1e-12)
    assert logits[0].argmax() == 3
    assert category_predictions(logits, GROUPS).tolist() == [0, 2]


def test_category_accuracy_and_confusion_on_known_logits():
    from ms_impl.trainer.metrics import category_accuracy, category_confusion, result_from_logits

    logits = np.full((4, 5), -10.0)
    logits[0, 1] = 5  # true class 0, predicted class 1: wrong class, right category
    logits[1, 3] = 5  # true 3, predicted 3: right
    logits[2, 0] = 5  # true 4 (category 2), predicted class 0 (category 0): wrong category
    logits[3, 4] = 5  # true 4, right
    labels = np.array([0, 3, 4, 4])
    assert category_accuracy(logits, labels, GROUPS) == pytest.approx(0.75)
    np.testing.assert_array_equal(category_confusion(logits, labels, GROUPS), [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    result = result_from_logits(logits, labels, 5, groups=GROUPS)
    assert result.top1 == pytest.approx(0.5) and result.category_acc == pytest.approx(0.75)
    assert result_from_logits(logits, labels, 5).category_acc is None


def test_category_groups_of_the_project_class_list():
    from ms_impl.trainer.classes import category_groups, load_classes

    groups, zh, en = category_groups(load_classes())
    assert zh == ["干垃圾", "可回收物", "湿垃圾", "有害垃圾"]
    assert en == ["Residual waste", "Recyclable", "Kitchen waste", "Hazardous waste"]
    assert len(groups) == 26 and groups[22] == 3 and groups[8] == 1  # Battery: hazardous; Newspaper: recyclable


def test_category_table_text():
    from ms_impl.trainer.report import category_table

    text = category_table(np.array([[3, 1], [0, 4]]), ["干垃圾", "有害垃圾"])
    lines = text.splitlines()
    assert lines[1].split() == ["干垃圾", "3", "1", "0.750"]
    assert lines[-1] == "category accuracy 0.8750 (7/8)"


class _LeftMinusRight:
    """Builds a MindSpore cell whose class-0 logit is relu(mean of the left half) - 3 relu(mean of the right half)
    and class-1 logit 0: an image bright on the left is class 0, its mirror image strongly class 1."""

    @staticmethod
    def make():
        from mindspore import nn, ops

        class Net(nn.Cell):
            def construct(self, x):
                half = x.shape[-1] // 2
                left = ops.relu(x[..., :half].mean(axis=(1, 2, 3)))
                right = ops.relu(x[..., half:].mean(axis=(1, 2, 3)))
                score = left - 3 * right
                return ops.stack([score, ops.zeros_like(score)], axis=1)

        return Net()


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror(ms_pynative):
    import mindspore.dataset as ds

    from ms_impl.trainer.metrics import evaluate

    image = np.zeros((1, 3, 8, 8), np.float32)
    image[..., :4] = 1.0  # bright left half
    data = ds.NumpySlicesDataset({"image": image, "label": np.array([1], np.int32)}, shuffle=False).batch(1)
    net = _LeftMinusRight.make()
    plain = evaluate(net, data, 2)
    flipped = evaluate(net, data, 2, tta="flip")
    # plain logits [1, 0] -> class 0; mirror [-3, 0]; mean [-1, 0] -> class 1 (the label)
    assert (plain.top1, flipped.top1) == (0.0, 1.0)
    from parity.core.loss import smoothed_cross_entropy

    assert flipped.loss == pytest.approx(float(smoothed_cross_entropy(np.array([[-1.0, 0.0]]), np.array([1]), 0.0)), rel=1e-6)


def test_predict_flip_tta_changes_the_answer(ms_pynative, tmp_path):
    from PIL import Image

    from ms_impl import predict
    from ms_impl.trainer.classes import ClassInfo

    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[:, :20] = 255  # white left half
    path = str(tmp_path / "left.png")
    Image.fromarray(pixels).save(path)
    classes = [ClassInfo(0, "Left", "左", "干垃圾", "Residual waste"), ClassInfo(1, "Right", "右", "有害垃圾", "Hazardous waste")]
    net = _LeftMinusRight.make()
    plain, _ = predict.predict_files(net, [path], classes, 32, top_k=2)
    tta, _ = predict.predict_files(net, [path], classes, 32, top_k=2, tta="flip")
    assert plain[0]["top_k"][0]["name"] == "Left" and plain[0]["category_zh"] == "干垃圾"
    assert tta[0]["top_k"][0]["name"] == "Right" and tta[0]["category_zh"] == "有害垃圾"


def test_predict_reports_the_summed_category_and_its_probability():
    from ms_impl import predict
    from ms_impl.trainer.classes import ClassInfo

    classes = [ClassInfo(0, "A", "甲", "干垃圾", "Residual waste"), ClassInfo(1, "B", "乙", "干垃圾", "Residual waste"),
               ClassInfo(2, "C", "丙", "有害垃圾", "Hazardous waste")]
    record = predict.prediction_record("x/C/photo.jpg", np.log(np.array([0.3, 0.3, 0.4])), classes, top_k=3)
    assert record["top_k"][0]["name"] == "C"  # top class is hazardous...
    assert (record["category_zh"], record["category"]) == ("干垃圾", "Residual waste")  # ...but residual holds 0.6
    assert record["category_probability"] == pytest.approx(0.6)
    assert record["true_index"] == 2 and record["correct"] is True  # the folder names the true class


def test_normalisation_folds_into_the_dense_layer():
    from ms_impl.trainer.transfer import feature_statistics, fold_normalisation

    rng = np.random.default_rng(0)
    features = rng.normal(3.0, 2.0, size=(50, 6)).astype(np.float32)
    weight, bias = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    for how in ("none", "center", "standardize"):
        mean, std = feature_statistics(features, how)
        expected = ((features - mean) / std) @ weight.T + bias
        folded_w, folded_b = fold_normalisation(weight, bias, mean, std)
        np.testing.assert_allclose(features @ folded_w.T + folded_b, expected, rtol=1e-4, atol=1e-4)
    mean, std = feature_statistics(features, "standardize")
    normalised = (features - mean) / std
    np.testing.assert_allclose(normalised.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(axis=0), 1, atol=1e-4)


# ---------------------------------------------------------------- the two default transfer-learning commands


def test_pretrained_with_frozen_backbone_resolves_to_the_frozen_recipe():
    from ms_impl.trainer.run import build_config

    cfg = build_config(["--device", "CPU", "--data-path", "D", "--pretrained", "W", "--freeze-backbone", "true"])
    assert cfg.recipe == "frozen"
    for key, value in cfg.recipe_frozen.items():
        assert cfg[key] == value, key
    assert (cfg.feature_norm, cfg.feature_flip, cfg.feature_whole, cfg.tta, cfg.freeze_backbone) == ("center", True, True, "flip+whole", True)


def test_pretrained_alone_resolves_to_the_fine_tuning_recipe():
    from ms_impl.trainer.run import build_config

    cfg = build_config(["--device", "CPU", "--data-path", "D", "--pretrained", "W"])
    assert cfg.recipe == "finetune" and not cfg.freeze_backbone
    for key, value in cfg.recipe_finetune.items():
        assert cfg[key] == value, key
    # the measured fine-tuning recipe (README): head first, then everything with frozen BatchNorm and a tiny backbone LR
    assert (cfg.head_first_epochs, cfg.epochs, cfg.lr_max, cfg.backbone_lr_scale) == (30, 10, 0.005, 0.02)
    assert (cfg.freeze_bn, cfg.crop_scale_min, cfg.color_jitter, cfg.train_whole_prob, cfg.tta) == (True, 0.35, 0.1, 0.25, "flip+whole")
    assert cfg.freeze_layers == 4  # the stem and the first 3 blocks stay as pretrained (README: same CV, a faster step)


@pytest.mark.parametrize("device", ["CPU", "GPU", "Ascend"])
def test_every_device_file_holds_the_same_recipes(device):
    from ms_impl.trainer.config import load_config

    cpu = load_config(["--device", "CPU"])
    other = load_config(["--device", device])
    assert (other.recipe_frozen, other.recipe_finetune) == (cpu.recipe_frozen, cpu.recipe_finetune)


def test_explicit_options_win_over_the_recipe_and_scratch_is_untouched():
    from ms_impl.trainer.run import build_config
    from ms_impl.trainer.errors import UsageError

    cfg = build_config(["--pretrained", "W", "--epochs", "2", "--tta", "none"])
    assert (cfg.recipe, cfg.epochs, cfg.tta) == ("finetune", 2, "none")
    assert "epochs" not in cfg.recipe_applied and "lr_max" in cfg.recipe_applied
    scratch = build_config([])
    plain = build_config(["--recipe", "scratch", "--pretrained", "W"])
    assert scratch.recipe == "scratch" and scratch.recipe_applied == {}
    assert (plain.epochs, plain.lr_max, plain.head_first_epochs) == (scratch.epochs, scratch.lr_max, 0)
    with pytest.raises(UsageError, match="--recipe frozen: needs --pretrained"):
        build_config(["--recipe", "frozen"])
