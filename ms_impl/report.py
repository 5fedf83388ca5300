"""Classification figures and files of a run: confusion matrix, per-class table, plots, metrics.csv.

numpy and matplotlib (Agg) only, so train.py and eval.py share them.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr_last", "train_img_per_s", "epoch_seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray) -> Dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def per_class_table(matrix: np.ndarray, classes: Sequence) -> str:
    """A fixed-width text table: one row per class, then the macro average."""
    m = per_class_metrics(matrix)
    width = max(len(c.name) for c in classes)
    lines = [f"{'idx':>3}  {'class':<{width}}  {'category':<15}  precision  recall     f1  support"]
    for c in classes:
        i = c.index
        lines.append(f"{i:>3}  {c.name:<{width}}  {c.category:<15}  {m['precision'][i]:9.3f}  {m['recall'][i]:6.3f}  {m['f1'][i]:5.3f}  {m['support'][i]:7d}")
    lines.append(f"{'':>3}  {'macro avg':<{width}}  {'':<15}  {m['precision'].mean():9.3f}  {m['recall'].mean():6.3f}  {m['f1'].mean():5.3f}  {m['support'].sum():7d}")
    return "\n".join(lines)


def write_per_class_csv(path: Path, matrix: np.ndarray, classes: Sequence) -> None:
    m = per_class_metrics(matrix)
    rows = ["index,name,name_zh,category,category_zh,precision,recall,f1,support"]
    for c in classes:
        i = c.index
        rows.append(f'{i},"{c.name}",{c.name_zh},{c.category},{c.category_zh},{m["precision"][i]:.6f},{m["recall"][i]:.6f},{m["f1"][i]:.6f},{m["support"][i]}')
    atomic_write_text(path, "\n".join(rows) + "\n")


def plot_confusion_matrix(path: Path, matrix: np.ndarray, classes: Sequence, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(6, 0.38 * n + 3), max(5, 0.38 * n + 2)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), [c.name for c in classes], rotation=90, fontsize=7)
    ax.set_yticks(range(n), [c.name for c in classes], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6, color="white" if count > threshold else "black")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_curves(path: Path, rows: List[dict]) -> None:
    """Train/val loss and val top-1/top-5 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o", label="train")
    left.plot(epochs, [float(r["val_loss"]) for r in rows], marker="o", label="val")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    right.plot(epochs, [float(r["val_top1"]) for r in rows], marker="o", label="val top-1")
    right.plot(epochs, [float(r["val_top5"]) for r in rows], marker="o", label="val top-5")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.set_ylim(0, 1)
    right.legend()
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def read_metrics(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_metrics(path: Path, rows: List[dict]) -> None:
    lines = [",".join(METRIC_FIELDS)] + [",".join(str(row[k]) for k in METRIC_FIELDS) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
