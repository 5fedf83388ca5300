"""Training configuration: one schema, read from the YAML files, parsed into an EasyDict.

    cfg = load_config(argv)   # --device picks configs/garbage26_<device>.yaml, --config any file,
                              # --key value (or a bare --flag for booleans) overrides a key

The schema is `configs/garbage26_base.yaml` plus `KEY_RULES` below:
  - every key of the base file is an option; its value is the default, its
    type (bool, int, float, str) is the option's type, and the comment after it
    is the option's help (`--help` lists them all);
  - `KEY_RULES` adds the allowed words or the numeric range of a key, checked
    here and only here, for values from files and from the command line alike.
A config file may name another as `base:` (the per-device files name the base
file) and then holds only the keys it changes; a file without `base:` is read
over the base file, so a run's saved `config.yaml` (every key, `classes_file`
absolute) reproduces the run with `--config runs/X/config.yaml`.

Adding a key: one line `key: default   # help` in garbage26_base.yaml (a float
written with a decimal point), plus a `KEY_RULES` entry if it has choices or
a range. Per-device files change it only where the device needs another value.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import yaml
from easydict import EasyDict

from ms_impl.trainer.classes import load_classes
from ms_impl.trainer.config_files import BASE_CONFIG, BASE_KEY, CONFIG_DIR, file_chain, read_yaml
from ms_impl.trainer.errors import UsageError
from parity.core import preprocess
from parity.core.files import path_problem, shown_path
from parity.core.options import DashOptionParser, unknown_options_text
from parity.core.spec import INVERTED_RESIDUAL_SETTING

DEVICES = ("CPU", "GPU", "Ascend")
DEFAULT_CONFIG = {device: CONFIG_DIR / f"garbage26_{device.lower()}.yaml" for device in DEVICES}
PATH_KEYS = ("classes_file",)  # resolved against the file that sets them, saved absolute
# Keys naming files or folders: checked like every path option (parity.core.files.path_problem) before any is used.
FILE_KEYS = ("data_path", "output_dir", "resume", "pretrained", "classes_file", "synthetic_cache_dir", "feature_cache_dir")
# How a run was started, not how it trains: a run's saved config.yaml holds their defaults, so that
# `--config <run>/config.yaml` alone never resumes or replaces that run (the same flags must be given again).
START_ONLY_KEYS = ("resume", "force")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Range:
    """A numeric interval; `None` ends are open to infinity."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def __str__(self) -> str:
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        return f"{'(' if self.low_open or self.low is None else '['}{low}, {high}{')' if self.high_open or self.high is None else ']'}"


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0, None)
FRACTION = Range(0, 1)  # [0, 1]
PROPER_FRACTION = Range(0, 1, high_open=True)  # [0, 1)
# The trainer's network: the stem, the inverted residual blocks and the last 1x1 layer (`features.0` ... `features.18`).
FEATURE_LAYERS = 2 + sum(repeats for _, _, repeats, _ in INVERTED_RESIDUAL_SETTING)

# Allowed words (a tuple) or numeric range (a Range) of the keys that have them.
KEY_RULES: Dict[str, Any] = {
    "device": DEVICES,
    "mode": ("graph", "pynative"),
    "fast_conv": ("auto", "on", "off"),
    "distributed": ("auto", "on", "off"),
    "seed": Range(0, 2**31 - 1),  # MindSpore's and numpy's seeds are 32-bit
    "image_size": Range(0, 4096, low_open=True),
    "batch_size": Range(0, 65536, low_open=True),
    "num_workers": Range(0, 1024, low_open=True),
    "epochs": Range(0, 100_000, low_open=True),  # the per-step LR array is materialised up front
    "warmup_epochs": NON_NEGATIVE,  # and <= epochs: check_relations
    "keep_checkpoint_max": POSITIVE,
    "synthetic_image_size": Range(0, 1024, low_open=True),
    "synthetic_train_per_class": Range(0, 100_000, low_open=True),
    "synthetic_val_per_class": Range(0, 100_000, low_open=True),
    "crop_scale_min": Range(0, 1, low_open=True),
    "color_jitter": NON_NEGATIVE,
    "hflip_prob": FRACTION,
    "train_whole_prob": FRACTION,
    "mixup_alpha": NON_NEGATIVE,
    "cutmix_alpha": NON_NEGATIVE,
    "width_mult": POSITIVE,
    "dropout": PROPER_FRACTION,
    "lr_init": NON_NEGATIVE,
    "lr_max": POSITIVE,
    "lr_end": NON_NEGATIVE,
    "momentum": PROPER_FRACTION,
    "weight_decay": NON_NEGATIVE,
    "label_smoothing": PROPER_FRACTION,
    "feature_views": Range(1, None),
    "backbone_lr_scale": Range(0, 1, low_open=True),
    "class_balance": ("none", "weights", "sampler"),
    "recipe": ("auto", "scratch", "frozen", "finetune"),
    "feature_norm": ("none", "center", "standardize"),
    "tta": ("none", "flip", "flip+whole"),
    "head_first_epochs": NON_NEGATIVE,
    "freeze_layers": Range(0, FEATURE_LAYERS),
}


# MBV2_SMOKE=1 in the environment turns any run into a smoke run of seconds: these keys are capped (a value already
# below its cap is kept). It checks that a command works end to end (the README's commands are tested so); the
# numbers it gives mean nothing. Every tool that reads a trainer config honours it.
SMOKE_ENV = "MBV2_SMOKE"
SMOKE_CAPS = {"epochs": 1, "warmup_epochs": 0, "head_first_epochs": 1, "synthetic_train_per_class": 4,
              "synthetic_val_per_class": 2, "image_size": 32}
SMOKE_MODE = "pynative"  # no graph compile: for a few steps, compiling takes longer than running


def smoke_caps(cfg: EasyDict) -> Dict[str, Any]:
    """The values MBV2_SMOKE sets in `cfg` ({} when it is not set); those keys are changed in place."""
    if os.environ.get(SMOKE_ENV, "").strip().lower() in ("", "0", "false", "no", "off"):
        return {}
    changed: Dict[str, Any] = {key: cap for key, cap in SMOKE_CAPS.items() if key in cfg and cfg[key] > cap}
    if cfg.get("mode") != SMOKE_MODE:
        changed["mode"] = SMOKE_MODE
    cfg.update(changed)
    return changed


# Keys a resumed run may change: where it runs, where its files are, what the final evaluation averages. Every
# other key shapes the training trajectory, so a checkpoint records them and resumes only with the same values.
RESUME_FREE_KEYS = frozenset({
    "device", "mode", "fast_conv", "output_dir", "force", "resume", "distributed", "num_workers", "classes_file",
    "data_path", "synthetic_cache_dir", "keep_checkpoint_max", "pretrained", "feature_cache_dir", "tta",
    # the recipes' values are resolved into the keys, which are compared; stage 1 reads recipe_frozen itself, and a
    # resumed run never reruns stage 1
    "recipe_frozen", "recipe_finetune",
})


def trajectory_settings(cfg: EasyDict) -> Dict[str, Any]:
    """The options that decide what a run computes step by step (all but RESUME_FREE_KEYS), as plain values.

    Of the free paths, what changes the run is kept in their stead: whether pretrained weights were named (the
    backbone's LR scale depends on it) and the class names in order (the dense layer's rows)."""
    settings = {key: _plain(cfg[key]) for key in read_yaml(BASE_CONFIG) if key != BASE_KEY and key not in RESUME_FREE_KEYS}
    settings["pretrained_weights"] = bool(cfg.pretrained)
    settings["class_names"] = [c.name for c in cfg.classes]
    return settings


def check_relations(cfg: EasyDict, source: Callable[[str], str]) -> None:
    """Rules between keys; `source(key)` names where the value came from."""
    for key in FILE_KEYS:
        value = cfg.get(key)
        problem = path_problem(value) if isinstance(value, str) and value else ""
        if problem:
            raise UsageError(f"{source(key)}: {shown_path(value)}: {problem}")
    if cfg.warmup_epochs > cfg.epochs:
        raise UsageError(f"{source('warmup_epochs')}: {cfg.warmup_epochs} is more than epochs ({cfg.epochs}, from {source('epochs')})")
    if not str(cfg.output_dir).strip():
        raise UsageError(f"{source('output_dir')}: empty; name the run's folder (it is never the current folder)")
    if cfg.get("head_first_epochs") and (cfg.freeze_backbone or not cfg.pretrained):
        raise UsageError(f"{source('head_first_epochs')}: only for fine-tuning pretrained weights "
                         "(--pretrained W, --freeze-backbone false)")
    if cfg.get("freeze_layers") and (cfg.freeze_backbone or not cfg.pretrained):
        raise UsageError(f"{source('freeze_layers')}: only for fine-tuning pretrained weights "
                         "(--pretrained W, --freeze-backbone false)")
    whole_prob = cfg.get("train_whole_prob", 0.0)
    if whole_prob and cfg.freeze_backbone:
        raise UsageError(f"{source('train_whole_prob')}: whole-photo views for training the network; a frozen "
                         "backbone's head trains on cached features (--feature-whole true)")
    copies = preprocess.WHOLE_VIEW_COPIES
    if 0 < whole_prob < 1 / copies:
        raise UsageError(f"{source('train_whole_prob')}: {whole_prob} is below {_number(1 / copies)}, the smallest "
                         f"share drawn (1 view in {copies}); 0 for none")
    mixing = [key for key in ("mixup_alpha", "cutmix_alpha") if cfg.get(key)]
    if mixing and cfg.batch_size < 2:
        raise UsageError(f"{source(mixing[0])}: mixes the images of a batch with each other; batch_size is "
                         f"{cfg.batch_size} (from {source('batch_size')}), at least 2 needed")
    if cfg.get("cutmix_alpha") and cfg.freeze_backbone:
        raise UsageError(f"{source('cutmix_alpha')}: pastes image regions for training the network; a frozen backbone's "
                         "head trains on cached features (--mixup-alpha mixes those)")
    if cfg.freeze_backbone and cfg.resume:
        raise UsageError(f"{source('resume')}: a frozen-backbone run is not resumed; run it again (its features are cached)")


# ---------------------------------------------------------------- reading files


_COMMENTED_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(.*?)\s+#\s?(.*)$")


def read_key_comments(path: Path) -> Dict[str, str]:
    """`key: value  # comment` lines of a flat YAML file: {key: comment}."""
    comments = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _COMMENTED_KEY.match(line)
        if match:
            comments[match.group(1)] = match.group(3).strip()
    return comments


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Option:
    """One config key: its type, default, help and rule."""

    name: str
    type: type
    default: Any
    help: str
    rule: Any = None  # a tuple of words, a Range, or None

    def parse(self, text: str) -> Any:
        """The command-line string as this option's type (argparse `type=`)."""
        try:
            value = _parse_as(self.type, text)
        except (ValueError, yaml.YAMLError):
            raise argparse.ArgumentTypeError(f"expected {self.type.__name__}, got {text!r}") from None
        if isinstance(self.rule, tuple) and value not in self.rule:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(self.rule)}, got {text!r}")
        return value

    def check(self, value: Any) -> Any:
        """A value from a file, coerced to the option's type and checked against its rule; ValueError otherwise."""
        if self.type in (int, float) and isinstance(value, str):
            # PyYAML reads `1e-4` (no decimal point, YAML 1.1) as a string: a number written so is still a number
            try:
                value = self.type(value.strip())
            except ValueError:
                raise ValueError(f"expected {self.type.__name__}, got {value!r}") from None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"expected {self.type.__name__}, got {value!r}")
        if isinstance(self.rule, tuple) and value not in self.rule:
            raise ValueError(f"expected one of {', '.join(self.rule)}, got {value!r}")
        if isinstance(self.rule, Range) and (not math.isfinite(value) or value not in self.rule):
            raise ValueError(f"{value} is out of range {self.rule}")
        return value

    def describe(self) -> str:
        """Help line: the YAML comment, then type, default and rule."""
        extra = [self.type.__name__, f"default {self.default!r}" if self.type is str else f"default {self.default}"]
        if isinstance(self.rule, Range):
            extra.append(f"range {self.rule}")
        text = f"{self.help} " if self.help else ""
        return f"{text}({'; '.join(extra)})".replace("%", "%%")


def _parse_as(kind: type, text: str) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError(text)
    if kind in (int, float, str):
        return kind(text)
    return yaml.safe_load(text)  # a list or mapping, written as YAML


def build_schema(chain: Sequence[Tuple[Path, dict]]) -> Dict[str, Option]:
    """Options of the base file of `chain`, with its comments and the rules of KEY_RULES."""
    base_path, base = chain[0]
    comments = read_key_comments(base_path)
    for path, _ in chain[1:]:  # a key's comment in the base file wins; others fill gaps
        for key, text in read_key_comments(path).items():
            comments.setdefault(key, text)
    schema = {}
    for key, value in base.items():
        if key == BASE_KEY:
            continue
        kind = type(value) if value is not None else str
        schema[key] = Option(key, kind, value, comments.get(key, ""), KEY_RULES.get(key))
    return schema


# ---------------------------------------------------------------- command line


def option_name(key: str) -> str:
    """The command-line spelling of a config key: `data_path` -> `--data-path` (`--data-path` is accepted too)."""
    return "--" + key.replace("_", "-")


class _Parser(DashOptionParser):
    """argparse with errors as UsageError (`--key: problem`) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = message[len("argument "):] if message.startswith("argument ") else message
        message = message.replace("expected one argument", "missing value")
        raise UsageError(message)


def _front_parser(add_help: bool, description: str = "", parents: Sequence[argparse.ArgumentParser] = (),
                  device_help: str = "") -> _Parser:
    parser = _Parser(description=description, add_help=add_help, allow_abbrev=False, parents=list(parents),
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Config: configs/garbage26_base.yaml holds every key (this list); "
                            "configs/garbage26_<device>.yaml the per-device values.")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML config: any subset of the keys below, or a run's saved config.yaml "
                             "(default: configs/garbage26_<device>.yaml)")
    parser.add_argument("--device", choices=DEVICES,
                        help=f"{device_help} (picks configs/garbage26_<device>.yaml; default CPU)".strip())
    return parser


def _add_options(parser: argparse.ArgumentParser, schema: Dict[str, Option], defaults: Dict[str, Any]) -> None:
    group = parser.add_argument_group("config keys (--key value; defaults from the config file)")
    for option in schema.values():
        if option.name == "device":
            continue  # --device above: it also picks the file
        shown = Option(option.name, option.type, defaults.get(option.name, option.default), option.help, option.rule)
        kwargs: Dict[str, Any] = dict(type=option.parse, default=argparse.SUPPRESS, help=shown.describe())
        if isinstance(option.rule, tuple):
            kwargs["metavar"] = "{" + ",".join(option.rule) + "}"
        else:
            kwargs["metavar"] = option.type.__name__.upper()
        if option.type is bool:
            kwargs.update(nargs="?", const=True, metavar="true|false")  # a bare --flag means true
        group.add_argument(option_name(option.name), dest=option.name, **kwargs)


def parse_config(argv: Optional[Sequence[str]] = None, description: str = "",
                 parents: Sequence[argparse.ArgumentParser] = ()) -> Tuple[EasyDict, argparse.Namespace]:
    """(config, namespace of the `parents`' own options) from `argv`; `--help` prints every option and exits.

    The namespace also holds `command_line_keys`: the config keys `argv` sets explicitly (a tool may
    then tell a default from a choice, as eval.py does for `--tta`)."""
    front, _ = _front_parser(add_help=False).parse_known_args(argv)  # which file; the rest is parsed below
    path = front.config or DEFAULT_CONFIG[front.device or "CPU"]
    if path_problem(path):
        raise UsageError(f"--config: {shown_path(path)}: {path_problem(path)}")
    chain = file_chain(Path(path))
    schema = build_schema(chain)

    values: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    for file_path, data in chain:
        unknown = [k for k in data if k != BASE_KEY and k not in schema]
        if unknown:
            raise UsageError(f"{file_path}: unknown key(s) {', '.join(unknown)} (the keys are those of {chain[0][0].name})")
        for key, value in data.items():
            if key == BASE_KEY:
                continue
            try:
                value = schema[key].check(value)
            except ValueError as e:
                raise UsageError(f"{file_path}: {key}: {e}") from None
            if key in PATH_KEYS and value:
                value = str((file_path.parent / value).resolve())
            values[key], origin[key] = value, str(file_path)

    parser = _front_parser(add_help=True, description=description, parents=parents,
                           device_help=schema["device"].help if "device" in schema else "")
    _add_options(parser, schema, values)
    args, rest = parser.parse_known_args(argv)
    if rest:
        unknown = [item for item in rest if item.startswith("-")]
        if unknown:
            known = [name for action in parser._actions for name in action.option_strings]
            raise UsageError(f"unknown option(s) {unknown_options_text(unknown, known)}; "
                             f"the keys are those of {chain[0][0].name} (see --help)")
        raise UsageError(f"unexpected argument {rest[0]!r}: options are --key value")
    given = vars(args)
    for key in list(given):
        if key in schema and key != "device":
            try:
                value = schema[key].check(given[key])
            except ValueError as e:
                raise UsageError(f"{option_name(key)}: {e}") from None
            if key in PATH_KEYS and value:
                value = str(Path(value).resolve())
            values[key], origin[key] = value, option_name(key)
    if front.device:
        values["device"], origin["device"] = front.device, "--device"

    cfg = EasyDict(values)
    if "recipe" in cfg:  # per-recipe defaults (trainer/recipes.py); keys given on the command line still win
        from ms_impl.trainer.recipes import apply_recipe

        applied = apply_recipe(cfg, [key for key, where in origin.items() if where.startswith("--")], str(path))
        for key, value in applied.items():  # a recipe's values obey the same rules as the file's
            try:
                cfg[key] = schema[key].check(value)
            except ValueError as e:
                raise UsageError(f"{path}: recipe_{cfg.recipe}: {key}: {e}") from None
            origin[key] = f"{path}: recipe_{cfg.recipe}"
    cfg.smoke = smoke_caps(cfg)
    origin.update({key: SMOKE_ENV for key in cfg.smoke})
    check_relations(cfg, lambda key: origin[key] if origin[key].startswith("--") else f"{origin[key]}: {key}")
    cfg.config_path = str(Path(path))
    cfg.classes = load_classes(cfg.classes_file)
    extras = argparse.Namespace(**{k: v for k, v in given.items() if k not in schema and k not in ("config", "device")})
    extras.command_line_keys = frozenset(key for key, where in origin.items() if where.startswith("--"))
    return cfg, extras


def load_config(argv: Optional[Sequence[str]] = None, description: str = "") -> EasyDict:
    """Parse `argv` (`--config`, `--device`, `--key value`, bare `--flag`...) into the run's configuration."""
    return parse_config(argv, description)[0]


def _plain(value: Any) -> Any:
    """EasyDict (a dict subclass, which yaml.safe_dump refuses) -> plain dict, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_config(cfg: EasyDict) -> str:
    """The config as self-contained YAML (every key, absolute class file, help as comments): `--config` reads it back."""
    chain = file_chain(Path(cfg.config_path))
    schema = build_schema(chain)
    lines = [f"# Resolved config of a run (from {cfg.config_path} and the command line).",
             "# Rerun it: python ms_impl/train.py --config <this file>"]
    for key, option in schema.items():
        value = option.default if key in START_ONLY_KEYS else cfg[key]
        if key == f"recipe_{cfg.get('recipe')}" and "recipe_applied" in cfg:
            # only the values the recipe set in this run: on reading back the recipe is applied again, and a value
            # the command line chose instead (saved in its own key) must not be replaced by the recipe's
            value = {k: v for k, v in value.items() if k in cfg.recipe_applied}
        text = yaml.safe_dump({key: _plain(value)}, default_flow_style=True, allow_unicode=True, width=10**6).strip()
        text = text[1:-1] if text.startswith("{") else text  # flow style wraps a mapping in braces
        lines.append(f"{text}  # {option.help}" if option.help else text)
    return "\n".join(lines) + "\n"
