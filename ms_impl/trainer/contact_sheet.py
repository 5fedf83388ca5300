"""A contact sheet of predictions (matplotlib, Agg): each photo with its top class, category and probability.

Frame colours when the photo's folder names its true class: green correct,
red wrong (the true class is written under it), orange right but uncertain
(top-1 probability below the threshold). Grey: true class unknown. Chinese
names are drawn when a CJK font is installed; otherwise English only (matplotlib
would draw empty boxes).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ms_impl.trainer.report import cjk_font_available, save_figure

COLOURS = {"correct": "#2e7d32", "wrong": "#c62828", "uncertain": "#ef6c00", "unknown": "#9e9e9e"}
THUMBNAIL = 160  # pixels on the longer side


def verdict(prediction: dict, uncertain_below: float) -> str:
    """correct | wrong | uncertain | unknown (no true class from the folder name)."""
    if "correct" not in prediction:
        return "uncertain" if prediction["top_k"][0]["probability"] < uncertain_below else "unknown"
    if not prediction["correct"]:
        return "wrong"
    return "uncertain" if prediction["top_k"][0]["probability"] < uncertain_below else "correct"


def _thumbnail(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        return np.asarray(image)


def draw_contact_sheet(path: str, predictions: Sequence[dict], classes: Sequence, uncertain_below: float = 0.5,
                       columns: int = 0) -> None:
    """Write the sheet PNG atomically (`parity.core.files.WriteError` on failure).
    `columns` 0: 6, or about a square grid for more than 36 photos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chinese = cjk_font_available()
    columns = columns or max(6, round(math.sqrt(len(predictions))))
    columns = max(1, min(columns, len(predictions)))
    rows = math.ceil(len(predictions) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.2 * rows), squeeze=False)
    for ax, item in zip(axes.flat, predictions):
        best = item["top_k"][0]
        kind = verdict(item, uncertain_below)
        ax.imshow(_thumbnail(item["file"]))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(COLOURS[kind])
            spine.set_linewidth(4 if kind in ("wrong", "uncertain") else 2)
        name = f"{best['name']} / {best['name_zh']}" if chinese else best["name"]
        category = f"{item['category_zh']} {item['category']}" if chinese else item["category"]
        lines = [f"{name} {100 * best['probability']:.0f}%",
                 f"{category} {100 * item['category_probability']:.0f}%"]
        if kind == "wrong":
            truth = classes[item["true_index"]]
            lines.append(f"true: {truth.name}" + (f" / {truth.name_zh}" if chinese else ""))
        elif kind == "uncertain":
            lines.append("uncertain")
        ax.set_title("\n".join(lines), fontsize=8, color=COLOURS[kind] if kind in ("wrong", "uncertain") else "black")
    for ax in list(axes.flat)[len(predictions):]:
        ax.axis("off")
    known = [p for p in predictions if "correct" in p]
    summary = f"{len(predictions)} photos"
    if known:
        summary += f"; {sum(p['correct'] for p in known)}/{len(known)} right where the folder names the class"
    summary += f"; frames: green right, red wrong, orange top-1 below {uncertain_below:.0%}"
    fig.suptitle(summary, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.2 * rows)))  # leave the suptitle its own strip
    save_figure(fig, path)
    plt.close(fig)
