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
    import matplotlib.pyplot as plt

    fig = contact_sheet_figure(predictions, classes, uncertain_below, columns)
    save_figure(fig, path)
    plt.close(fig)


def contact_sheet_figure(predictions: Sequence[dict], classes: Sequence, uncertain_below: float = 0.5,
                         columns: int = 0):
    """The sheet as a matplotlib figure (draw_contact_sheet's arguments)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chinese = cjk_font_available()
    columns = columns or max(6, round(math.sqrt(len(predictions))))
    columns = max(1, min(columns, len(predictions)))
    rows = math.ceil(len(predictions) / columns)
    # Fixed cells, laid out by hand: each cell is a strip for the caption (up to 3 lines) above a square slot for
    # the photo. A photo's axes take its own aspect ratio inside the slot, top-aligned under the caption, so no
    # caption can reach into the row above whatever the photos' shapes (tight_layout misplaces aspect-locked axes).
    cell_w, slot, caption, gap, header = 2.6, 2.3, 0.55, 0.2, 0.6  # inches
    cell_h = caption + slot + gap
    fig = plt.figure(figsize=(cell_w * columns, header + cell_h * rows))
    width_in, height_in = fig.get_size_inches()
    for position, item in enumerate(predictions):
        row, column = divmod(position, columns)
        image = _thumbnail(item["file"])
        scale = slot / max(image.shape[:2])
        w, h = image.shape[1] * scale, image.shape[0] * scale
        left = column * cell_w + (cell_w - w) / 2
        top = height_in - header - row * cell_h - caption  # the slot's top, in inches from the bottom
        ax = fig.add_axes((left / width_in, (top - h) / height_in, w / width_in, h / height_in))
        best = item["top_k"][0]
        kind = verdict(item, uncertain_below)
        ax.imshow(image, aspect="auto")  # the axes already have the photo's shape
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
    known = [p for p in predictions if "correct" in p]
    summary = f"{len(predictions)} photos"
    if known:
        summary += f"; {sum(p['correct'] for p in known)}/{len(known)} right where the folder names the class"
    summary += f"; frames: green right, red wrong, orange top-1 below {uncertain_below:.0%}"
    fig.suptitle(summary, fontsize=10, y=1 - 0.2 / height_in)
    return fig
