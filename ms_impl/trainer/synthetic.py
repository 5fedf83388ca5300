"""The embedded default dataset: 26 classes of generated images, no download.

Each class has its own background hue, foreground shape and texture, so a small
network separates them within a few epochs; the position, size, colour shade
and noise vary per image. Images are drawn with a generator seeded per
(seed, class, image), so the set is identical on every machine, written as
JPEGs in the same layout as a real dataset (`train/<class name>/*.jpg`,
`val/...`) and cached: a second run reuses the folder.
"""
from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from parity.core.files import atomic_folder

FORMAT_VERSION = 1  # bump when the drawing changes, so stale caches are not reused
SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
TEXTURES = ("plain", "stripes", "dots")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mbv2-twins" / "synthetic"


def _draw_image(class_index: int, num_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    hue = (class_index / num_classes + rng.uniform(-0.01, 0.01)) % 1.0
    background = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.8), rng.uniform(0.6, 0.9))
    foreground = colorsys.hsv_to_rgb((hue + 0.5) % 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.2, 1.0))
    to_rgb = lambda c: tuple(int(255 * v) for v in c)  # noqa: E731
    image = Image.new("RGB", (size, size), to_rgb(background))
    draw = ImageDraw.Draw(image)

    texture = TEXTURES[class_index % len(TEXTURES)]
    step = max(3, size // 8)
    if texture == "stripes":
        for x in range(0, size, step):
            draw.line([(x, 0), (x, size)], fill=to_rgb(foreground), width=max(1, step // 3))
    elif texture == "dots":
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                draw.point((x, y), fill=to_rgb(foreground))

    radius = size * rng.uniform(0.22, 0.32)
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12) * size, size / 2 + rng.uniform(-0.12, 0.12) * size
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    shape = SHAPES[(class_index // len(TEXTURES)) % len(SHAPES)]
    fill = to_rgb(foreground)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    elif shape == "cross":
        w = radius / 3
        draw.rectangle([cx - w, cy - radius, cx + w, cy + radius], fill=fill)
        draw.rectangle([cx - radius, cy - w, cx + radius, cy + w], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(radius / 3)))
    else:
        draw.rectangle([cx - radius, cy - radius / 4, cx + radius, cy + radius / 4], fill=fill)

    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def ensure_synthetic_dataset(
    class_names: Sequence[str],
    image_size: int,
    train_per_class: int,
    val_per_class: int,
    seed: int = 0,
    cache_dir: Path | str | None = None,
) -> Path:
    """The dataset folder (with train/ and val/), generated on first use, then reused."""
    if image_size < 8 or train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"synthetic set needs image_size >= 8 and >= 1 image per class, got {image_size}, {train_per_class}, {val_per_class}")
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    name = f"garbage{len(class_names)}-v{FORMAT_VERSION}-{image_size}px-{train_per_class}x{val_per_class}-seed{seed}"
    target = root / name
    if (target / "train").is_dir() and (target / "val").is_dir():
        return target

    with atomic_folder(target) as staging:  # a half-written set is never picked up
        for split_index, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
            for class_index, class_name in enumerate(class_names):
                folder = staging / split / class_name
                folder.mkdir(parents=True)
                for i in range(count):
                    rng = np.random.default_rng([seed, split_index, class_index, i])
                    _draw_image(class_index, len(class_names), image_size, rng).save(folder / f"{i:04d}.jpg", quality=92)
    return target
