"""Config loading: per-device files, class list, command-line overrides and their errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ms_impl.trainer.config import CONFIG_DIR, DEFAULT_CONFIG, load_classes, load_config
from ms_impl.trainer.errors import UsageError

CATEGORIES = {"干垃圾": "Residual waste", "可回收物": "Recyclable", "湿垃圾": "Kitchen waste", "有害垃圾": "Hazardous waste"}


@pytest.mark.parametrize("device", ["CPU", "GPU", "Ascend"])
def test_device_picks_its_config_with_the_same_keys(device):
    cfg = load_config(["--device", device])
    assert cfg.device == device
    assert Path(cfg.config_path) == DEFAULT_CONFIG[device]
    cpu_keys = set(load_config([]).keys())
    assert set(cfg.keys()) == cpu_keys  # every device file holds every hyperparameter
    assert cfg.fast_conv == "auto"  # our CPU kernels where they build; GPU/Ascend use nn.Conv2d regardless


def test_class_list_is_the_garbage_lab_order_with_names_and_categories():
    classes = load_config([]).classes
    assert len(classes) == 26
    assert [c.index for c in classes] == list(range(26))
    assert (classes[0].name, classes[0].name_zh) == ("Seashell", "贝壳")
    assert (classes[2].name, classes[11].name, classes[21].name, classes[25].name) == (
        "Old Mirror", "Plastic Bottle", "Banana Peel", "Paint bucket")
    assert {c.category_zh: c.category for c in classes} == CATEGORIES
    assert [c.category_zh for c in classes].count("有害垃圾") == 4


def test_overrides_take_the_file_value_type():
    cfg = load_config(["--lr_max", "0.05", "--epochs=3", "--force", "true", "--data_path", "/d", "--lr_init", "1"])
    assert cfg.lr_max == 0.05 and isinstance(cfg.lr_max, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.force is True
    assert cfg.data_path == "/d"
    assert isinstance(cfg.lr_init, float)


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "0.1"], "unknown option(s) --learning_rate"),
    (["--epochs", "two"], "--epochs: expected int, got 'two'"),
    (["--force", "maybe"], "--force: expected bool"),
    (["--mode", "eager"], "--mode: expected one of graph, pynative"),
    (["--fast_conv", "fast"], "--fast_conv: expected one of auto, on, off"),
    (["--epochs"], "--epochs: missing value"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_overrides_are_rejected_clearly(argv, message):
    with pytest.raises(UsageError) as err:
        load_config(argv)
    assert message in str(err.value)


def test_config_flag_picks_a_file_and_device_flag_overrides_its_device(tmp_path):
    text = (CONFIG_DIR / "garbage26_cpu.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^epochs: \d+", "epochs: 5", text).replace("classes_file: garbage26_classes.yaml",
                                                          f"classes_file: {CONFIG_DIR / 'garbage26_classes.yaml'}")
    custom = tmp_path / "mine.yaml"
    custom.write_text(text, encoding="utf-8")
    cfg = load_config(["--config", str(custom), "--device", "GPU"])
    assert (cfg.epochs, cfg.device, len(cfg.classes)) == (5, "GPU", 26)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="nope.yaml: config file not found"):
        load_config(["--config", str(tmp_path / "nope.yaml")])


def test_class_file_must_list_classes_in_index_order(tmp_path):
    bad = tmp_path / "classes.yaml"
    bad.write_text(
        "classes:\n"
        "  - {index: 1, name: B, name_zh: b, category_zh: x, category: X}\n"
        "  - {index: 0, name: A, name_zh: a, category_zh: x, category: X}\n", encoding="utf-8")
    with pytest.raises(UsageError, match="class 'B' has index 1, expected 0"):
        load_classes(bad)
