"""Classification figures and files of a run: confusion matrix, per-class table, plots, metrics.csv.

numpy and matplotlib (Agg) only, so train.py and eval.py share them.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import List, Sequence

import numpy as np

from ms_impl.trainer.metrics import per_class_metrics
from parity.core.files import atomic_path, atomic_write_text

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr_last", "train_img_per_s", "epoch_seconds")


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
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "name", "name_zh", "category", "category_zh", "precision", "recall", "f1", "support"])
    for c in classes:
        i = c.index
        writer.writerow([i, c.name, c.name_zh, c.category, c.category_zh, f"{m['precision'][i]:.6f}",
                         f"{m['recall'][i]:.6f}", f"{m['f1'][i]:.6f}", int(m["support"][i])])
    atomic_write_text(path, buffer.getvalue())


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
    save_figure(fig, path)
    plt.close(fig)


def category_table(matrix: np.ndarray, names: Sequence[str]) -> str:
    """The category confusion matrix as text (rows: true, columns: predicted), recall per row, accuracy."""
    # CJK names are two columns wide in a terminal: pad by display width
    width = max(max(2 * len(n) for n in names) + 2, len("true \\ pred") + 2)
    pad = lambda text: text + " " * (width - 2 * len(text) if any(ord(ch) > 0x2E80 for ch in text) else width - len(text))
    lines = [pad("true \\ pred") + "".join(pad(n) for n in names) + "recall"]
    for i, name in enumerate(names):
        support = matrix[i].sum()
        recall = matrix[i, i] / support if support else 0.0
        lines.append(pad(name) + "".join(pad(str(int(c))) for c in matrix[i]) + f"{recall:.3f}")
    lines.append(f"category accuracy {np.trace(matrix) / max(matrix.sum(), 1):.4f} ({int(np.trace(matrix))}/{int(matrix.sum())})")
    return "\n".join(lines)


def plot_category_confusion(path: Path, matrix: np.ndarray, names_zh: Sequence[str], names_en: Sequence[str], title: str) -> None:
    """The category confusion matrix as a figure; Chinese names too when a CJK font is installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{zh}\n{en}" for zh, en in zip(names_zh, names_en)] if cjk_font_available() else list(names_en)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.5 + 1.3 * n, 2 + 1.1 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted category")
    ax.set_ylabel("true category")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def cjk_font_available() -> bool:
    """Whether a font with Chinese glyphs is installed; if so, matplotlib is set to use it
    (without one, Chinese text would be drawn as empty boxes)."""
    import matplotlib
    from matplotlib import font_manager

    for font in font_manager.fontManager.ttflist:
        if any(tag in font.name for tag in ("CJK", "WenQuanYi", "Hei", "Ming", "Song", "Kai", "Droid Sans Fallback")):
            matplotlib.rcParams["font.sans-serif"] = [font.name] + list(matplotlib.rcParams["font.sans-serif"])
            return True
    return False


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
    save_figure(fig, path)
    plt.close(fig)


def save_figure(fig, path) -> None:
    """Save a matplotlib figure atomically (parity.core.files.atomic_path)."""
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=110)


def read_metrics(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_metrics(path: Path, rows: List[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
