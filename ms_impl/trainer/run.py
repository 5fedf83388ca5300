"""One run's parts, built in the order every run needs them: config -> devices -> data -> network -> LR schedule ->
optimizer -> training state (fresh, or restored from a checkpoint).

    cfg = build_config(argv)
    run = build_run(cfg, start_devices(cfg))   # a Run: cfg, data, network, lr, optimizer, state, ctx
    step = run.train_step()                    # the compiled training step, as the epoch loop runs it

`ms_impl/train.py`, the experiments and the tests build runs here; the epoch loop (`loop.py`) takes a Run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ms_impl.trainer import checkpoint, dataset
from ms_impl.trainer import distributed as dist
from ms_impl.trainer.balance import describe, inverse_frequency_weights
from ms_impl.trainer.checkpoint import TrainState
from ms_impl.trainer.config import load_config, trajectory_settings
from ms_impl.trainer.distributed import DistributedContext
from ms_impl.trainer.errors import UsageError

log = logging.getLogger("ms_impl.train")

MAX_SCHEDULE_STEPS = 10_000_000  # the per-step LR array is materialised: 40 MB at most
DESCRIPTION = "Train MobileNetV2 (MindSpore) on the 26-class garbage set."


@dataclass
class Data:
    """The run's images: train and val lists, the input size, and what one step of all workers takes."""

    train: dataset.ImageList
    val: dataset.ImageList
    image_size: int
    synthetic: bool
    steps_per_epoch: int
    global_batch: int  # batch_size x workers
    class_weights: Optional[np.ndarray] = None  # loss weight per class with class_balance: weights


# ---------------------------------------------------------------- config, checkpoints


def build_config(argv: Optional[List[str]], description: str = DESCRIPTION):
    """The run's EasyDict config; types, choices and ranges are checked by the schema (trainer/schema.py)."""
    return load_config(argv, description=description)


def checkpoint_dir(cfg) -> Path:
    return Path(cfg.output_dir) / "checkpoints"


def resume_path(cfg) -> Optional[Path]:
    """The checkpoint to resume from, or None for a fresh run."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":  # the newest intact checkpoint: a crash may have cut `last` short
        return checkpoint.newest_resumable(checkpoint_dir(cfg), log)
    path = Path(cfg.resume)
    if not path.is_file():
        raise UsageError(f"{path}: --resume checkpoint not found")
    return path


# ---------------------------------------------------------------- data, network, optimizer


def build_datasets(cfg, ctx: DistributedContext = dist.SINGLE_PROCESS) -> Data:
    data_path, image_size, synthetic = dataset.resolve_data(cfg)
    if synthetic:
        log.info("data: SYNTHETIC 26-class set (generated shapes and colours, not real photos), %d px, at %s",
                 image_size, data_path)
    else:
        log.info("data: %s, %d px", data_path, image_size)
    class_names = [c.name for c in cfg.classes]
    train = dataset.scan_split(data_path, "train", class_names)
    val = dataset.scan_split(data_path, "val", class_names)
    global_batch = dist.global_batch_size(cfg.batch_size, ctx)
    if global_batch > len(train):
        per_worker = f" ({cfg.batch_size} per worker x {ctx.world_size} workers)" if ctx.distributed else ""
        raise UsageError(f"--batch-size {global_batch}{per_worker} is larger than the training set ({len(train)} images in {data_path / 'train'})")
    log.info("train: %d images, val: %d images, %d classes", len(train), len(val), len(class_names))
    weights = inverse_frequency_weights(train.labels, len(class_names)) if cfg.class_balance == "weights" else None
    log.info("%s", describe(cfg.class_balance, train.labels, class_names, weights))
    return Data(train, val, image_size, synthetic, steps_per_epoch=len(train) // global_batch, global_batch=global_batch,
                class_weights=weights)


def build_network(cfg, ctx: DistributedContext = dist.SINGLE_PROCESS):
    """MobileNetV2 for the class list; its dropout replaced by the replayable one for training."""
    import mindspore as ms
    from mindspore import nn

    from ms_impl.mobilenetv2 import MobileNetV2
    from ms_impl.trainer.train_step import ReplayableDropout

    ms.set_seed(cfg.seed)  # weight init: the same on every rank
    network = MobileNetV2(len(cfg.classes), cfg.width_mult, dropout=cfg.dropout, fast_conv=cfg.fast_conv)
    if cfg.pretrained:
        from ms_impl.trainer.pretrained import PretrainedError, load_pretrained

        try:
            load_pretrained(network, cfg.pretrained, log)
        except PretrainedError as e:
            raise UsageError(str(e)) from None
    if cfg.dropout > 0 and not cfg.freeze_backbone:  # frozen: the head's dropout runs on the host
        network.head.dropout = ReplayableDropout(cfg.dropout, cfg.batch_size, network.num_features, ctx.num_shards, ctx.shard_id)
    if cfg.freeze_bn:
        # moving statistics in training too, never updated (gamma/beta still learn); robust to set_train()
        for _, cell in network.cells_and_names():
            if isinstance(cell, nn.BatchNorm2d):
                cell.use_batch_statistics = False
    if cfg.freeze_layers:
        from ms_impl.trainer.transfer import freeze_leading_layers

        freeze_leading_layers(network, cfg.freeze_layers)  # before the optimizer: they leave the trainable set
        kept = "features.0" if cfg.freeze_layers == 1 else f"features.0-{cfg.freeze_layers - 1}"
        log.info("fine-tuning: %s keep their pretrained weights (--freeze-layers %d)", kept, cfg.freeze_layers)
    return network


def network_params(network) -> Dict[str, object]:
    """The parameters a checkpoint holds, by their official names (Parameter.name, not the attribute path)."""
    from ms_impl.trainer.train_step import model_parameters

    return model_parameters(network)


def lr_scale(cfg, ctx: DistributedContext = dist.SINGLE_PROCESS) -> int:
    """--scale-lr: the linear rule, the LRs times the number of workers (the global batch grew by as much)."""
    return ctx.world_size if cfg.scale_lr else 1


def build_lr_schedule(cfg, steps_per_epoch: int, ctx: DistributedContext = dist.SINGLE_PROCESS) -> np.ndarray:
    from parity.core.schedule import warmup_cosine_lr

    scale = lr_scale(cfg, ctx)
    if cfg.epochs * steps_per_epoch > MAX_SCHEDULE_STEPS:
        raise UsageError(f"--epochs {cfg.epochs}: {cfg.epochs} x {steps_per_epoch} steps per epoch exceeds "
                         f"{MAX_SCHEDULE_STEPS} steps")
    return warmup_cosine_lr(lr_init=cfg.lr_init * scale, lr_max=cfg.lr_max * scale, lr_end=cfg.lr_end * scale,
                            warmup_epochs=cfg.warmup_epochs, total_epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)


def build_optimizer(cfg, network, lr_per_step: np.ndarray):
    from ms_impl.optim import build_optimizer as momentum_optimizer

    per_parameter = None  # the LR factor of each parameter
    if cfg.pretrained and cfg.backbone_lr_scale != 1.0 and not cfg.freeze_backbone:
        from ms_impl.trainer.transfer import backbone_lr_scale

        log.info("fine-tuning: backbone LR = %g x head LR", cfg.backbone_lr_scale)
        per_parameter = backbone_lr_scale(network, cfg.backbone_lr_scale)
    return momentum_optimizer(network.trainable_params(), lr_per_step, cfg.momentum, cfg.weight_decay, per_parameter)


def describe_change(key: str, old, new) -> str:
    """`key old in the checkpoint vs new now`; for lists (the class names) only the first difference."""
    if isinstance(old, list) and isinstance(new, list):
        index = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        old_name, new_name = (repr(names[index]) if index < len(names) else "nothing" for names in (old, new))
        return f"{key}[{index}] {old_name} in the checkpoint vs {new_name} now"
    return f"{key} {old} in the checkpoint vs {new} now"


def restore(cfg, path: Path, network, optimizer, steps_per_epoch: int) -> TrainState:
    saved = checkpoint.train_state_of(path)  # checked before anything is loaded
    now = {"seed": cfg.seed, "epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch, "freeze_layers": cfg.freeze_layers}
    mismatch = {k: (getattr(saved, k), v) for k, v in now.items() if getattr(saved, k) != v}
    settings = trajectory_settings(cfg)  # a checkpoint from before settings were kept compares the schedule only
    mismatch.update({k: (old, settings[k]) for k, old in saved.settings.items()
                     if k in settings and k not in mismatch and old != settings[k]})
    if mismatch:
        details = ", ".join(describe_change(k, old, new) for k, (old, new) in mismatch.items())
        run_config = Path(path).resolve().parent.parent / "config.yaml"  # <run>/checkpoints/<file>
        how = (f"--config {run_config} --resume {'auto' if cfg.resume == 'auto' else path}" if run_config.is_file()
               else "the flags it ran with")
        raise UsageError(f"{path}: another run's settings ({details}); resume with the run's config ({how})")
    state = checkpoint.restore_training_checkpoint(path, network_params(network), optimizer)
    state.settings = settings  # later checkpoints record them, also when this one predates them
    log.info("resumed from %s: epoch %d, step %d of %d", path, state.epoch, state.step_in_epoch, steps_per_epoch)
    return state


# ---------------------------------------------------------------- the run


def start_devices(cfg) -> DistributedContext:
    """Join the msrun job when launched by one, then select the device: before any tensor or data work (Ascend's
    HCCL requires it; a missing GPU/Ascend fails fast). Under msrun the scheduler process never returns from here."""
    from ms_impl.trainer.device import set_device

    ctx = dist.init_distributed(cfg.distributed, device=cfg.device)
    set_device(cfg.device, cfg.mode, selected_already=ctx.distributed)
    return ctx


@dataclass
class Run:
    """A run's parts, as `build_run` made them; the epoch loop, the frozen and head-first paths and the report take it."""

    cfg: Any  # the EasyDict of trainer/config.py
    data: Data
    network: Any  # ms_impl.mobilenetv2.MobileNetV2
    lr: np.ndarray  # per step, already scaled by lr_scale
    optimizer: Any
    state: TrainState
    ctx: DistributedContext = dist.SINGLE_PROCESS
    resumed_from: Optional[Path] = None

    @property
    def out(self) -> Path:
        """The run folder (only rank 0 writes into it)."""
        return Path(self.cfg.output_dir)

    def train_step(self):
        """The compiled training step the epoch loop runs: the smoothed (class-weighted) loss, the optimizer, the
        frozen leading layers cut from the gradient."""
        from ms_impl.loss import smoothed_cross_entropy
        from ms_impl.trainer.train_step import build_train_step

        loss = smoothed_cross_entropy(self.cfg.label_smoothing, self.data.class_weights)
        return build_train_step(self.network, loss, self.optimizer, self.cfg.freeze_layers)


def build_run(cfg, ctx: DistributedContext = dist.SINGLE_PROCESS, resume_from: Optional[Path] = None) -> Run:
    """Data, network, LR schedule, optimizer and training state, in that order; with `resume_from`, the state,
    weights and optimizer come from that checkpoint (refused when it ran with other settings). Writes nothing.

    The device is the caller's: `start_devices(cfg)` for a run as the command line makes it."""
    data = build_datasets(cfg, ctx)
    network = build_network(cfg, ctx)
    lr = build_lr_schedule(cfg, data.steps_per_epoch, ctx)
    optimizer = build_optimizer(cfg, network, lr)
    if resume_from is not None:
        state = restore(cfg, resume_from, network, optimizer, data.steps_per_epoch)
    else:
        if cfg.resume == "auto":
            log.info("--resume auto: no intact checkpoint in %s, starting a new run", checkpoint_dir(cfg))
        state = TrainState(seed=cfg.seed, epochs=cfg.epochs, steps_per_epoch=data.steps_per_epoch,
                           freeze_layers=cfg.freeze_layers, settings=trajectory_settings(cfg))
    return Run(cfg, data, network, lr, optimizer, state, ctx, resume_from)
