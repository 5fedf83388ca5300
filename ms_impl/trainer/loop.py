"""The training engine: the run's parts (data, network, LR, optimizer, resume), the epoch loop, the frozen-backbone
and head-first paths, the end-of-epoch checkpoint set and the final report. `ms_impl/train.py` turns a command
line into a run of these; the experiments and tests build runs from them directly.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ms_impl.trainer import checkpoint, dataset, report
from ms_impl.trainer.balance import describe, inverse_frequency_weights
from ms_impl.trainer import distributed as dist
from ms_impl.trainer.checkpoint import TrainState
from ms_impl.trainer.config import dump_config, load_config, trajectory_settings
from ms_impl.trainer.distributed import DistributedContext
from ms_impl.trainer.errors import UsageError
from ms_impl.trainer.run_folder import FEATURE_CACHE_FOLDER, move_aside
from parity.core import interrupts
from parity.core.files import atomic_path, atomic_write_text

log = logging.getLogger("ms_impl.train")

EXIT_DIVERGED = 1
EXIT_USAGE = 2
EXIT_WORKER_LOST = 3  # distributed: a collective failed because another worker (process or host) stopped
EXIT_SIGINT = interrupts.EXIT_SIGINT
MAX_SCHEDULE_STEPS = 10_000_000  # the per-step LR array is materialised: 40 MB at most


class TrainingDiverged(Exception):
    """The loss became NaN or Inf."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a resumable checkpoint has been saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Data:
    train: dataset.ImageList
    val: dataset.ImageList
    image_size: int
    synthetic: bool
    steps_per_epoch: int
    global_batch: int  # batch_size x workers
    class_weights: Optional[np.ndarray] = None  # loss weight per class with class_balance: weights


# ---------------------------------------------------------------- config, output folder


def build_config(argv: Optional[List[str]]):
    """The run's EasyDict config; types, choices and ranges are checked by the schema (trainer/config.py)."""
    return load_config(argv, description=__doc__.split("\n\n")[0])


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


def check_output_dir(cfg, starting_over: bool) -> None:
    """Refuse to touch another run without --force (or --resume auto); check the folder is writable. Changes nothing."""
    out = Path(cfg.output_dir)
    if starting_over and not cfg.force and cfg.resume != "auto":
        raise UsageError(f"{out}: already holds a run; pass --resume auto to continue it or --force true to start over "
                         "(the old run is moved aside, never deleted)")
    try:
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{out}: output_dir is not writable ({e.strerror or e})") from None


def prepare_output_dir(cfg, starting_over: bool) -> Path:
    """After every input was validated: move an old run aside (never delete it), create checkpoints/."""
    out = Path(cfg.output_dir)
    if starting_over:
        moved = move_aside(out)
        if moved is not None:
            log.info("%s: the old run was moved to %s (nothing deleted)", out, moved)
    try:
        checkpoint_dir(cfg).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{checkpoint_dir(cfg)}: cannot create ({e.strerror or e})") from None
    return out


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


def build_lr_schedule(cfg, steps_per_epoch: int, ctx: DistributedContext = dist.SINGLE_PROCESS) -> np.ndarray:
    from parity.core.schedule import warmup_cosine_lr

    scale = ctx.world_size if cfg.scale_lr else 1  # linear rule: the global batch grew by world_size
    if cfg.epochs * steps_per_epoch > MAX_SCHEDULE_STEPS:
        raise UsageError(f"--epochs {cfg.epochs}: {cfg.epochs} x {steps_per_epoch} steps per epoch exceeds "
                         f"{MAX_SCHEDULE_STEPS} steps")
    return warmup_cosine_lr(lr_init=cfg.lr_init * scale, lr_max=cfg.lr_max * scale, lr_end=cfg.lr_end * scale,
                            warmup_epochs=cfg.warmup_epochs, total_epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)


def build_optimizer(cfg, network, lr_per_step: np.ndarray):
    from ms_impl.optim import build_optimizer as momentum_optimizer

    lr_scale = None
    if cfg.pretrained and cfg.backbone_lr_scale != 1.0 and not cfg.freeze_backbone:
        from ms_impl.trainer.transfer import backbone_lr_scale

        log.info("fine-tuning: backbone LR = %g x head LR", cfg.backbone_lr_scale)
        lr_scale = backbone_lr_scale(network, cfg.backbone_lr_scale)
    return momentum_optimizer(network.trainable_params(), lr_per_step, cfg.momentum, cfg.weight_decay, lr_scale)


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


# ---------------------------------------------------------------- training loop


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def arm(self) -> None:
        """Install the handlers again: MindSpore's runtime sets C-level handlers of its own when its
        iterators and kernels start (SIGINT itself comes through interrupts.watch_sigint when run as a script)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if not self.signum:  # the first one names the interruption (MindSpore may follow a SIGINT with a SIGTERM)
            self.signum = signum


def train_one_epoch(cfg, data: Data, step_fn, network, optimizer, lr: np.ndarray, state: TrainState,
                    stop: StopRequest, save_last, ctx: DistributedContext = dist.SINGLE_PROCESS) -> Dict[str, float]:
    """Steps of epoch `state.epoch` from `state.step_in_epoch` on; mean loss of the epoch, img/s of all workers.

    Distributed, the step loss is averaged over the ranks together with a stop
    flag, so every rank logs the global loss and all ranks stop (diverged or
    interrupted) at the same step.
    """
    from mindspore import Tensor
    from tqdm import tqdm

    from ms_impl.trainer.mixing import MixSettings, mix_batch

    mixing = MixSettings(cfg.mixup_alpha, cfg.cutmix_alpha)
    batches = dataset.train_dataset(data.train, cfg, data.image_size, state.epoch,
                                    ctx.num_shards, ctx.shard_id).create_tuple_iterator(num_epochs=1)
    stop.arm()
    for _ in range(state.step_in_epoch):  # replay the batches done before an interruption: same RNG, no update
        next(batches)
    if state.step_in_epoch == 0:
        state.epoch_loss_sum = 0.0
    steps_run = 0
    started = time.perf_counter()
    bar = tqdm(total=data.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
               unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=not (ctx.is_main_process and sys.stderr.isatty()))  # logs and pipes get the epoch line only
    for images, labels in batches:
        dropout = network.head.dropout
        if hasattr(dropout, "draw"):
            dropout.draw(cfg.seed, state.global_step)
        if mixing.enabled:
            mixed, partner_labels, lam = mix_batch(images.asnumpy(), labels.asnumpy(), mixing, cfg.seed, state.global_step,
                                                   ctx.shard_id)
            loss = float(step_fn(Tensor(mixed), labels, Tensor(partner_labels), Tensor(np.float32(lam))).asnumpy())
        else:
            loss = float(step_fn(images, labels).asnumpy())
        stop.arm()
        stop_requested = bool(stop.signum)
        if ctx.distributed:
            loss_sum, stops = dist.all_reduce_sum(np.array([loss, float(stop_requested)]), ctx)
            loss, stop_requested = float(loss_sum) / ctx.world_size, bool(stops > 0)
        if not np.isfinite(loss):
            bar.close()
            raise TrainingDiverged(f"loss is {loss} at epoch {state.epoch + 1}, step {state.step_in_epoch + 1} "
                                   f"(lr {lr[state.global_step]:.4g}); stopped without saving")
        steps_run += 1
        state.epoch_loss_sum += loss
        state.global_step += 1
        state.step_in_epoch += 1
        elapsed = time.perf_counter() - started
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr[state.global_step - 1]:.4g}",
                        img_s=f"{steps_run * data.global_batch / max(elapsed, 1e-9):.1f}")
        bar.update(1)
        if stop_requested:
            bar.close()
            save_last()
            raise Interrupted(stop.signum or signal.SIGTERM)
    bar.close()
    elapsed = time.perf_counter() - started
    return {"train_loss": state.epoch_loss_sum / max(state.step_in_epoch, 1),
            "train_img_per_s": steps_run * data.global_batch / max(elapsed, 1e-9)}


def save_epoch_checkpoints(cfg, network, optimizer, state: TrainState, improved: bool) -> None:
    folder = checkpoint_dir(cfg)
    params = network_params(network)
    epoch_file = folder / checkpoint.epoch_checkpoint_name(state.epoch, state.steps_per_epoch)
    checkpoint.save_training_checkpoint(epoch_file, params, optimizer, state)
    checkpoint.save_training_checkpoint(folder / checkpoint.LAST, params, optimizer, state)
    if improved:
        checkpoint.save_training_checkpoint(folder / checkpoint.BEST, params, optimizer, state)
    checkpoint.rotate_epoch_checkpoints(folder, cfg.keep_checkpoint_max)


def train(cfg, data: Data, network, optimizer, lr: np.ndarray, state: TrainState, out: Path, ctx: DistributedContext = dist.SINGLE_PROCESS):
    """The epoch loop; returns the last evaluation. Only rank 0 writes files."""
    from ms_impl.trainer.classes import category_groups
    from ms_impl.trainer.metrics import evaluate
    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.trainer.train_step import build_train_step
    from ms_impl.weights import nonfinite_parameter

    step_fn = build_train_step(network, smoothed_cross_entropy(cfg.label_smoothing, data.class_weights), optimizer,
                               cfg.freeze_layers)
    val_batches = dataset.eval_dataset(data.val, data.image_size, cfg.batch_size, cfg.num_workers, ctx.num_shards, ctx.shard_id)
    metrics_file = out / "metrics.csv"
    rows = [r for r in report.read_metrics(metrics_file) if int(r["epoch"]) <= state.epoch]
    result = None

    def save_last() -> None:
        dist.average_batchnorm_statistics(network, ctx)  # every rank stops at the same step, so this collective is safe
        if not ctx.is_main_process:
            return
        path = checkpoint_dir(cfg) / checkpoint.LAST
        checkpoint.save_training_checkpoint(path, network_params(network), optimizer, state)
        log.info("saved resumable checkpoint %s (epoch %d, step %d)", path, state.epoch + 1, state.step_in_epoch)

    def evaluate_all_ranks():
        dist.average_batchnorm_statistics(network, ctx)  # replicas identical again before evaluating and saving
        return evaluate(network, val_batches, len(cfg.classes), cfg.label_smoothing, ctx, groups=category_groups(cfg.classes)[0])

    with StopRequest() as stop:
        while state.epoch < cfg.epochs:
            started = time.perf_counter()
            stats = train_one_epoch(cfg, data, step_fn, network, optimizer, lr, state, stop, save_last, ctx)
            result = evaluate_all_ranks()
            stop.arm()
            if not np.isfinite(result.loss):
                raise TrainingDiverged(f"val loss is {result.loss} after epoch {state.epoch + 1}; stopped without saving")
            bad = nonfinite_parameter(network)  # one pass over the weights: cheap next to an epoch
            if bad:
                raise TrainingDiverged(f"weight {bad} is not finite after epoch {state.epoch + 1}; stopped without saving")
            state.epoch += 1
            state.step_in_epoch = 0
            improved = result.top1 > state.best_top1
            if improved:
                state.best_top1, state.best_epoch = result.top1, state.epoch
            rows.append({"epoch": state.epoch, "train_loss": f"{stats['train_loss']:.6f}", "val_loss": f"{result.loss:.6f}",
                         "val_top1": f"{result.top1:.6f}", "val_top5": f"{result.top5:.6f}",
                         "lr_last": f"{lr[state.global_step - 1]:.6g}", "train_img_per_s": f"{stats['train_img_per_s']:.2f}",
                         "epoch_seconds": f"{time.perf_counter() - started:.1f}"})
            if ctx.is_main_process:
                report.write_metrics(metrics_file, rows)
                save_epoch_checkpoints(cfg, network, optimizer, state, improved)
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, top-1 %.4f, top-5 %.4f, %.1f img/s%s",
                     state.epoch, cfg.epochs, stats["train_loss"], result.loss, result.top1, result.top5,
                     stats["train_img_per_s"], " (best)" if improved else "")
            # all ranks decide together: a signal may have reached some ranks only
            if dist.any_rank(bool(stop.signum), ctx):  # the signal came during evaluation: the epoch is saved, stop here
                if ctx.is_main_process:
                    log.info("saved resumable checkpoint %s (epoch %d, step 0)", checkpoint_dir(cfg) / checkpoint.LAST,
                             state.epoch + 1)
                raise Interrupted(stop.signum or signal.SIGTERM)
    if result is None:  # resumed a finished run: evaluate once for the report
        result = evaluate_all_ranks()
    if cfg.tta != "none":
        dist.average_batchnorm_statistics(network, ctx)
        whole = (dataset.eval_dataset(data.val, data.image_size, cfg.batch_size, cfg.num_workers, ctx.num_shards, ctx.shard_id,
                                      whole=True) if cfg.tta == "flip+whole" else None)
        result = evaluate(network, val_batches, len(cfg.classes), cfg.label_smoothing, ctx,
                          groups=category_groups(cfg.classes)[0], tta=cfg.tta, whole_dataset=whole)
        log.info("final evaluation with --tta %s: val loss %.4f, top-1 %.4f, top-5 %.4f, category %.4f",
                 cfg.tta, result.loss, result.top1, result.top5, result.category_acc)
    return result, rows


def train_frozen(cfg, data: Data, network, optimizer, state: TrainState, out: Path):
    """--freeze-backbone: the head trains on cached backbone features; metrics and checkpoints as in a full run."""
    from ms_impl.trainer.classes import category_groups
    from ms_impl.trainer.metrics import result_from_logits
    from ms_impl.trainer.feature_cache import FeatureSettings
    from ms_impl.trainer.transfer import EpochReport, train_frozen_backbone

    groups = category_groups(cfg.classes)[0]

    cache_dir = cfg.feature_cache_dir or str(out / FEATURE_CACHE_FOLDER)
    train_settings = FeatureSettings(data.image_size, feature_views=cfg.feature_views, seed=cfg.seed,
                                     crop_scale=(cfg.crop_scale_min, 1.0), color_jitter=cfg.color_jitter, hflip_prob=cfg.hflip_prob)
    rows: List[dict] = []

    def on_epoch(epoch: EpochReport) -> None:
        result = result_from_logits(epoch.val_logits, data.val.labels, len(cfg.classes), cfg.label_smoothing, groups)
        rows.append({"epoch": epoch.epoch + 1, "train_loss": f"{epoch.train_loss:.6f}", "val_loss": f"{result.loss:.6f}",
                     "val_top1": f"{result.top1:.6f}", "val_top5": f"{result.top5:.6f}", "lr_last": f"{epoch.lr_last:.6g}",
                     "train_img_per_s": f"{len(data.train) * cfg.feature_views / max(epoch.seconds, 1e-9):.2f}",
                     "epoch_seconds": f"{epoch.seconds:.2f}"})
        log.info("head epoch %d/%d: train loss %.4f, val loss %.4f, top-1 %.4f, top-5 %.4f, category %.4f%s",
                 epoch.epoch + 1, cfg.epochs, epoch.train_loss, result.loss, result.top1, result.top5, result.category_acc,
                 f" (--tta {cfg.tta})" if cfg.tta != "none" else "")

    log.info("frozen backbone: features of %d train images x %d view(s)%s%s and %d val images%s, cache %s",
             len(data.train), cfg.feature_views, " + mirror images" if cfg.feature_flip else "",
             " + whole photos" if cfg.feature_whole else "", len(data.val),
             {"none": "", "flip": " + mirror images", "flip+whole": " + mirror images + whole photos (+ mirrored)"}[cfg.tta], cache_dir)
    run = train_frozen_backbone(
        network, [str(p) for p in data.train.files], data.train.labels, [str(p) for p in data.val.files], data.val.labels,
        cache_dir=cache_dir, train_settings=train_settings, val_settings=FeatureSettings(data.image_size),
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr_max=cfg.lr_max, lr_init=cfg.lr_init, lr_end=cfg.lr_end,
        warmup_epochs=cfg.warmup_epochs, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing, dropout=cfg.dropout, seed=cfg.seed, on_epoch=on_epoch,
        class_weights=data.class_weights, balanced_sampling=cfg.class_balance == "sampler", mixup_alpha=cfg.mixup_alpha,
        feature_norm=cfg.feature_norm, feature_flip=cfg.feature_flip, feature_whole=cfg.feature_whole, tta=cfg.tta, progress=True)
    for name, cached in (("train", run.train_features), ("val", run.val_features)):
        how = "reused" if cached.reused else f"extracted at {cached.images_per_second:.1f} img/s"
        log.info("%s features: %d x %d, %s (%s)", name, *cached.features.shape, how, cached.path)
    log.info("head training: %d epochs in %.1f s", cfg.epochs, run.history.seconds)
    result = result_from_logits(run.val_logits, data.val.labels, len(cfg.classes), cfg.label_smoothing, groups)
    state.epoch, state.best_top1, state.best_epoch = cfg.epochs, result.top1, cfg.epochs
    state.global_step = cfg.epochs * max(1, len(run.train_features.features) // cfg.batch_size)  # head steps
    from ms_impl.weights import nonfinite_parameter

    bad = nonfinite_parameter(network)
    if bad:
        raise TrainingDiverged(f"weight {bad} is not finite after head training; stopped without saving")
    report.write_metrics(out / "metrics.csv", rows)
    # the head's final weights are the run's result: `last` and `best` both hold them
    for name in (checkpoint.LAST, checkpoint.BEST):
        checkpoint.save_training_checkpoint(checkpoint_dir(cfg) / name, network_params(network), optimizer, state)
    return result, rows


HEAD_KEYS = ("warmup_epochs", "batch_size", "lr_init", "lr_max", "lr_end", "weight_decay", "label_smoothing", "dropout",
             "feature_views", "feature_norm", "feature_flip")


def train_head_first(cfg, data: Data, network, out: Path) -> None:
    """Fine-tuning stage 1 (`--head-first-epochs N`): the head alone on cached backbone features,
    with the frozen recipe's head settings (`recipe_frozen`), so stage 2 starts from a trained head
    and the backbone never sees the large gradients of a random one."""
    from ms_impl.trainer.classes import category_groups
    from ms_impl.trainer.feature_cache import FeatureSettings
    from ms_impl.trainer.metrics import result_from_logits
    from ms_impl.trainer.transfer import EpochReport, train_frozen_backbone

    head = {key: cfg[key] for key in HEAD_KEYS}
    head.update({k: v for k, v in cfg.get("recipe_frozen", {}).items() if k in HEAD_KEYS})
    groups = category_groups(cfg.classes)[0]
    epochs = cfg.head_first_epochs
    log.info("stage 1 of 2: head alone on frozen features, %d epochs (%s)", epochs,
             ", ".join(f"{k}={v}" for k, v in head.items()))

    def on_epoch(epoch: EpochReport) -> None:
        if epoch.epoch + 1 == epochs or (epoch.epoch + 1) % 10 == 0:  # a few lines: the epochs take a fraction of a second
            result = result_from_logits(epoch.val_logits, data.val.labels, len(cfg.classes), head["label_smoothing"], groups)
            log.info("head epoch %d/%d: train loss %.4f, val loss %.4f, top-1 %.4f, category %.4f",
                     epoch.epoch + 1, epochs, epoch.train_loss, result.loss, result.top1, result.category_acc)

    train_settings = FeatureSettings(data.image_size, feature_views=head["feature_views"], seed=cfg.seed,
                                     crop_scale=(cfg.crop_scale_min, 1.0), color_jitter=cfg.color_jitter, hflip_prob=cfg.hflip_prob)
    started = time.perf_counter()
    train_frozen_backbone(
        network, [str(p) for p in data.train.files], data.train.labels, [str(p) for p in data.val.files], data.val.labels,
        cache_dir=cfg.feature_cache_dir or str(out / FEATURE_CACHE_FOLDER), train_settings=train_settings,
        val_settings=FeatureSettings(data.image_size), epochs=epochs, batch_size=head["batch_size"], lr_max=head["lr_max"],
        lr_init=head["lr_init"], lr_end=head["lr_end"], warmup_epochs=head["warmup_epochs"], momentum=cfg.momentum,
        weight_decay=head["weight_decay"], label_smoothing=head["label_smoothing"], dropout=head["dropout"], seed=cfg.seed,
        on_epoch=on_epoch, feature_norm=head["feature_norm"], feature_flip=head["feature_flip"])
    layers = len(network.backbone.features)
    trained = ("everything" if not cfg.freeze_layers else "the head" if cfg.freeze_layers == layers
               else f"features.{cfg.freeze_layers}-{layers - 1} and the head")
    log.info("stage 1 done in %.1f s; stage 2 of 2: fine-tune %s", time.perf_counter() - started, trained)


def write_final_report(cfg, data: Data, result, rows: List[dict], state: TrainState, out: Path, seconds: float,
                       ctx: DistributedContext = dist.SINGLE_PROCESS) -> None:
    from ms_impl.trainer.classes import category_groups

    table = report.per_class_table(result.confusion, cfg.classes)
    log.info("per-class report on val (last epoch):\n%s", table)
    atomic_write_text(out / "per_class.txt", table + "\n")
    report.write_per_class_csv(out / "per_class.csv", result.confusion, cfg.classes)
    report.plot_confusion_matrix(out / "confusion_matrix.png", result.confusion, cfg.classes,
                                 f"val, epoch {state.epoch}: top-1 {result.top1:.3f}")
    if result.category_confusion is not None:
        _, names, names_en = category_groups(cfg.classes)
        category_table = report.category_table(result.category_confusion, names)
        log.info("category report on val (category = the one whose classes hold the most probability):\n%s", category_table)
        atomic_write_text(out / "category_confusion.txt", category_table + "\n")
        report.plot_category_confusion(out / "category_confusion.png", result.category_confusion, names, names_en,
                                       f"val categories, epoch {state.epoch}: accuracy {result.category_acc:.3f}")
    report.plot_curves(out / "curves.png", rows)
    best = checkpoint_dir(cfg) / checkpoint.BEST
    report.write_json(out / "summary.json", {
        "data": "synthetic" if data.synthetic else str(cfg.data_path),
        "device": cfg.device, "mode": cfg.mode, "image_size": data.image_size, "width_mult": cfg.width_mult,
        "epochs": state.epoch, "global_step": state.global_step, "steps_per_epoch": data.steps_per_epoch,
        "workers": ctx.world_size, "batch_size_per_worker": cfg.batch_size, "global_batch": data.global_batch,
        "train_images": len(data.train), "val_images": len(data.val),
        "class_balance": cfg.class_balance,
        "class_weights": None if data.class_weights is None else [round(float(w), 6) for w in data.class_weights],
        "skipped_files": [str(p) for p, _ in data.train.skipped + data.val.skipped],
        "recipe": cfg.recipe, "tta": cfg.tta,
        "final": {"val_top1": result.top1, "val_top5": result.top5, "val_loss": result.loss,
                  "val_category_acc": result.category_acc, "val_images_evaluated": result.num_images},
        "best": {"val_top1": state.best_top1, "epoch": state.best_epoch,
                 "checkpoint": str(best) if best.is_file() else None},  # never a file that is not there
        "train_img_per_s": [float(r["train_img_per_s"]) for r in rows],
        "wall_seconds_this_process": round(seconds, 1),
    })
    log.info("%s", final_line(cfg, result, state, out))


def final_line(cfg, result, state: TrainState, out: Path) -> str:
    """The run's last line: the last epoch's score and the best checkpoint's, each saying how it was scored.

    Full training scores every epoch (and so picks mobilenetv2-best.ckpt) without TTA and the last epoch once more
    with --tta; a frozen backbone's head is scored with --tta at every epoch."""
    with_tta = f" with --tta {cfg.tta}" if cfg.tta != "none" else ""
    best_how = with_tta if cfg.freeze_backbone else " without TTA" if with_tta else ""
    return (f"done: last epoch ({state.epoch}){with_tta}: val top-1 {result.top1:.4f}, category accuracy "
            f"{result.category_acc:.4f}; {checkpoint.BEST}: epoch {state.best_epoch}, val top-1 {state.best_top1:.4f}"
            f"{best_how}; run files in {out}")


def save_run_config(cfg, out: Path, lr: np.ndarray) -> None:
    """The resolved config and the per-step LR array, next to the checkpoints."""
    atomic_write_text(out / "config.yaml", dump_config(cfg))  # self-contained: --config reads it back
    with atomic_path(out / "lr_schedule.npy") as temp:
        np.save(temp, lr)
