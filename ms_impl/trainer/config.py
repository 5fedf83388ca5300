"""Training configuration: the schema's defaults, a YAML file's values, then the command line, in an EasyDict.

    cfg = load_config(argv)   # --device picks configs/garbage26_<device>.yaml, --config any file,
                              # --key value (or a bare --flag for booleans) overrides a key

Every key, its type, default, choices or range and help are declared once, in trainer/schema.py; this module
reads values against it. A config file holds any subset of the keys and is read over the schema's defaults; it may
name another file as `base:` and is then read over that one. The per-device files hold the values tuned per device;
a run's saved `config.yaml` (every key, `classes_file` absolute) reproduces the run with `--config runs/X/config.yaml`.
Rules between keys (warmup within epochs, options that need fine-tuning...) are `check_relations` below.
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import yaml
from easydict import EasyDict

from ms_impl.trainer.classes import load_classes
from ms_impl.trainer.config_files import BASE_KEY, CONFIG_DIR, file_chain
from ms_impl.trainer.errors import UsageError
from ms_impl.trainer.recipes import apply_recipe
from ms_impl.trainer.schema import DEVICES, OPTIONS, format_number
from parity.core import preprocess
from parity.core.files import path_problem, shown_path
from parity.core.options import DashOptionParser, unknown_options_text

DEFAULT_CONFIG = {device: CONFIG_DIR / f"garbage26_{device.lower()}.yaml" for device in DEVICES}
PATH_KEYS = ("classes_file",)  # resolved against the file that sets them, saved absolute
# Keys naming files or folders: checked like every path option (parity.core.files.path_problem) before any is used.
FILE_KEYS = ("data_path", "output_dir", "resume", "pretrained", "classes_file", "synthetic_cache_dir", "feature_cache_dir")
# How a run was started, not how it trains: a run's saved config.yaml holds their defaults, so that
# `--config <run>/config.yaml` alone never resumes or replaces that run (the same flags must be given again).
START_ONLY_KEYS = ("resume", "force")
DEFAULT_ORIGIN = "default"  # where a value no file or option set comes from


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
    settings = {key: _plain(cfg[key]) for key in OPTIONS if key not in RESUME_FREE_KEYS}
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
        raise UsageError(f"{source('train_whole_prob')}: {whole_prob} is below {format_number(1 / copies)}, the smallest "
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


def _front_parser(add_help: bool, description: str = "", parents: Sequence[argparse.ArgumentParser] = ()) -> _Parser:
    parser = _Parser(description=description, add_help=add_help, allow_abbrev=False, parents=list(parents),
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Defaults: the values of the config file (configs/garbage26_<device>.yaml, or --config), "
                            "over the built-in defaults of every key (ms_impl/trainer/schema.py).")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML config: any subset of the keys below, or a run's saved config.yaml "
                             "(default: configs/garbage26_<device>.yaml)")
    parser.add_argument("--device", choices=DEVICES, help=f"{OPTIONS['device'].help} (default CPU)")
    return parser


def _add_options(parser: argparse.ArgumentParser, defaults: Dict[str, Any]) -> None:
    """One argument group per schema section; each key's help shows the default it has with this config file."""
    groups: Dict[str, Any] = {}
    for option in OPTIONS.values():
        if option.name == "device":
            continue  # --device above: it also picks the file
        if option.section not in groups:
            groups[option.section] = parser.add_argument_group(f"config keys: {option.section}")
        kwargs: Dict[str, Any] = dict(type=option.parse, default=argparse.SUPPRESS, metavar=option.metavar,
                                      help=option.describe(defaults[option.name]))
        if option.type is bool:
            kwargs.update(nargs="?", const=True)  # a bare --flag means true
        groups[option.section].add_argument(option_name(option.name), dest=option.name, **kwargs)


def _default_values() -> Tuple[Dict[str, Any], Dict[str, str]]:
    """(values, where each came from) before any file: the schema's defaults, the class file found in the shipped
    configs folder."""
    values = {key: copy.deepcopy(option.default) for key, option in OPTIONS.items()}  # a run never changes the schema
    values["classes_file"] = str((CONFIG_DIR / values["classes_file"]).resolve())
    return values, {key: DEFAULT_ORIGIN for key in values}


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

    values, origin = _default_values()
    for file_path, data in chain:
        unknown = [k for k in data if k != BASE_KEY and k not in OPTIONS]
        if unknown:
            raise UsageError(f"{file_path}: unknown key(s) {', '.join(unknown)} (--help lists the keys)")
        for key, value in data.items():
            if key == BASE_KEY:
                continue
            try:
                value = OPTIONS[key].check(value)
            except ValueError as e:
                raise UsageError(f"{file_path}: {key}: {e}") from None
            if key in PATH_KEYS and value:
                value = str((file_path.parent / value).resolve())
            values[key], origin[key] = value, str(file_path)

    parser = _front_parser(add_help=True, description=description, parents=parents)
    _add_options(parser, values)
    args, rest = parser.parse_known_args(argv)
    if rest:
        unknown = [item for item in rest if item.startswith("-")]
        if unknown:
            known = [name for action in parser._actions for name in action.option_strings]
            raise UsageError(f"unknown option(s) {unknown_options_text(unknown, known)} (see --help)")
        raise UsageError(f"unexpected argument {rest[0]!r}: options are --key value")
    given = vars(args)
    for key in list(given):
        if key in OPTIONS and key != "device":
            try:
                value = OPTIONS[key].check(given[key])
            except ValueError as e:
                raise UsageError(f"{option_name(key)}: {e}") from None
            if key in PATH_KEYS and value:
                value = str(Path(value).resolve())
            values[key], origin[key] = value, option_name(key)
    if front.device:
        values["device"], origin["device"] = front.device, "--device"

    cfg = EasyDict(values)
    # per-recipe defaults (trainer/recipes.py), checked by the schema with the file; the command line still wins
    applied = apply_recipe(cfg, [key for key, where in origin.items() if where.startswith("--")])
    origin.update({key: f"{path}: recipe_{cfg.recipe}" for key in applied})
    cfg.smoke = smoke_caps(cfg)
    origin.update({key: SMOKE_ENV for key in cfg.smoke})
    check_relations(cfg, lambda key: _where(key, origin[key]))
    cfg.config_path = str(Path(path))
    cfg.classes = load_classes(cfg.classes_file)
    extras = argparse.Namespace(**{k: v for k, v in given.items() if k not in OPTIONS and k not in ("config", "device")})
    extras.command_line_keys = frozenset(key for key, where in origin.items() if where.startswith("--"))
    return cfg, extras


def _where(key: str, origin: str) -> str:
    """How an error names a value: `--key`, `FILE: key`, or `default key`."""
    if origin.startswith("--"):
        return origin
    return f"{DEFAULT_ORIGIN} {key}" if origin == DEFAULT_ORIGIN else f"{origin}: {key}"


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
    """The config as self-contained YAML (every key, absolute class file; the help as comments, for a reader only):
    `--config` reads it back."""
    lines = [f"# Resolved config of a run (from {cfg.config_path} and the command line).",
             "# Rerun it: python ms_impl/train.py --config <this file>"]
    section = None
    for key, option in OPTIONS.items():
        if option.section != section:
            section = option.section
            lines.append(f"# --- {section}")
        value = option.default if key in START_ONLY_KEYS else cfg[key]
        if key == f"recipe_{cfg.get('recipe')}" and "recipe_applied" in cfg:
            # only the values the recipe set in this run: on reading back the recipe is applied again, and a value
            # the command line chose instead (saved in its own key) must not be replaced by the recipe's
            value = {k: v for k, v in value.items() if k in cfg.recipe_applied}
        text = yaml.safe_dump({key: _plain(value)}, default_flow_style=True, allow_unicode=True, width=10**6).strip()
        text = text[1:-1] if text.startswith("{") else text  # flow style wraps a mapping in braces
        lines.append(f"{text}  # {option.help}" if option.help else text)
    return "\n".join(lines) + "\n"
