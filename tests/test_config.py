"""Config loading: the schema (trainer/schema.py) and the per-device files' values, --help, flags, round trip,
class list, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ms_impl.trainer.classes import load_classes
from ms_impl.trainer.config import DEFAULT_CONFIG, dump_config, load_config, option_name
from ms_impl.trainer.config_files import CONFIG_DIR
from ms_impl.trainer.errors import UsageError
from ms_impl.trainer.schema import OPTIONS

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
    cfg = load_config(["--lr-max", "0.05", "--epochs=3", "--force", "true", "--data-path", "/d", "--lr-init", "1"])
    assert cfg.lr_max == 0.05 and isinstance(cfg.lr_max, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.force is True
    assert cfg.data_path == "/d"
    assert isinstance(cfg.lr_init, float)


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "0.1"], "unknown option(s) --learning-rate"),
    (["--epochs", "two"], "--epochs: expected int, got 'two'"),
    (["--force", "maybe"], "--force: expected bool"),
    (["--mode", "eager"], "--mode: expected one of graph, pynative"),
    (["--fast-conv", "fast"], "--fast-conv: expected one of auto, on, off"),
    (["--epochs"], "--epochs: missing value"),
    (["--epochs", "--lr-max", "0.1"], "--epochs: missing value"),  # a value-less option is named
    (["--lr-max", "0"], "--lr-max: 0.0 is out of range (0, inf)"),
    (["--dropout", "1.0"], "--dropout: 1.0 is out of range [0, 1)"),
    (["--batch-size", "-4"], "--batch-size: -4 is out of range (0, 65536]"),
    (["--epochs", "3", "--warmup-epochs", "4"], "--warmup-epochs: 4 is more than epochs (3, from --epochs)"),
    (["--device", "GPU", "--epochs", "3"], "garbage26_gpu.yaml: warmup_epochs: 4 is more than epochs (3, from --epochs)"),
    (["--freeze-backbone", "--resume", "auto"], "--resume: a frozen-backbone run is not resumed"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_overrides_are_rejected_clearly(argv, message):
    with pytest.raises(UsageError) as err:
        load_config(argv)
    assert message in str(err.value)


def test_config_flag_picks_a_file_and_device_flag_overrides_its_device(tmp_path):
    custom = tmp_path / "mine.yaml"
    custom.write_text("epochs: 5\nwarmup_epochs: 0\n", encoding="utf-8")  # any subset of keys, read over the base file
    cfg = load_config(["--config", str(custom), "--device", "GPU"])
    assert (cfg.epochs, cfg.warmup_epochs, cfg.device, len(cfg.classes)) == (5, 0, "GPU", 26)
    assert cfg.lr_max == OPTIONS["lr_max"].default  # a key the file leaves out keeps the schema's default


SHIPPED_CONFIGS = sorted(CONFIG_DIR.glob("garbage26_*.yaml"))


def test_every_key_of_every_shipped_config_is_in_the_schema_and_valid():
    configs = [path for path in SHIPPED_CONFIGS if path.name != "garbage26_classes.yaml"]
    assert {path.name for path in configs} == {path.name for path in DEFAULT_CONFIG.values()}
    for path in configs:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
        for key, value in values.items():
            assert key in OPTIONS, f"{path.name}: {key}"
            OPTIONS[key].check(value)


def test_the_schema_defaults_pass_its_own_checks(tmp_path):
    for key, option in OPTIONS.items():
        assert option.check(option.default) == option.default, key
        assert option.help and option.section, key
        assert isinstance(option.default, option.type) and not (option.type is int and isinstance(option.default, bool))
        assert all(isinstance(word, str) for word in option.choices), key
    empty = tmp_path / "empty.yaml"  # no values at all: every key at its default, and the defaults agree with each other
    empty.write_text("{}\n", encoding="utf-8")
    cfg = load_config(["--config", str(empty)])
    assert {key: cfg[key] for key in OPTIONS if key not in ("classes_file", "recipe")} == {
        key: option.default for key, option in OPTIONS.items() if key not in ("classes_file", "recipe")}
    assert (cfg.recipe, len(cfg.classes)) == ("scratch", 26)


def test_device_files_hold_only_their_own_values():
    for device, path in DEFAULT_CONFIG.items():
        own = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert own["device"] == device and "base" not in own and len(own) <= 10, path.name
        cfg = load_config(["--device", device])
        assert all(cfg[k] == v for k, v in own.items())
        # classes_file is resolved to an absolute path, recipe "auto" to the recipe that runs
        assert all(cfg[k] == option.default for k, option in OPTIONS.items()
                   if k not in own and k not in ("classes_file", "recipe"))


def test_help_lists_every_key_with_its_help_type_and_default(capsys):
    with pytest.raises(SystemExit) as done:
        load_config(["--device", "GPU", "--help"], description="Train")
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    gpu = load_config(["--device", "GPU"])
    for key, option in OPTIONS.items():
        assert f"{option_name(key)} " in text, key
        assert option.help.replace(" ", "") in text.replace(" ", ""), key
        if key not in ("device", "recipe"):  # --help shows the file's "auto"; the config holds what it resolved to
            kind = "dict" if isinstance(gpu[key], dict) else type(gpu[key]).__name__  # EasyDict holds mappings
            shown = repr(gpu[key]) if kind == "str" else str(gpu[key])
            # GPU file's values, not the base's (spaces removed: argparse also wraps at hyphens)
            assert f"({kind};default{shown}".replace(" ", "") in text.replace(" ", ""), key
    assert "(int; default 64; range (0, 65536])" in text  # batch_size on GPU


def test_boolean_keys_are_bare_flags_or_take_a_value():
    cfg = load_config(["--freeze-backbone", "--force", "--scale-lr", "false", "--epochs", "2"])
    assert (cfg.freeze_backbone, cfg.force, cfg.scale_lr, cfg.epochs) == (True, True, False, 2)
    cfg = load_config(["--force=false", "--train-augment", "no", "--freeze-bn"])
    assert (cfg.force, cfg.train_augment, cfg.freeze_bn) == (False, False, True)


def test_values_in_files_are_checked_by_the_same_schema(tmp_path):
    for text, message in (("lr_max: 0.0\n", "lr_max: 0.0 is out of range (0, inf)"),
                          ("epochs: ten\n", "epochs: expected int, got 'ten'"),
                          ("mode: eager\n", "mode: expected one of graph, pynative"),
                          ("learning_rate: 0.1\n", "unknown key(s) learning_rate"),
                          # a recipe's values: each checked by its own key's option, when the file is read
                          ("recipe_frozen: {epochs: ten}\n", "recipe_frozen: epochs: expected int, got 'ten'"),
                          ("recipe_finetune: {dropout: 1.5}\n", "recipe_finetune: dropout: 1.5 is out of range [0, 1)"),
                          ("recipe_frozen: {learning_rate: 1}\n", "recipe_frozen: learning_rate: not a key a recipe can set"),
                          ("recipe_frozen: [1, 2]\n", "recipe_frozen: expected a mapping of keys to values")):
        path = tmp_path / "bad.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(UsageError) as err:
            load_config(["--config", str(path)])
        assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    (tmp_path / "floats.yaml").write_text("lr_max: 1\n", encoding="utf-8")  # an int where a float is expected is fine
    assert load_config(["--config", str(tmp_path / "floats.yaml")]).lr_max == 1.0


def bad_values(option):
    """Values of the wrong type or out of the option's choices or range, as written on a command line."""
    if option.type is dict:
        return ["[1, 2]"]
    if option.type is bool:
        return ["maybe"]
    values = ["nope"] if option.choices else []
    if option.type in (int, float):
        values.append("abc")
    if option.range is not None:
        low, high = option.range.low, option.range.high
        values.append(str(option.type(low - 1 if low is not None else high + 1)))
    return values


@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_a_bad_value_of_any_key_is_one_line_naming_it(key, tmp_path):
    """Every key, from the command line and from a file: a wrong type, word or range is one line naming the key."""
    option = OPTIONS[key]
    path = tmp_path / "bad.yaml"
    for text in bad_values(option):
        with pytest.raises(UsageError) as err:
            load_config([option_name(key), text])
        assert str(err.value).startswith(f"{option_name(key)}: ") and "\n" not in str(err.value), (text, str(err.value))
    for value in [yaml.safe_load(text) for text in bad_values(option)] + ([[1, 2]] if option.type is not dict else []):
        path.write_text(yaml.safe_dump({key: value}), encoding="utf-8")
        with pytest.raises(UsageError) as err:
            load_config(["--config", str(path)])
        assert str(err.value).startswith(f"{path}: {key}: ") and "\n" not in str(err.value), (value, str(err.value))


def test_the_trainer_exits_2_with_one_line_for_a_bad_value(tmp_path, capsys):
    from ms_impl.train import main

    config = tmp_path / "bad.yaml"
    config.write_text("device: CPU\nlabel_smoothing: 1.0\n", encoding="utf-8")
    for argv, line in ((["--config", str(config)], f"error: {config}: label_smoothing: 1.0 is out of range [0, 1)"),
                       (["--momentum", "fast"], "error: --momentum: expected float, got 'fast'")):
        assert main(argv + ["--output-dir", str(tmp_path / "run")]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [line]
    assert not (tmp_path / "run").exists()


def test_dumped_config_reads_back_to_the_same_config(tmp_path, monkeypatch):
    cfg = load_config(["--device", "GPU", "--epochs", "5", "--force", "--resume", "auto"])
    assert Path(cfg.classes_file).is_absolute()
    saved = tmp_path / "elsewhere" / "config.yaml"  # not next to configs/: the class file must still resolve
    saved.parent.mkdir()
    saved.write_text(dump_config(cfg), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    again = load_config(["--config", str(saved)])
    # the saved file names the recipe that ran (not "auto"), so only the reason for it differs; how the run was
    # started (--resume, --force) is not saved: the saved config alone never resumes or replaces a run
    derived = ("config_path", "recipe_reason", "resume", "force")
    assert {k: v for k, v in again.items() if k not in derived} == {k: v for k, v in cfg.items() if k not in derived}
    assert (again.resume, again.force) == ("", False)


@pytest.mark.parametrize("argv, chosen", [
    (["--pretrained", "weights.pth", "--lr-max", "0.01", "--freeze-layers", "2"], {"lr_max": 0.01, "freeze_layers": 2}),
    (["--pretrained", "weights.pth", "--freeze-backbone", "true", "--epochs", "7"], {"epochs": 7})],
    ids=["finetune", "frozen"])
def test_a_recipe_run_saved_config_reproduces_its_choices(argv, chosen, tmp_path):
    """Reading a recipe run's config.yaml back applies the recipe again: the values the command line chose instead
    of the recipe's (saved in their own keys) must survive it, or `--config runs/X/config.yaml` is another run."""
    from ms_impl.trainer.config import trajectory_settings

    cfg = load_config(argv + ["--output-dir", str(tmp_path / "run")])
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg), encoding="utf-8")
    again = load_config(["--config", str(saved)])
    assert trajectory_settings(again) == trajectory_settings(cfg)
    assert again.recipe_applied == cfg.recipe_applied and again.pretrained == cfg.pretrained
    recipe = cfg[f"recipe_{cfg.recipe}"]
    for key, value in chosen.items():  # the recipe has its own value for each: the choice is what is tested
        assert key in recipe and recipe[key] != value and cfg[key] == again[key] == value


def test_resume_free_keys_are_config_keys_and_settings_survive_json():
    """A typo in RESUME_FREE_KEYS would silently compare (or free) the wrong key; a checkpoint stores the settings as
    JSON, and what it reads back must compare equal to a fresh run's."""
    import json

    from ms_impl.trainer.config import RESUME_FREE_KEYS, trajectory_settings

    assert RESUME_FREE_KEYS <= set(OPTIONS)
    cfg = load_config(["--pretrained", "weights.pth", "--mixup-alpha", "0.2"])
    settings = trajectory_settings(cfg)
    assert json.loads(json.dumps(settings)) == settings
    assert {"lr_max", "mixup_alpha", "crop_scale_min", "freeze_layers", "batch_size"} <= settings.keys()
    assert not RESUME_FREE_KEYS & settings.keys()
    assert settings["pretrained_weights"] is True and len(settings["class_names"]) == 26


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="nope.yaml: config file not found"):
        load_config(["--config", str(tmp_path / "nope.yaml")])


def test_one_class_loader_for_yaml_config_and_csv(tmp_path):
    from ms_impl.trainer.classes import ClassInfo

    table = load_classes()  # configs/garbage26_classes.yaml
    assert load_classes(DEFAULT_CONFIG["GPU"]) == table == load_config([]).classes
    assert table[25] == ClassInfo(25, "Paint bucket", "油漆桶", "有害垃圾", "Hazardous waste")
    csv_file = tmp_path / "classes.csv"  # the reference garbage26/classes.csv columns
    csv_file.write_text("index,name_en,name_zh,category_zh,category_en\n"
                        + "".join(f"{c.index},{c.name},{c.name_zh},{c.category_zh},{c.category}\n" for c in table), encoding="utf-8")
    assert load_classes(csv_file) == table


def test_class_file_must_list_classes_in_index_order(tmp_path):
    bad = tmp_path / "classes.yaml"
    bad.write_text(
        "classes:\n"
        "  - {index: 1, name: B, name_zh: b, category_zh: x, category: X}\n"
        "  - {index: 0, name: A, name_zh: a, category_zh: x, category: X}\n", encoding="utf-8")
    with pytest.raises(UsageError, match="class 'B' has index 1, expected 0"):
        load_classes(bad)
