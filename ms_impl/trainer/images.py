"""Which image files the pipelines can use: the one decode check shared by the trainer, predict and datatools.

A file is usable when PIL decodes every pixel of it (`Image.open` alone
accepts truncated JPEGs; `load()` does not). Every tool that reads photos
asks `unreadable_reason`, so the up-front check and the pipeline agree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

__all__ = ["IMAGE_EXTENSIONS", "is_image_name", "unreadable_reason", "read_rgb"]


def is_image_name(name: Union[str, Path]) -> bool:
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def read_rgb(path: Union[str, Path]):
    """The image as an RGB PIL image; ValueError with a one-line reason when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: catches truncated files that open() and verify() let through
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        lines = str(exc).splitlines()
        raise ValueError(lines[0] if lines else type(exc).__name__) from None


def unreadable_reason(path: Union[str, Path]) -> str:
    """Why `path` cannot be used as a photo ('' when it can)."""
    try:
        read_rgb(path)
    except ValueError as exc:
        return str(exc)
    return ""
