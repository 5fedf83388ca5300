"""The class list: index, English and Chinese names, garbage category. One loader for every tool.

    classes = load_classes()   # the shipped garbage26_classes.yaml; or a classes YAML, a trainer config, a CSV

Sources: a classes YAML (a `classes:` list, like `configs/garbage26_classes.yaml`),
a trainer config (its resolved `classes_file`), or a CSV with the columns of
the reference `garbage26/classes.csv` (`index,name_en,name_zh,category_zh,category_en`;
`name`/`category` headers are read too). Every source gives the same
`ClassInfo` fields; `name` is the English name and the class folder name.
Indices must be 0..N-1 in order and names unique: the trainer maps folders to
indices through this list, never through folder sort order.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ms_impl.trainer.config_files import BASE_KEY, DEFAULT_CLASSES_FILE, file_chain, read_yaml
from ms_impl.trainer.schema import OPTIONS
from ms_impl.trainer.errors import UsageError

CLASS_FIELDS = ("index", "name", "name_zh", "category_zh", "category")
# Header aliases of the reference CSV (garbage26/classes.csv).
CSV_ALIASES = {"name_en": "name", "category_en": "category"}

PathLike = Union[str, Path]


@dataclass(frozen=True)
class ClassInfo:
    index: int
    name: str  # English name, also the class folder name
    name_zh: str
    category_zh: str  # 干垃圾 / 可回收物 / 湿垃圾 / 有害垃圾
    category: str  # Residual waste / Recyclable / Kitchen waste / Hazardous waste


def classes_from_records(records: Iterable[Mapping], source: PathLike) -> List[ClassInfo]:
    """Checked class list from mappings with the `CLASS_FIELDS` keys: indices 0..N-1 in order, names unique."""
    classes: List[ClassInfo] = []
    for position, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise UsageError(f"{source}: class #{position} is not a mapping of {', '.join(CLASS_FIELDS)}")
        record = {CSV_ALIASES.get(k, k): v for k, v in record.items()}
        missing = [k for k in CLASS_FIELDS if k not in record]
        if missing:
            raise UsageError(f"{source}: class #{position} lacks {', '.join(missing)}")
        try:
            index = int(record["index"])
        except (TypeError, ValueError):
            raise UsageError(f"{source}: class #{position} has index {record['index']!r}, not an integer") from None
        if index != position:
            raise UsageError(f"{source}: class {record['name']!r} has index {index}, expected {position} (list them in index order)")
        classes.append(ClassInfo(index, *(str(record[k]) for k in CLASS_FIELDS[1:])))
    if not classes:
        raise UsageError(f"{source}: the class list is empty")
    names = [c.name for c in classes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"{source}: duplicate class names {duplicates}")
    return classes


def read_class_csv(path: PathLike) -> List[ClassInfo]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read class list ({exc.__class__.__name__})") from None
    return classes_from_records(rows, path)


def load_classes(path: Optional[PathLike] = None) -> List[ClassInfo]:
    """The class list of a classes YAML, a trainer config or a CSV (default: the shipped garbage26_classes.yaml)."""
    path = Path(path or DEFAULT_CLASSES_FILE)
    if path.suffix.lower() == ".csv":
        return read_class_csv(path)
    data = read_yaml(path)
    if "classes" in data:
        if not isinstance(data["classes"], list):
            raise UsageError(f"{path}: `classes` must be a list")
        return classes_from_records(data["classes"], path)
    # a trainer config: the classes_file of the last file of its `base:` chain that sets one, relative to that file
    chain = file_chain(path)
    for file_path, settings in reversed(chain):
        if settings.get("classes_file"):
            return load_classes(file_path.parent / str(settings["classes_file"]))
    if all(key in OPTIONS or key == BASE_KEY for _, settings in chain for key in settings):
        return load_classes()  # a trainer config on the default class list
    raise UsageError(f"{path}: neither a `classes:` list nor a trainer config")


def category_groups(classes: Sequence[ClassInfo]) -> Tuple[np.ndarray, List[str], List[str]]:
    """(groups, Chinese names, English names): `groups[c]` is class c's category index, categories
    numbered in order of first appearance."""
    zh: List[str] = []
    en: List[str] = []
    groups = []
    for c in classes:
        if c.category_zh not in zh:
            zh.append(c.category_zh)
            en.append(c.category)
        groups.append(zh.index(c.category_zh))
    return np.asarray(groups, dtype=np.int64), zh, en
