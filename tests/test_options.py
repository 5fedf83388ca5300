"""One spelling per option: every tool's --help shows `--data-path` style only; `--data_path` still works.

Also: a misspelt option names the closest real one, and a YAML number written without a decimal point is a number.
"""
from __future__ import annotations

import re

import pytest

from ms_impl import datatools, export, predict
from ms_impl.trainer.config import load_config
from ms_impl.trainer.errors import UsageError
from parity.core.options import dashed, option_names, unknown_options_text
from parity.harness import bench, compare, convert_cli, diff

UNDERSCORE_OPTION = re.compile(r"--[a-z0-9]+_[a-z0-9_]+")


def test_dashed_respells_options_only():
    assert dashed(["--data_path", "my_dir", "--top_k=3", "-h", "a_b.jpg", "--", "--not_an_option"]) == \
        ["--data-path", "my_dir", "--top-k=3", "-h", "a_b.jpg", "--", "--not_an_option"]


def test_a_near_miss_names_the_option():
    assert unknown_options_text(["--epoch"], ["--epochs", "--seed"]) == "--epoch (did you mean --epochs?)"
    assert unknown_options_text(["--zzz=1"], ["--epochs"]) == "--zzz"


def test_trainer_takes_both_spellings_and_suggests_close_ones():
    dash = load_config(["--data-path", "/d", "--weight-decay", "0.001", "--freeze-bn"])
    underscore = load_config(["--data_path", "/d", "--weight_decay=0.001", "--freeze_bn"])
    assert (dash.data_path, dash.weight_decay, dash.freeze_bn) == ("/d", 0.001, True)
    assert (underscore.data_path, underscore.weight_decay, underscore.freeze_bn) == ("/d", 0.001, True)
    with pytest.raises(UsageError, match=re.escape("unknown option(s) --epoch (did you mean --epochs?)")):
        load_config(["--epoch", "3"])


HELP = {  # each tool's own entry, as its command line calls it
    "train": lambda argv: load_config(argv),
    "predict": predict.main,
    "export": export.main,
    "datatools": datatools.main,
    "datatools split": lambda argv: datatools.main(["split", *argv]),
    "datatools stats": lambda argv: datatools.main(["stats", *argv]),
    "parity check": compare.main,
    "parity diff": diff.main,
    "parity bench": bench.main,
    "convert": convert_cli.main,
}


@pytest.mark.parametrize("tool", sorted(HELP))
def test_help_shows_dashes_only(tool, capsys):
    try:
        code = HELP[tool](["--help"])
    except SystemExit as stop:
        code = stop.code
    assert code in (0, None)
    text = capsys.readouterr().out
    assert "--" in text and UNDERSCORE_OPTION.findall(text) == []


@pytest.mark.parametrize("parser, argv, expected", [
    (predict.build_parser, ["--checkpoint", "c.ckpt", "x.jpg", "--top_k", "3", "--uncertain_below=0.2"],
     {"top_k": 3, "uncertain_below": 0.2}),
    (export.build_parser, ["--checkpoint", "c.ckpt", "--format", "onnx", "--image_size", "96", "--batch_size", "2"],
     {"image_size": 96, "batch_size": 2}),
    (datatools.build_parser, ["stats", "d", "--image_size", "64"], {"image_size": 64}),
    (compare.build_parser, ["--image_size", "96", "--num_classes", "10", "--fast_conv", "on"],
     {"image_size": 96, "num_classes": 10, "fast_conv": "on"}),
    (diff.build_parser, ["a.pth", "b.ckpt", "--per_op", "--image_size", "96"], {"per_op": True, "image_size": 96}),
])
def test_every_tool_takes_the_underscore_spelling_too(parser, argv, expected):
    underscore = vars(parser().parse_args(argv))
    dash = vars(parser().parse_args(dashed(argv)))
    assert underscore == dash and {k: underscore[k] for k in expected} == expected


def test_tools_name_the_closest_option(capsys):
    with pytest.raises(SystemExit) as stop:
        datatools.build_parser().parse_args(["split", "a", "b", "--forse"])
    assert stop.value.code == 2
    assert "--forse (did you mean --force?)" in capsys.readouterr().err
    assert "--top-k" in option_names(predict.build_parser())


def test_yaml_numbers_without_a_decimal_point_are_numbers(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("weight_decay: 1e-4\nlr_max: 5e-2\nepochs: 3\n", encoding="utf-8")
    cfg = load_config(["--config", str(config)])
    assert cfg.weight_decay == 1e-4 and isinstance(cfg.weight_decay, float) and cfg.lr_max == 0.05
    config.write_text("weight_decay: 1e-x\n", encoding="utf-8")
    with pytest.raises(UsageError, match="weight_decay: expected float, got '1e-x'"):
        load_config(["--config", str(config)])
    config.write_text("epochs: '3.5'\n", encoding="utf-8")
    with pytest.raises(UsageError, match="epochs: expected int"):
        load_config(["--config", str(config)])


def test_smoke_runs_cap_the_sizes_only_when_asked(monkeypatch):
    monkeypatch.delenv("MBV2_SMOKE", raising=False)
    normal = load_config(["--epochs", "7"])
    assert (normal.epochs, normal.mode, normal.smoke) == (7, "graph", {})
    monkeypatch.setenv("MBV2_SMOKE", "1")
    smoke = load_config(["--epochs", "7", "--synthetic-val-per-class", "1"])
    assert (smoke.epochs, smoke.warmup_epochs, smoke.synthetic_train_per_class, smoke.image_size) == (1, 0, 4, 32)
    assert smoke.synthetic_val_per_class == 1 and smoke.mode == "pynative"  # a value below its cap is kept
    monkeypatch.setenv("MBV2_SMOKE", "0")
    assert load_config([]).smoke == {}
