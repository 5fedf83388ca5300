"""The training engine's loop: the run folder's setup, the epoch loop, the frozen-backbone and head-first paths, the
end-of-epoch checkpoint set and the final report, each taking the Run that `run.build_run` made.
`ms_impl/train.py` turns a command line into a run of these.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from ms_impl.trainer import checkpoint, dataset, report
from ms_impl.trainer import distributed as dist
from ms_impl.trainer.checkpoint import TrainState
from ms_impl.trainer.config import dump_config
from ms_impl.trainer.errors import UsageError
from ms_impl.trainer.run import Run, checkpoint_dir, lr_scale, network_params
from ms_impl.trainer.run_folder import FEATURE_CACHE_FOLDER, move_aside
from parity.core import interrupts
from parity.core.files import atomic_path, atomic_write_text

log = logging.getLogger("ms_impl.train")

EXIT_DIVERGED = 1
EXIT_USAGE = 2
EXIT_WORKER_LOST = 3  # distributed: a collective failed because another worker (process or host) stopped
EXIT_SIGINT = interrupts.EXIT_SIGINT


class TrainingDiverged(Exception):
    """The loss became NaN or Inf."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; a resumable checkpoint has been saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---------------------------------------------------------------- output folder


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


def train_one_epoch(run: Run, step_fn, stop: StopRequest, save_last) -> Dict[str, float]:
    """Steps of epoch `state.epoch` from `state.step_in_epoch` on; mean loss of the epoch, img/s of all workers.

    Distributed, the step loss is averaged over the ranks together with a stop
    flag, so every rank logs the global loss and all ranks stop (diverged or
    interrupted) at the same step.
    """
    from mindspore import Tensor
    from tqdm import tqdm

    from ms_impl.trainer.mixing import MixSettings, mix_batch

    cfg, data, network, lr, state, ctx = run.cfg, run.data, run.network, run.lr, run.state, run.ctx
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


def save_epoch_checkpoints(run: Run, improved: bool) -> None:
    folder = checkpoint_dir(run.cfg)
    params = network_params(run.network)
    epoch_file = folder / checkpoint.epoch_checkpoint_name(run.state.epoch, run.state.steps_per_epoch)
    checkpoint.save_training_checkpoint(epoch_file, params, run.optimizer, run.state)
    checkpoint.save_training_checkpoint(folder / checkpoint.LAST, params, run.optimizer, run.state)
    if improved:
        checkpoint.save_training_checkpoint(folder / checkpoint.BEST, params, run.optimizer, run.state)
    checkpoint.rotate_epoch_checkpoints(folder, run.cfg.keep_checkpoint_max)


def train(run: Run):
    """The epoch loop; returns the last evaluation and the metrics rows. Only rank 0 writes files."""
    from ms_impl.trainer.classes import category_groups
    from ms_impl.trainer.metrics import evaluate
    from ms_impl.weights import nonfinite_parameter

    cfg, data, network, optimizer, lr, state, ctx = run.cfg, run.data, run.network, run.optimizer, run.lr, run.state, run.ctx
    step_fn = run.train_step()
    val_batches = dataset.eval_dataset(data.val, data.image_size, cfg.batch_size, cfg.num_workers, ctx.num_shards, ctx.shard_id)
    metrics_file = run.out / "metrics.csv"
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
            stats = train_one_epoch(run, step_fn, stop, save_last)
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
                save_epoch_checkpoints(run, improved)
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


def train_feature_settings(cfg, image_size: int, feature_views: int):
    """How the training images' backbone features are extracted (and keyed in the cache) for the head."""
    from ms_impl.trainer.feature_cache import FeatureSettings

    return FeatureSettings(image_size, feature_views=feature_views, seed=cfg.seed, crop_scale=(cfg.crop_scale_min, 1.0),
                           color_jitter=cfg.color_jitter, hflip_prob=cfg.hflip_prob)


def feature_cache_dir(run: Run) -> str:
    return run.cfg.feature_cache_dir or str(run.out / FEATURE_CACHE_FOLDER)


def train_frozen(run: Run):
    """--freeze-backbone: the head trains on cached backbone features; metrics and checkpoints as in a full run."""
    from ms_impl.trainer.classes import category_groups
    from ms_impl.trainer.metrics import result_from_logits
    from ms_impl.trainer.feature_cache import FeatureSettings
    from ms_impl.trainer.transfer import EpochReport, train_frozen_backbone

    cfg, data, network, state = run.cfg, run.data, run.network, run.state
    groups = category_groups(cfg.classes)[0]
    cache_dir = feature_cache_dir(run)
    train_settings = train_feature_settings(cfg, data.image_size, cfg.feature_views)
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
    head = train_frozen_backbone(
        network, [str(p) for p in data.train.files], data.train.labels, [str(p) for p in data.val.files], data.val.labels,
        cache_dir=cache_dir, train_settings=train_settings, val_settings=FeatureSettings(data.image_size),
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr_max=cfg.lr_max, lr_init=cfg.lr_init, lr_end=cfg.lr_end,
        warmup_epochs=cfg.warmup_epochs, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing, dropout=cfg.dropout, seed=cfg.seed, on_epoch=on_epoch,
        class_weights=data.class_weights, balanced_sampling=cfg.class_balance == "sampler", mixup_alpha=cfg.mixup_alpha,
        feature_norm=cfg.feature_norm, feature_flip=cfg.feature_flip, feature_whole=cfg.feature_whole, tta=cfg.tta, progress=True)
    for name, cached in (("train", head.train_features), ("val", head.val_features)):
        how = "reused" if cached.reused else f"extracted at {cached.images_per_second:.1f} img/s"
        log.info("%s features: %d x %d, %s (%s)", name, *cached.features.shape, how, cached.path)
    log.info("head training: %d epochs in %.1f s", cfg.epochs, head.history.seconds)
    result = result_from_logits(head.val_logits, data.val.labels, len(cfg.classes), cfg.label_smoothing, groups)
    state.epoch, state.best_top1, state.best_epoch = cfg.epochs, result.top1, cfg.epochs
    state.global_step = cfg.epochs * max(1, len(head.train_features.features) // cfg.batch_size)  # head steps
    from ms_impl.weights import nonfinite_parameter

    bad = nonfinite_parameter(network)
    if bad:
        raise TrainingDiverged(f"weight {bad} is not finite after head training; stopped without saving")
    report.write_metrics(run.out / "metrics.csv", rows)
    # the head's final weights are the run's result: `last` and `best` both hold them
    for name in (checkpoint.LAST, checkpoint.BEST):
        checkpoint.save_training_checkpoint(checkpoint_dir(cfg) / name, network_params(network), run.optimizer, state)
    return result, rows


HEAD_KEYS = ("warmup_epochs", "batch_size", "lr_init", "lr_max", "lr_end", "weight_decay", "label_smoothing", "dropout",
             "feature_views", "feature_norm", "feature_flip")


def train_head_first(run: Run) -> None:
    """Fine-tuning stage 1 (`--head-first-epochs N`): the head alone on cached backbone features,
    with the frozen recipe's head settings (`recipe_frozen`), so stage 2 starts from a trained head
    and the backbone never sees the large gradients of a random one."""
    from ms_impl.trainer.classes import category_groups
    from ms_impl.trainer.feature_cache import FeatureSettings
    from ms_impl.trainer.metrics import result_from_logits
    from ms_impl.trainer.transfer import EpochReport, train_frozen_backbone

    cfg, data, network = run.cfg, run.data, run.network
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

    train_settings = train_feature_settings(cfg, data.image_size, head["feature_views"])
    started = time.perf_counter()
    train_frozen_backbone(
        network, [str(p) for p in data.train.files], data.train.labels, [str(p) for p in data.val.files], data.val.labels,
        cache_dir=feature_cache_dir(run), train_settings=train_settings,
        val_settings=FeatureSettings(data.image_size), epochs=epochs, batch_size=head["batch_size"], lr_max=head["lr_max"],
        lr_init=head["lr_init"], lr_end=head["lr_end"], warmup_epochs=head["warmup_epochs"], momentum=cfg.momentum,
        weight_decay=head["weight_decay"], label_smoothing=head["label_smoothing"], dropout=head["dropout"], seed=cfg.seed,
        on_epoch=on_epoch, feature_norm=head["feature_norm"], feature_flip=head["feature_flip"])
    layers = len(network.backbone.features)
    trained = ("everything" if not cfg.freeze_layers else "the head" if cfg.freeze_layers == layers
               else f"features.{cfg.freeze_layers}-{layers - 1} and the head")
    log.info("stage 1 done in %.1f s; stage 2 of 2: fine-tune %s", time.perf_counter() - started, trained)


def write_final_report(run: Run, result, rows: List[dict], seconds: float) -> None:
    from ms_impl.trainer.classes import category_groups

    cfg, data, state, ctx, out = run.cfg, run.data, run.state, run.ctx, run.out

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


def save_run_config(run: Run) -> None:
    """The resolved config and the per-step LR array, next to the checkpoints."""
    atomic_write_text(run.out / "config.yaml", dump_config(run.cfg))  # self-contained: --config reads it back
    with atomic_path(run.out / "lr_schedule.npy") as temp:
        np.save(temp, run.lr)


def log_plan(run: Run) -> None:
    """What the run is about to do: device, schedule, batch, LRs (and the mixing of its batches)."""
    cfg, ctx = run.cfg, run.ctx
    scale = lr_scale(cfg, ctx)
    log.info("device %s, %s mode; %d epochs x %d steps, batch %d%s, lr %g -> %g -> %g%s",
             cfg.device, cfg.mode, cfg.epochs, run.data.steps_per_epoch, run.data.global_batch,
             f" ({cfg.batch_size} per worker x {ctx.world_size} workers)" if ctx.distributed else "",
             cfg.lr_init * scale, cfg.lr_max * scale, cfg.lr_end * scale,
             f" (--scale-lr: x{scale}, linear rule)" if cfg.scale_lr else "")
    if cfg.mixup_alpha or cfg.cutmix_alpha:
        from ms_impl.trainer.mixing import MixSettings

        log.info("mixing each training batch%s: %s", " of cached features" if cfg.freeze_backbone else "",
                 MixSettings(cfg.mixup_alpha, cfg.cutmix_alpha).describe())
