"""class_balance: none | weights | sampler -- loss weights, the balanced epoch draw, the config key, the trainer's record."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ms_impl.trainer.balance import balanced_order, inverse_frequency_weights

SKEWED = np.repeat([0, 1, 2], [60, 30, 10])


def test_inverse_frequency_weights_on_a_skewed_set():
    labels = np.repeat([0, 1, 2], [10, 5, 1])
    weights = inverse_frequency_weights(labels, 3)
    np.testing.assert_allclose(weights, [16 / 30, 16 / 15, 16 / 3], rtol=1e-6)
    assert weights[labels].mean() == pytest.approx(1.0)  # the mean weight per image stays 1
    # every class then carries the same total weight
    np.testing.assert_allclose(np.bincount(labels, weights=weights[labels]), [16 / 3] * 3, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[3\]"):
        inverse_frequency_weights(labels, 4)


def test_balanced_order_draws_every_class_equally_often():
    order = balanced_order(SKEWED, np.random.default_rng([1, 0]))
    assert len(order) == len(SKEWED)
    per_class = np.bincount(SKEWED[order], minlength=3)
    assert per_class.sum() == 100 and per_class.max() - per_class.min() <= 1
    assert set(order[SKEWED[order] == 2]) == set(range(90, 100))  # the small class: every image, repeated
    assert len(set(order[SKEWED[order] == 0])) == per_class[0]  # the large class: a subset, no repeats


def test_the_sampler_order_is_a_function_of_seed_and_epoch():
    from ms_impl.trainer.dataset import epoch_order, train_order

    first = train_order(SKEWED, seed=3, epoch=2, class_balance="sampler")
    np.testing.assert_array_equal(first, train_order(SKEWED, seed=3, epoch=2, class_balance="sampler"))  # resume replays it
    assert not np.array_equal(first, train_order(SKEWED, seed=3, epoch=3, class_balance="sampler"))
    assert not np.array_equal(first, train_order(SKEWED, seed=4, epoch=2, class_balance="sampler"))
    for epoch in range(5):
        counts = np.bincount(SKEWED[train_order(SKEWED, 3, epoch, "sampler")], minlength=3)
        assert counts.max() - counts.min() <= 1
    # none and weights keep the plain shuffle of every image
    for mode in ("none", "weights"):
        np.testing.assert_array_equal(train_order(SKEWED, 3, 2, mode), epoch_order(len(SKEWED), 3, 2))


def test_both_twins_weigh_the_loss_like_the_reference(ms_pynative):
    import mindspore as ms
    import torch

    from ms_impl.loss import smoothed_cross_entropy as ms_loss
    from parity.core.loss import smoothed_cross_entropy as reference
    from pt_impl.loss import smoothed_cross_entropy as pt_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    weights = inverse_frequency_weights(np.repeat([0, 1, 2], [10, 5, 1]), 3)
    for smoothing in (0.0, 0.1):
        expected = reference(logits, labels, smoothing, weights)
        assert expected != pytest.approx(reference(logits, labels, smoothing))  # the weights matter here
        pt = pt_loss(smoothing, weights)(torch.from_numpy(logits), torch.from_numpy(labels)).item()
        ms_value = float(ms_loss(smoothing, weights)(ms.Tensor(logits), ms.Tensor(labels.astype(np.int32))).asnumpy())
        assert pt == pytest.approx(expected, rel=1e-5) and ms_value == pytest.approx(expected, rel=1e-5)
    # all weights 1 is the unweighted loss
    assert reference(logits, labels, 0.1, np.ones(3)) == pytest.approx(reference(logits, labels, 0.1))


def test_config_key_defaults_to_none_on_every_device_and_is_checked(tmp_path):
    from ms_impl.trainer.run import build_config
    from ms_impl.trainer.errors import UsageError

    for device in ("CPU", "GPU", "Ascend"):
        assert build_config(["--device", device, "--output-dir", str(tmp_path)]).class_balance == "none"
    assert build_config(["--class-balance", "sampler", "--output-dir", str(tmp_path)]).class_balance == "sampler"
    with pytest.raises(UsageError, match="--class-balance: expected one of none, weights, sampler"):
        build_config(["--class-balance", "inverse", "--output-dir", str(tmp_path)])


def skewed_tree(root: Path, class_names, train_counts) -> None:
    """root/{train,val}/<class>/*.png, 32 px; train counts per class as given, 1 val image each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, counts in (("train", train_counts), ("val", [1] * len(class_names))):
        for name, count in zip(class_names, counts):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["weights", "sampler"])
def test_frozen_backbone_run_records_its_class_balance(mode, tmp_path, ms_pynative):
    import yaml as pyyaml

    from ms_impl.train import main

    classes_file = Path(__file__).resolve().parents[1] / "configs" / "garbage26_classes.yaml"
    class_names = [c["name"] for c in pyyaml.safe_load(classes_file.read_text(encoding="utf-8"))["classes"]]
    counts = [6] + [2] * (len(class_names) - 1)  # class 0 three times as large as the others
    skewed_tree(tmp_path / "data", class_names, counts)
    out = tmp_path / "run"
    code = main(["--device", "CPU", "--mode", "pynative", "--data-path", str(tmp_path / "data"), "--image-size", "32",
                 "--width-mult", "0.35", "--freeze-backbone", "true", "--epochs", "2", "--batch-size", "8",
                 "--class-balance", mode, "--output-dir", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_balance"] == mode
    log = (out / "train.log").read_text(encoding="utf-8")
    lines = [line for line in log.splitlines() if f" class balance: {mode}" in line]
    assert len(lines) == 1 and f"train images per class 2 ({class_names[1]}) .. 6 ({class_names[0]})" in lines[0]
    if mode == "weights":
        total = sum(counts)
        expected = [total / (len(counts) * n) for n in counts]
        np.testing.assert_allclose(summary["class_weights"], expected, rtol=1e-5)
    else:
        assert summary["class_weights"] is None
