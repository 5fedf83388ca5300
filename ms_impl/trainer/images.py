"""Which image files the pipelines can use: the one decode check shared by the trainer, predict and datatools.

A file is usable when PIL decodes every pixel of it (`Image.open` alone
accepts truncated JPEGs; `load()` does not). Every tool that reads photos
asks `unreadable_reason`, so the up-front check and the pipeline agree.

MindSpore's `vision.Decode` (the pipelines' decoder) reads JPEG, PNG and BMP
by their content; WebP and GIF it reads only with `to_pil=True` (documented),
and on a failure it drops a copy of the bytes (`./unsupported_image.*`) into
the current folder. So the pipelines hand it those three formats only:
`pipeline_bytes` passes them through untouched and re-encodes every other
PIL-readable file (WebP, GIF, TIFF, ... whatever the extension) as PNG in
memory, losslessly.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

__all__ = ["IMAGE_EXTENSIONS", "is_image_name", "unreadable_reason", "read_rgb", "pipeline_bytes",
           "native_format", "file_stamp"]

# Leading bytes of the formats MindSpore's Decode reads itself.
_NATIVE_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"))


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


def native_format(head: bytes) -> str:
    """'JPEG', 'PNG' or 'BMP' when MindSpore's Decode reads bytes starting with `head` itself, else ''."""
    for signature, name in _NATIVE_SIGNATURES:
        if head.startswith(signature):
            return name
    return ""


def pipeline_bytes(path: Union[str, Path]) -> np.ndarray:
    """The encoded bytes of `path` that MindSpore's Decode reads: the file itself, or a PNG of it.

    ValueError with a one-line reason when the file is gone, empty or not an image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise ValueError("empty file")
    if native_format(data[:8].tobytes()):
        return data
    image = read_rgb(path)  # WebP, GIF, TIFF, ...: decoded here, handed on as PNG
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def file_stamp(path: Union[str, Path]) -> Tuple[int, int]:
    """(size, modification time in ns): changes when the file is replaced or rewritten; (-1, -1) when gone."""
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)
