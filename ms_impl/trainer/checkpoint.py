"""Checkpoints of a training run: atomic writes, rotation, and the state to resume from.

A checkpoint is one MindSpore .ckpt file holding
- the network parameters under their official names (`features.*`, `dense.*`),
  so it loads into `MobileNetV2` (and into the backbone alone) like an official one,
- the optimizer state: momentum buffers `moments.<param>` and `global_step`,
- the training position as JSON (`train_state`): completed epochs, steps done in
  the current epoch, global step, best top-1 and its epoch, seed, schedule shape,
  and the options that shape the run (a resume with other values is refused).
Every random stream of the trainer (shuffling, augmentation, dropout masks) is a
function of (seed, epoch, step), so seed and position restore the RNG too.

Files in `<output_dir>/checkpoints/`: `mobilenetv2-<epoch>_<steps>.ckpt` per epoch
(the official ModelCheckpoint naming; at most keep_checkpoint_max kept),
`mobilenetv2-last.ckpt` (latest state: epoch end or interruption) and
`mobilenetv2-best.ckpt` (best val top-1).

The end of an epoch writes the epoch file, then `last`, then `best` (each
atomically); a crash between those writes leaves the set incomplete or stale.
`complete_checkpoint_set` (called on `--resume auto`) rewrites whatever is
missing or behind from the state resumed, so a resumed run always ends whole.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ms_impl.trainer.errors import UsageError
from parity.core.converter import first_nonfinite
from parity.core.files import WriteError, atomic_path, is_disk_full, one_line

PREFIX = "mobilenetv2"
LAST = f"{PREFIX}-last.ckpt"
BEST = f"{PREFIX}-best.ckpt"
_EPOCH_FILE = re.compile(rf"^{PREFIX}-(\d+)_(\d+)\.ckpt$")
STATE_KEY = "train_state"


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0            # completed epochs
    step_in_epoch: int = 0    # steps done in epoch `epoch` (non-zero only after an interruption)
    epoch_loss_sum: float = 0.0  # sum of the training losses of those steps
    global_step: int = 0
    best_top1: float = -1.0
    best_epoch: int = 0
    seed: int = 0
    epochs: int = 0
    steps_per_epoch: int = 0
    freeze_layers: int = 0    # fine-tuning's frozen leading layers: the optimizer holds state for the others only
    # the options that shape the trajectory (config.trajectory_settings); empty in checkpoints from before they were kept
    settings: Dict[str, Any] = field(default_factory=dict)


def epoch_checkpoint_name(epoch: int, steps_per_epoch: int) -> str:
    return f"{PREFIX}-{epoch}_{steps_per_epoch}.ckpt"


def _atomic_save(entries: List[dict], path: Path, state: TrainState) -> None:
    import mindspore as ms

    with atomic_path(path) as temp:
        try:
            ms.save_checkpoint(entries, str(temp), append_dict={STATE_KEY: json.dumps(asdict(state))})
        except RuntimeError as exc:  # MindSpore reports I/O failures as RuntimeError
            if is_disk_full(exc):
                raise
            raise WriteError(f"{path}: cannot write ({one_line(exc)})") from exc


def _entries(network_params: Dict[str, object], optimizer) -> List[dict]:
    entries = [{"name": name, "data": param} for name, param in network_params.items()]
    entries += [{"name": m.name, "data": m} for m in optimizer.moments]
    entries.append({"name": "global_step", "data": optimizer.global_step})
    return entries


def save_training_checkpoint(path: Path, network_params: Dict[str, object], optimizer, state: TrainState) -> None:
    """Write weights, optimizer state and `state` to `path` atomically."""
    _atomic_save(_entries(network_params, optimizer), path, state)


def rotate_epoch_checkpoints(folder: Path, keep: int) -> None:
    """Delete the oldest per-epoch checkpoints beyond `keep` (`last` and `best` are never touched)."""
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name)))
    for _, path in found[: max(0, len(found) - keep)]:
        path.unlink()


def train_state_of(path: Path) -> TrainState:
    """The training position saved in checkpoint `path`; UsageError when it is damaged or has none."""
    entries = read_checkpoint(path)
    if STATE_KEY not in entries:
        raise UsageError(f"{path}: has no training state")
    try:
        return TrainState(**json.loads(str(entries[STATE_KEY])))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: damaged training state ({one_line(exc)})") from None


def newest_resumable(folder: Path, log=None) -> Optional[Path]:
    """The intact checkpoint in `folder` that is furthest into the run (`last` or a per-epoch one), or None.

    A checkpoint whose write was cut short (process killed, disk full) does not
    load and is passed over with a warning; so a crash while `last` is being
    replaced resumes from the newest per-epoch checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = [p for p in folder.iterdir() if p.name in (LAST, BEST) or _EPOCH_FILE.match(p.name)]
    best: Optional[Tuple[Tuple[int, int, int], Path]] = None
    for path in candidates:
        try:
            state = train_state_of(path)
        except UsageError as exc:
            if log is not None:
                log.warning("passing over %s: %s", path.name, exc)
            continue
        rank = (state.global_step, state.epoch, int(path.name == LAST))  # `last` wins a tie: it is the latest write
        if best is None or rank > best[0]:
            best = (rank, path)
    return None if best is None else best[1]


def read_checkpoint(path: Path) -> Dict[str, object]:
    """All entries of a .ckpt file; UsageError naming the file when it cannot be read."""
    import mindspore as ms

    if not Path(path).is_file():
        raise UsageError(f"{path}: checkpoint not found")
    try:
        return ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError, TypeError) as e:
        raise UsageError(f"{path}: not a readable MindSpore checkpoint ({one_line(e)})") from None


def load_network_weights(path: Path, network_params: Dict[str, object]) -> Dict[str, object]:
    """Copy the network tensors of checkpoint `path` into `network_params`; returns all entries read."""
    entries = read_checkpoint(path)
    missing = [name for name in network_params if name not in entries]
    if missing:
        raise UsageError(f"{path}: lacks {len(missing)} network parameter(s), e.g. {missing[0]!r}")
    for name, param in network_params.items():
        value = entries[name]
        if tuple(value.shape) != tuple(param.shape):
            raise UsageError(f"{path}: {name} has shape {tuple(value.shape)}, the network expects {tuple(param.shape)}")
    bad = first_nonfinite((name, entries[name].asnumpy()) for name in network_params)
    if bad:
        raise UsageError(f"{path}: tensor {bad} holds NaN or Inf values; use an earlier checkpoint")
    for name, param in network_params.items():
        value = entries[name]
        param.set_data(value.value() if hasattr(value, "value") else value)
    return entries


def restore_training_checkpoint(path: Path, network_params: Dict[str, object], optimizer) -> TrainState:
    """Load weights and optimizer state from `path` into the run; returns its TrainState."""
    entries = load_network_weights(path, network_params)
    if STATE_KEY not in entries:
        raise UsageError(f"{path}: has no training state (a weights-only checkpoint cannot be resumed)")
    for moment in optimizer.moments:
        if moment.name not in entries:
            raise UsageError(f"{path}: lacks optimizer state {moment.name!r}")
        moment.set_data(entries[moment.name].value())
    optimizer.global_step.set_data(entries["global_step"].value())
    return TrainState(**json.loads(entries[STATE_KEY]))


def _intact_state(path: Path) -> Optional[TrainState]:
    """The training state of `path`, or None when it is missing or cannot be read."""
    try:
        return train_state_of(path)
    except UsageError:
        return None


def _holds_epoch_end(path: Path, epoch: int) -> bool:
    state = _intact_state(path)
    return state is not None and state.epoch == epoch and state.step_in_epoch == 0


def complete_checkpoint_set(folder: Path, resumed_from: Path, state: TrainState, network_params: Dict[str, object],
                            optimizer, log=None) -> List[Path]:
    """Rewrite the members of the checkpoint set a crash left missing or stale; returns the files written.

    `state` is the one just restored from `resumed_from` (the newest intact
    checkpoint), with the network and optimizer holding its values. At an epoch
    end the epoch file and `last` must hold exactly that state; `best` must
    hold the end of epoch `state.best_epoch`: the current weights when that is
    the epoch just ended, else a copy of that epoch's file while it is kept.
    """
    folder = Path(folder)
    written: List[Path] = []
    at_epoch_end = state.step_in_epoch == 0 and state.epoch > 0
    if at_epoch_end:
        for target in (folder / epoch_checkpoint_name(state.epoch, state.steps_per_epoch), folder / LAST):
            if target == Path(resumed_from):
                continue
            current = _intact_state(target)
            if current is None or (current.epoch, current.step_in_epoch, current.global_step) != (
                    state.epoch, 0, state.global_step):
                save_training_checkpoint(target, network_params, optimizer, state)
                written.append(target)
    best = folder / BEST
    if state.best_epoch > 0 and not _holds_epoch_end(best, state.best_epoch):
        if at_epoch_end and state.best_epoch == state.epoch:
            save_training_checkpoint(best, network_params, optimizer, state)
            written.append(best)
        else:
            source = folder / epoch_checkpoint_name(state.best_epoch, state.steps_per_epoch)
            if _holds_epoch_end(source, state.best_epoch):
                with atomic_path(best) as temp:
                    shutil.copyfile(source, temp)
                written.append(best)
            elif log is not None:
                log.warning("%s: missing or stale, and epoch %d's checkpoint (the best) is no longer kept; it is "
                            "written again when an epoch beats top-1 %.4f", best, state.best_epoch, state.best_top1)
    if log is not None:
        for path in written:
            log.info("rewrote %s: a crash had left it missing or stale", path)
    return written
