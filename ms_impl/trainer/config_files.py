"""Where the shipped config files are, and how any config file is read (a leaf: config.py and classes.py use it).

The repository keeps `configs/` at its top level; setup.cfg installs it as the package `ms_impl.configs`, so an
installed wheel finds `garbage26_*.yaml` and the class list through the package, wherever it is run from.
A config file holds values only (the keys, their types and defaults are trainer/schema.py); it may name another
file as `base:`, read first.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import List, Optional, Tuple

import yaml

from ms_impl.trainer.errors import UsageError

BASE_KEY = "base"  # names the file a config overrides; not an option


def _config_dir() -> Path:
    """The folder of the shipped configs: the installed package data, or `configs/` of a source tree run in place."""
    try:
        folder = importlib.resources.files("ms_impl.configs")
    except ModuleNotFoundError:  # not installed: the tests and `python ms_impl/train.py` in a checkout
        return Path(__file__).resolve().parents[2] / "configs"
    return Path(str(folder))  # a wheel installs plain files, so the package folder is a real directory


CONFIG_DIR = _config_dir()
DEFAULT_CLASSES_FILE = CONFIG_DIR / "garbage26_classes.yaml"


def read_yaml(path: Path) -> dict:
    """The top-level mapping of a YAML file; a UsageError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not a config file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def file_chain(path: Path) -> List[Tuple[Path, dict]]:
    """The file and the files it names as `base:`, the first base first (all read over the schema's defaults)."""
    chain: List[Tuple[Path, dict]] = []
    seen = set()
    current: Optional[Path] = Path(path).resolve()
    while current is not None:
        if current in seen:
            raise UsageError(f"{path}: `base:` files form a loop through {current}")
        seen.add(current)
        data = read_yaml(current)
        chain.insert(0, (current, data))
        base = data.get(BASE_KEY)
        if base is not None:
            if not isinstance(base, str) or not base:
                raise UsageError(f"{current}: base: expected a file name, got {base!r}")
            current = (current.parent / base).resolve()
        else:
            current = None
    return chain
