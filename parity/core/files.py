"""Writing files so that a reader never sees half of one: the project's one atomic-write helper.

Every writer in the project (checkpoints, reports, caches, exports, the
kernel build) goes through `atomic_path`: the content is written to a
temporary name in the destination folder (so `os.replace` is atomic), given
the usual umask mode, and renamed over the destination only when complete.
On any error the temporary file is removed, and an `OSError` becomes a
`WriteError` whose text is one line naming the destination (disk full,
read-only file system, a folder in the way).

Also here: `one_line(exc)`, the one-line form of any exception, used
wherever a framework's multi-line error is shown to a user; `path_problem`,
the check every tool applies to a path option before using it (a path too
long for the system fails with ENAMETOOLONG wherever it is first touched,
often deep inside a library), and `shown_path` to name a long path in one line.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Union

from parity.core import interrupts
from parity.core.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["WriteError", "atomic_path", "atomic_folder", "check_writable_folder", "atomic_write_bytes", "atomic_write_text", "one_line",
           "default_file_mode", "TEMP_MARKER", "stale_temporaries", "remove_stale_temporaries", "is_disk_full",
           "PATH_LIMIT", "NAME_LIMIT", "path_problem", "shown_path", "path_argument", "is_path_error", "path_error_line"]

TEMP_MARKER = ".tmp-"  # every temporary file's name starts with "." and holds this marker


class WriteError(UserError):
    """A destination could not be written. `str(e)` is one line naming the path; nothing was left behind."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def one_line(exc: BaseException, limit: int = 200, with_type: bool = True) -> str:
    """The first line of an error's message, at most `limit` characters, prefixed with its type.

    MindSpore's errors run over dozens of lines (a C++ call stack, "For
    details..." links); the first line is the reason a user can act on. Its
    kernel errors open with a framed section title ("----", "- Kernel error:"),
    skipped here for the line after it.
    """
    lines = [line.strip() for line in str(exc).splitlines()
             if any(ch.isalnum() for ch in line) and not (line.startswith("- ") and line.rstrip().endswith(":"))]
    text = " ".join(lines[0].split(" For details")[0].split()) if lines else ""
    text = text[:limit] or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if with_type else text


# Linux: the longest path a system call accepts (PATH_MAX less the NUL) and the longest name in it (NAME_MAX of
# ext4, xfs, btrfs, tmpfs); anything longer fails with ENAMETOOLONG.
PATH_LIMIT = 4095
NAME_LIMIT = 255


def path_problem(path: PathLike) -> str:
    """Why `path` can never name a file here ('' when it can): too long in all or in one of its names."""
    encoded = os.fsencode(os.fspath(path))
    longest = max(len(name) for name in encoded.split(b"/"))
    if len(encoded) > PATH_LIMIT or longest > NAME_LIMIT:
        return (f"file name too long ({len(encoded)} bytes, the longest name {longest}; "
                f"at most {PATH_LIMIT} in all and {NAME_LIMIT} per name)")
    return ""


def shown_path(path: PathLike, limit: int = 120) -> str:
    """`path` for a one-line message; a longer one keeps its start and end around the count of characters left out."""
    text = os.fspath(path) if not isinstance(path, str) else path
    text = text if isinstance(text, str) else os.fsdecode(text)
    if len(text) <= limit:
        return text
    head, tail = text[: limit - 40], text[-20:]
    return f"{head}[... {len(text) - len(head) - len(tail)} characters ...]{tail}"


def path_argument(text: str) -> str:
    """argparse `type=` of a path option: the text itself, or an error naming the problem (see `path_problem`)."""
    import argparse

    problem = path_problem(text) if text else ""
    if problem:
        raise argparse.ArgumentTypeError(f"{shown_path(text)}: {problem}")
    return text


def is_path_error(exc: BaseException) -> bool:
    """An OSError about the path itself (too long, a loop of links), not about the file behind it."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENAMETOOLONG, errno.ELOOP)


def path_error_line(exc: OSError) -> str:
    """One line for an `is_path_error` error: the path (shortened) and what is wrong with it."""
    where = shown_path(exc.filename) if exc.filename is not None else "a path"
    return f"{where}: {(exc.strerror or str(exc)).lower()}"


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, also when a framework reports it as text (MindSpore: a RuntimeError)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left on device" in text or "disk quota exceeded" in text or "errno 28" in text


def _reason(exc: BaseException) -> str:
    if is_disk_full(exc):
        return "no space left on device"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS,):
        return "read-only file system"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return one_line(exc)


def _process_umask() -> int:
    """The process umask, read without changing it (other threads may be creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def default_file_mode() -> int:
    """0666 less the process umask."""
    return 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_path(path: PathLike, *, suffix: Optional[str] = None, mode: Optional[int] = None,
                before_replace: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any error it is removed.

    `suffix` defaults to `path`'s own (MindSpore appends `.ckpt`, numpy `.npz`
    when a name lacks them). `before_replace(temp)` may inspect the finished
    file and raise to abandon it. Raises `WriteError` for OS-level failures.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{path}: is a folder, not a file")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise WriteError(f"{path}: folder {folder} does not exist")
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}",
                                             suffix=path.suffix if suffix is None else suffix, dir=str(folder))
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({_reason(exc)})") from exc
    os.close(handle)
    temp = Path(temp_name)
    try:
        try:
            yield temp
        except OSError as exc:
            raise WriteError(f"{path}: cannot write ({_reason(exc)})") from exc
        except Exception as exc:  # frameworks report a full disk in their own error types
            if is_disk_full(exc):
                raise WriteError(f"{path}: cannot write (no space left on device)") from exc
            raise
        if before_replace is not None:
            before_replace(temp)
        try:
            os.chmod(temp, default_file_mode() if mode is None else mode)  # mkstemp makes 0600 files
            os.replace(temp, path)
        except OSError as exc:
            raise WriteError(f"{path}: cannot write ({_reason(exc)})") from exc
    finally:
        for leftover in (temp, temp.with_suffix(".tmp")):  # MindSpore writes `<name>.tmp`, then renames
            with contextlib.suppress(OSError):
                if leftover.exists():
                    leftover.unlink()


@contextlib.contextmanager
def atomic_folder(path: PathLike, aside: Optional[PathLike] = None) -> Iterator[Path]:
    """Like `atomic_path`, for a folder: fill the yielded staging folder; it becomes `path` when complete.

    An empty folder at `path` is replaced. A folder with content is kept: without
    `aside`, it is taken as another process's copy of the same folder (it won the
    race) and the staging copy is dropped; with `aside` (a new sibling name, the
    caller's `--force`), it is renamed to `aside` just before the new folder takes
    its place, and renamed back if that fails. On any error (or Ctrl+C) the staging
    folder is removed and `path` is as it was; OS errors become a one-line `WriteError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}{TEMP_MARKER}", dir=str(path.parent)))
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({_reason(exc)})") from exc
    try:
        try:
            yield staging
            os.chmod(staging, 0o777 & ~_process_umask())  # mkdtemp makes 0700 folders
            with interrupts.deferred():  # a Ctrl+C between the two renames would leave no folder at `path`
                _put_in_place(staging, path, None if aside is None else Path(aside))
        except OSError as exc:
            if aside is None and path.is_dir() and any(path.iterdir()):  # another process won the race: keep its copy
                return
            raise WriteError(f"{path}: cannot write ({_reason(exc)})") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _put_in_place(staging: Path, path: Path, aside: Optional[Path]) -> None:
    if aside is not None and path.is_dir() and not path.is_symlink() and any(path.iterdir()):
        os.rename(path, aside)
        try:
            os.rename(staging, path)
        except BaseException:
            os.rename(aside, path)  # the earlier folder back in its place
            raise
    else:
        os.replace(staging, path)  # rename(2) replaces an empty folder, refuses one with content


def check_writable_folder(folder: PathLike, what: str = "") -> None:
    """WriteError unless `folder` (or, when it does not exist yet, its nearest existing parent) can be written.

    For tools that write their output after a long computation: fail first.
    `os.access` also sees a read-only file system, for root too.
    """
    folder = Path(folder)
    label = f"{what} {folder}".strip()
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"{label}: is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"{label}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"{label}: cannot write ({existing} is read-only)")


def atomic_write_bytes(path: PathLike, data: bytes, **kwargs) -> None:
    with atomic_path(path, **kwargs) as temp:
        temp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str, **kwargs) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), **kwargs)


def stale_temporaries(folder: PathLike) -> List[Path]:
    """Temporary files `atomic_path` left in `folder` when its process was killed mid-write."""
    return sorted(p for p in Path(folder).glob(f".*{TEMP_MARKER}*") if p.is_file() or p.is_dir())


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Delete `stale_temporaries(folder)`; returns what was removed.

    Only call it while no other process can be writing into `folder` (the
    trainer holds the run folder's lock): a live writer's temporary looks the same.
    """
    removed = []
    for path in stale_temporaries(folder):
        with contextlib.suppress(OSError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed
