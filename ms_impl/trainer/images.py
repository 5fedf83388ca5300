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

Listing: every tool that walks a folder of photos (trainer, eval, predict,
datatools) takes its files from `list_regular_files`. Only regular files are
ever opened: a FIFO named `x.jpg` would block the reader forever, a device
may never end, so those (and sockets, broken links) are left out with one
warning each, found by `stat`, never by opening them.
"""
from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path
from typing import Callable, List, Tuple, Union

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

__all__ = ["IMAGE_EXTENSIONS", "is_image_name", "unreadable_reason", "read_rgb", "pipeline_bytes",
           "native_format", "file_stamp", "not_regular_reason", "list_regular_files"]

# Leading bytes of the formats MindSpore's Decode reads itself.
_NATIVE_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"))


def is_image_name(name: Union[str, Path]) -> bool:
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def not_regular_reason(path: Union[str, Path]) -> str:
    """Why `path` is not a regular file ('' when it is), found without opening it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            return "a loop of symbolic links" if exc.errno == errno.ELOOP else "a broken symbolic link"
        return "no such file" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
    return f"{kind}, not a regular file"


def list_regular_files(folder: Union[str, Path], warn: Callable[[str], None], recursive: bool = False,
                       skip_hidden: bool = True, suffixes: Tuple[str, ...] = ()) -> List[Path]:
    """The regular files in `folder` (and its subfolders with `recursive`), sorted; no entry is opened.

    Each FIFO, socket, device or broken link is left out with one `warn(message)`.
    `skip_hidden` leaves out names starting with '.' (silently); `suffixes`
    keeps only names ending in one of them (any case). Symbolic links to
    folders are not followed (as `os.walk`). OSError when a folder cannot be listed.
    """
    found: List[Path] = []
    pending = [Path(folder)]
    while pending:
        for entry in pending.pop().iterdir():  # stat only (is_dir, is_file): nothing is opened
            if skip_hidden and entry.name.startswith("."):
                continue
            if entry.is_dir():
                if recursive and not entry.is_symlink():
                    pending.append(entry)
                continue
            if suffixes and not entry.name.lower().endswith(suffixes):
                continue
            if entry.is_file():
                found.append(entry)
            else:
                warn(f"skipping {entry}: {not_regular_reason(entry)} (not opened)")
    return sorted(found)


def read_rgb(path: Union[str, Path]):
    """The image as an RGB PIL image; ValueError with a one-line reason when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    problem = not_regular_reason(path)  # opening a FIFO would block until something writes to it
    if problem:
        raise ValueError(problem)
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
    problem = not_regular_reason(path)
    if problem:
        raise ValueError(f"cannot read file ({problem})")
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
