"""Training configuration: a YAML file in `configs/` loaded into an EasyDict.

    cfg = load_config(argv)   # --device picks configs/garbage26_<device>.yaml,
                              # --config picks any file, --key value overrides a key

Every key of the file can be overridden on the command line with a value of the
same type as in the file (`--epochs 3`, `--lr_max 0.05`, `--force true`);
unknown keys are rejected. The class list lives in the file named by
`classes_file` (relative to the config), so the per-device files share it; it
is loaded into `cfg.classes`, a list of EasyDicts with `index`, `name` (the
folder name), `name_zh`, `category_zh` and `category`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from easydict import EasyDict

from ms_impl.trainer.errors import UsageError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEVICES = ("CPU", "GPU", "Ascend")
DEFAULT_CONFIG = {device: CONFIG_DIR / f"garbage26_{device.lower()}.yaml" for device in DEVICES}

# Keys whose value must be one of a few words.
CHOICES: Dict[str, Sequence[str]] = {
    "device": DEVICES,
    "mode": ("graph", "pynative"),
    "fast_conv": ("auto", "on", "off"),
    "distributed": ("auto", "on", "off"),
    "recipe": ("auto", "scratch", "frozen", "finetune"),
    "feature_norm": ("none", "center", "standardize"),
    "tta": ("none", "flip"),
}
CLASS_FIELDS = ("index", "name", "name_zh", "category_zh", "category")


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def load_classes(path: Path) -> List[EasyDict]:
    """The class list of a classes file, checked: indices 0..N-1 in order, names unique."""
    entries = _read_yaml(path).get("classes")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{path}: needs a non-empty list `classes`")
    classes = []
    for position, entry in enumerate(entries):
        missing = [k for k in CLASS_FIELDS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise UsageError(f"{path}: class #{position} lacks {', '.join(missing)}")
        if entry["index"] != position:
            raise UsageError(f"{path}: class {entry['name']!r} has index {entry['index']}, expected {position} (list them in index order)")
        classes.append(EasyDict({k: entry[k] for k in CLASS_FIELDS}))
    names = [c.name for c in classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"{path}: duplicate class names {duplicates}")
    return classes


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise ValueError(text)


def _convert(key: str, text: str, default: Any) -> Any:
    """The command-line string `text` as the type of the file's value for `key`."""
    kind = type(default)
    try:
        if kind is bool:
            value: Any = _parse_bool(text)
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
        elif kind is str:
            value = text
        else:
            raise UsageError(f"--{key}: cannot be set on the command line (a {kind.__name__} in the config)")
    except ValueError:
        raise UsageError(f"--{key}: expected {kind.__name__}, got {text!r}") from None
    choices = CHOICES.get(key)
    if choices is not None and value not in choices:
        raise UsageError(f"--{key}: expected one of {', '.join(choices)}, got {text!r}")
    return value


def _split_overrides(argv: Sequence[str]) -> Dict[str, str]:
    """`--key value` and `--key=value` pairs, in order; a later one wins."""
    overrides: Dict[str, str] = {}
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or item == "--":
            raise UsageError(f"unexpected argument {item!r}: options are --key value")
        key, sep, value = item[2:].partition("=")
        if not sep:
            if i + 1 >= len(items):
                raise UsageError(f"--{key}: missing value")
            value = items[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return overrides


def load_config(argv: Optional[Sequence[str]] = None, description: str = "") -> EasyDict:
    """Parse `argv` (`--config`, `--device`, `--key value`...) into the run's configuration."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Every key of the config file can be overridden: --key value (see configs/*.yaml).",
    )
    parser.add_argument("--config", type=Path, help="YAML config (default: configs/garbage26_<device>.yaml)")
    parser.add_argument("--device", choices=DEVICES, help="CPU, GPU or Ascend; also picks the default config")
    known, rest = parser.parse_known_args(argv)

    path = known.config or DEFAULT_CONFIG[known.device or "CPU"]
    defaults = _read_yaml(path)
    overrides = _split_overrides(rest)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join('--' + k for k in unknown)}; {path.name} has keys: {', '.join(defaults)}")

    cfg = EasyDict(defaults)
    for key, text in overrides.items():
        cfg[key] = _convert(key, text, defaults[key])
    if known.device:
        cfg.device = known.device
    for key, choices in CHOICES.items():
        if key in cfg and cfg[key] not in choices:
            raise UsageError(f"{path}: {key} must be one of {', '.join(choices)}, got {cfg[key]!r}")
    if "recipe" in cfg:  # per-recipe defaults (ms_impl/trainer/recipes.py); explicit --key values still win
        from ms_impl.trainer.recipes import apply_recipe

        apply_recipe(cfg, overrides, str(path))
    cfg.config_path = str(path)
    cfg.classes = load_classes((Path(path).parent / cfg.classes_file).resolve())
    return cfg
