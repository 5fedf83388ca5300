"""The class table (index, English and Chinese names, garbage category) for predict and reports.

One small entry point, `load_class_table`, reading the trainer's class file
(`configs/garbage26_classes.yaml`: index, name, name_zh, category_zh, category),
a trainer config that names it, or a CSV with the columns of garbage26/classes.csv.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

CSV_COLUMNS = ("index", "name_en", "name_zh", "category_zh", "category_en")


@dataclass(frozen=True)
class ClassInfo:
    index: int
    name_en: str
    name_zh: str
    category_zh: str
    category_en: str


def read_class_csv(path: str) -> List[ClassInfo]:
    """Rows `index,name_en,name_zh,category_zh,category_en`, indices 0..N-1 in order."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read class list ({exc})") from None
    if not rows or any(col not in rows[0] for col in CSV_COLUMNS):
        raise ValueError(f"{path}: class list needs the columns {', '.join(CSV_COLUMNS)}")
    table = [ClassInfo(int(r["index"]), r["name_en"], r["name_zh"], r["category_zh"], r["category_en"]) for r in rows]
    if [c.index for c in table] != list(range(len(table))):
        raise ValueError(f"{path}: class indices must be 0..{len(table) - 1} in order")
    return table


def table_from_records(records: List[dict], source: str) -> List[ClassInfo]:
    """Class table from a list of mappings: the CSV columns, or the trainer's `name` / `category` keys."""
    try:
        table = [ClassInfo(int(r["index"]), str(r.get("name_en", r.get("name"))), str(r["name_zh"]), str(r["category_zh"]),
                           str(r.get("category_en", r.get("category")))) for r in records]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: bad class entry ({exc})") from None
    if [c.index for c in table] != list(range(len(table))):
        raise ValueError(f"{source}: class indices must be 0..{len(table) - 1} in order")
    return table


DEFAULT_CLASS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                                  "garbage26_classes.yaml")


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read config ({exc.__class__.__name__}: {' '.join(str(exc).split())[:120]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return config


def load_class_table(config_path: Optional[str] = None) -> List[ClassInfo]:
    """The class table from a CSV file, a classes YAML (`classes:` list), or a trainer config
    (`classes_file:` relative to it). Default: the project's configs/garbage26_classes.yaml.
    """
    config_path = config_path or DEFAULT_CLASS_FILE
    if config_path.lower().endswith(".csv"):
        return read_class_csv(config_path)
    config = _read_yaml(config_path)
    if "classes" not in config and isinstance(config.get("classes_file"), str):
        return load_class_table(os.path.join(os.path.dirname(os.path.abspath(config_path)), config["classes_file"]))
    records = config.get("classes")
    if not isinstance(records, list):
        raise ValueError(f"{config_path}: config has no 'classes' list nor 'classes_file'")
    return table_from_records(records, config_path)


def configured_image_size(config_path: Optional[str]) -> Optional[int]:
    """`image_size` of a YAML config, when it has one."""
    if not config_path or config_path.lower().endswith(".csv"):
        return None
    value = _read_yaml(config_path).get("image_size")
    return int(value) if isinstance(value, int) else None


def category_groups(classes: Sequence) -> Tuple[np.ndarray, List[str], List[str]]:
    """(groups, Chinese names, English names): `groups[c]` is class c's category index, categories
    numbered in order of first appearance. Takes `ClassInfo`s or the trainer's `cfg.classes`."""
    zh: List[str] = []
    en: List[str] = []
    groups = []
    for c in classes:
        english = getattr(c, "category_en", None) or c["category"]
        if c.category_zh not in zh:
            zh.append(c.category_zh)
            en.append(english)
        groups.append(zh.index(c.category_zh))
    return np.asarray(groups, dtype=np.int64), zh, en
