"""A training run's folder: one trainer at a time, and nothing of an old run ever deleted.

- `RunLock`: an exclusive lock on `<output_dir>/.train.lock` (`filelock`, an
  OS-level lock the kernel releases when its holder dies, so a killed run never
  blocks the next one). The holder's pid, host and start time go to a sidecar
  file, so a refused second trainer names the holder; a sidecar naming a dead
  process on this host is reported as a stale lock and taken over.
- `holds_run`: whether the folder holds a run's results or checkpoints.
- `recorded_tta`: the test-time augmentation a checkpoint's run evaluated with
  (its `summary.json`), the default of eval.py and predict.py for that checkpoint.
- `move_aside`: `--force` (or `--resume auto` with nothing intact to resume)
  renames the old run's files into a sibling `<output_dir>.old-<time>` folder
  instead of deleting them, and only after every input has been validated
  (`aside_path` names that folder; `datatools split --force` uses it too).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import List, Optional

from ms_impl.trainer.errors import UsageError
from parity.core.files import atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)

LOCK_NAME = ".train.lock"
OWNER_NAME = ".train.lock.owner"
RESULT_FILES = ("metrics.csv", "summary.json")
CHECKPOINT_FOLDER = "checkpoints"
FEATURE_CACHE_FOLDER = "feature_cache"  # the default feature_cache_dir inside a run folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    if not owner:
        return "another process (its pid is not recorded)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {started}"


class RunLock:
    """Exclusive use of an output folder by one training process; created when missing.

    `acquire()` raises UsageError (one line naming the holder) when another
    trainer holds the folder; `release(remove_created=True)` also removes the
    folder again when this lock created it and it holds nothing else.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.created = False
        self._lock = None

    def acquire(self) -> "RunLock":
        from filelock import FileLock, Timeout

        if not self.folder.is_dir():
            if self.folder.exists():
                raise UsageError(f"{self.folder}: --output-dir is a file, not a folder")
            try:
                self.folder.mkdir(parents=True)
            except OSError as exc:
                raise UsageError(f"{self.folder}: output_dir is not writable ({exc.strerror or exc})") from None
            self.created = True
        owner_file = self.folder / OWNER_NAME
        previous = _read_owner(owner_file)
        lock = FileLock(str(self.folder / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise UsageError(f"{self.folder}: in use by another training run ({_describe(previous)}); "
                             "wait for it to finish or choose another --output-dir") from None
        except OSError as exc:
            self._remove_created()
            raise UsageError(f"{self.folder}: output_dir is not writable ({exc.strerror or exc})") from None
        self._lock = lock
        host = socket.gethostname()
        if previous and previous.get("host") == host and not _pid_alive(int(previous.get("pid", -1))):
            log.info("%s: stale lock of %s (process gone), taken over", self.folder, _describe(previous))
        try:
            atomic_write_text(owner_file, json.dumps({"pid": os.getpid(), "host": host, "started": time.time()}) + "\n")
        except Exception:
            self.release()
            raise
        return self

    def release(self, remove_created: bool = False) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            (self.folder / OWNER_NAME).unlink()
        self._lock.release()
        self._lock = None
        if remove_created:
            self._remove_created()

    def _remove_created(self) -> None:
        """The folder this lock created, when nothing but the lock files is in it."""
        if not self.created:
            return
        leftovers = [p for p in self.folder.iterdir() if p.name not in (LOCK_NAME, OWNER_NAME)] if self.folder.is_dir() else []
        if not leftovers:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.created = False

    def remove_stale_temporaries(self) -> List[Path]:
        """Half-written files a killed earlier run left behind (safe: this process holds the lock)."""
        removed = []
        for folder in (self.folder, self.folder / CHECKPOINT_FOLDER):
            if folder.is_dir():
                removed += remove_stale_temporaries(folder)
        for path in removed:
            log.info("removed %s: half-written by a run that was killed", path)
        return removed


def holds_run(folder: Path) -> bool:
    """True when `folder` holds a run's results or any checkpoint."""
    folder = Path(folder)
    if any((folder / name).exists() for name in RESULT_FILES):
        return True
    checkpoints = folder / CHECKPOINT_FOLDER
    return checkpoints.is_dir() and any(p.suffix == ".ckpt" for p in checkpoints.iterdir())


def aside_path(folder: Path) -> Path:
    """A new sibling name for what `--force` replaces: `<folder>.old-<time>` (`-2`, `-3`, ... when taken)."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.old-{stamp}")
    suffix = 1
    while target.exists() or target.is_symlink():
        suffix += 1
        target = folder.with_name(f"{folder.name}.old-{stamp}-{suffix}")
    return target


def move_aside(folder: Path) -> Optional[Path]:
    """Move every entry of `folder` into a new sibling `<folder>.old-<time>`, except the lock files and the
    feature cache (keyed by content and checked on use, so the new run may reuse it; it holds no result).

    Returns the new folder (None when there was nothing to move). Nothing is
    deleted; a rename in the same parent folder never copies data.
    """
    folder = Path(folder)
    entries = [p for p in folder.iterdir() if p.name not in (LOCK_NAME, OWNER_NAME, FEATURE_CACHE_FOLDER)]
    if not entries:
        return None
    target = aside_path(folder)
    try:
        target.mkdir()
        for entry in entries:
            os.replace(entry, target / entry.name)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot move the old run aside to {target} ({exc.strerror or exc}); "
                         "nothing was deleted") from None
    return target


def recorded_tta(checkpoint: Path) -> Optional[str]:
    """The `tta` of the run that wrote `checkpoint` (`<run>/checkpoints/*.ckpt` beside `<run>/summary.json`),
    or None when there is no readable summary naming a known mode (a checkpoint from elsewhere)."""
    from ms_impl.trainer.metrics import TTA_MODES

    summary = Path(checkpoint).resolve().parent.parent / "summary.json"
    try:
        tta = json.loads(summary.read_text(encoding="utf-8")).get("tta")
    except (OSError, ValueError, AttributeError):
        return None
    return tta if tta in TTA_MODES else None
