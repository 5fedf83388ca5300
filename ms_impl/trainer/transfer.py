"""Transfer-learning pieces of the MindSpore trainer.

- `train_head_on_features`: the frozen-backbone path; the real `MobileNetV2Head`
  (dropout + dense) trains on cached pooled features, fed as (N, C, 1, 1) so
  the head's global pooling is the identity. Seconds instead of hours on CPU.
- `freeze_leading_layers`: fine-tuning with the stem and first blocks kept as
  pretrained (`--freeze-layers N`); the train step skips their backward pass.
- `backbone_lr_scale`: full fine-tuning with the backbone's learning rate
  scaled (e.g. 0.1) relative to the head's, through the twin's one optimizer
  builder (`ms_impl.optim.build_optimizer`, weight decay by the shared rule).
- `feature_statistics` / `fold_normalisation`: centred or standardised features
  for the head, folded into its dense layer afterwards (no extra layer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

import numpy as np

from ms_impl.trainer.balance import balanced_order
from ms_impl.trainer.metrics import average_flip_logits, top1
from parity.core.schedule import warmup_cosine_lr

if TYPE_CHECKING:
    from ms_impl.trainer.feature_cache import CachedFeatures, FeatureSettings


@dataclass
class EpochReport:
    """Handed to `on_epoch` after each head-training epoch."""

    epoch: int  # 0-based
    train_loss: float  # mean over the epoch's steps
    val_logits: Optional[np.ndarray]
    lr_last: float
    seconds: float  # training this epoch (not the validation)


@dataclass
class HeadTrainingResult:
    epochs: int
    seconds: float
    losses: List[float] = field(default_factory=list)
    val_top1: List[float] = field(default_factory=list)


def freeze_leading_layers(net, count: int) -> None:
    """Fine-tuning with the first `count` layers of `net.backbone.features` (0 = the stem, 1-17 the blocks,
    18 the last 1x1) kept as pretrained: their parameters leave the trainable set (no update, no weight decay),
    their BatchNorms normalise with the moving statistics and never update them, and their blocks run the
    inference kernels. The train step (`train_step.NetWithLoss(frozen_layers=count)`) stops the gradient at
    their output, so the backward pass skips them: the early, high-resolution layers are the slowest per
    FLOP on CPU (experiments/kernel_layers.py)."""
    from mindspore import nn

    from ms_impl.mobilenetv2 import InvertedResidual

    layers = net.backbone.features
    if not 0 <= count <= len(layers):
        raise ValueError(f"freeze_layers must be in [0, {len(layers)}], got {count}")
    for index in range(count):
        for param in layers[index].get_parameters():
            param.requires_grad = False
        for _, cell in layers[index].cells_and_names():
            if isinstance(cell, nn.BatchNorm2d):
                cell.use_batch_statistics = False
            if isinstance(cell, InvertedResidual):
                cell.inference_only = True  # forward only: the inference kernels (expansion and depthwise in one pass)


def backbone_lr_scale(net, scale: float) -> Callable[[object], float]:
    """`lr_scale` for `ms_impl.optim.build_optimizer`: backbone parameters at `scale` x the head's LR."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"backbone_lr_scale must be in (0, 1], got {scale}")
    backbone_ids = {id(p) for p in net.backbone.trainable_params()}
    return lambda param: scale if id(param) in backbone_ids else 1.0


FEATURE_NORMS = ("none", "center", "standardize")
# the cached val views besides the eval crop that each test-time augmentation averages over: (cache name, settings changed)
TTA_VIEWS = {"none": (), "flip": (("val-flip", dict(hflip=True)),),
             "flip+whole": (("val-flip", dict(hflip=True)), ("val-whole", dict(whole=True)),
                            ("val-whole-flip", dict(whole=True, hflip=True)))}


def feature_statistics(features: np.ndarray, how: str):
    """(mean, std) rows that normalise features as `(x - mean) / std` for `how` in FEATURE_NORMS.

    "center" subtracts the training mean; "standardize" also divides each feature by its
    training standard deviation. Both are affine, so after training they fold into the
    dense layer (`fold_normalisation`) and the saved network needs no extra layer.
    """
    features = np.asarray(features, dtype=np.float64)
    if how not in FEATURE_NORMS:
        raise ValueError(f"feature norm must be one of {', '.join(FEATURE_NORMS)}, got {how!r}")
    dim = features.shape[1]
    mean = features.mean(axis=0, keepdims=True) if how != "none" else np.zeros((1, dim))
    std = np.maximum(features.std(axis=0, keepdims=True), 1e-6) if how == "standardize" else np.ones((1, dim))
    return mean.astype(np.float32), std.astype(np.float32)


def fold_normalisation(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, std: np.ndarray):
    """Dense weights for raw features equal to (weight, bias) applied to (x - mean) / std."""
    folded = np.asarray(weight, np.float64) / np.asarray(std, np.float64).reshape(1, -1)
    return (folded.astype(np.float32),
            (np.asarray(bias, np.float64) - folded @ np.asarray(mean, np.float64).reshape(-1)).astype(np.float32))


def head_logits(head, features: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of `head` (eval mode) on pooled features (N, C)."""
    import mindspore as ms

    was_training = head.training
    head.set_train(False)
    try:
        outs = [head(ms.Tensor(features[i:i + batch_size, :, None, None])).asnumpy() for i in range(0, len(features), batch_size)]
    finally:
        head.set_train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def view_mean_logits(head, views: Sequence[np.ndarray]) -> np.ndarray:
    """Test-time augmentation over cached views: the mean of the head's logits over `views` (each (N, C)), float64.
    Two views (an image and its mirror image) give exactly `average_flip_logits`."""
    logits = [head_logits(head, v).astype(np.float64) for v in views]
    return logits[0] if len(logits) == 1 else average_flip_logits(*logits) if len(logits) == 2 else np.mean(logits, axis=0)


def train_head_on_features(
    head,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr_max: float,
    lr_init: float = 0.0,
    lr_end: float = 0.0,
    warmup_epochs: float = 0.0,
    momentum: float = 0.9,
    weight_decay: float = 4e-5,
    label_smoothing: float = 0.1,
    dropout: float = 0.0,
    seed: int = 0,
    val: Optional[tuple] = None,
    val_flip: Optional[np.ndarray] = None,
    val_whole: Sequence[np.ndarray] = (),
    on_epoch: Optional[Callable[["EpochReport"], None]] = None,
    class_weights: Optional[Sequence[float]] = None,
    balanced_sampling: bool = False,
    mixup_alpha: float = 0.0,
) -> HeadTrainingResult:
    """Train `head` in place on cached features; shuffles with `seed` each epoch.

    `class_weights` weigh the loss per class; `balanced_sampling` draws each
    epoch's samples class-balanced (`balance.balanced_order`) instead of a
    shuffle of all of them (the trainer's `class_balance: weights | sampler`). `mixup_alpha` > 0: each batch is
    mixed with a shuffled copy of itself, lam ~ Beta(a, a) (`mixing.mix_batch` on the features, seeded by `seed`
    and the step).

    `dropout` is applied here, on the host, to the pooled features (keep masks
    drawn from `seed`, scaled by 1 / (1 - p)): the same place and distribution as
    the head's own dropout, but reproducible, so pass a head without dropout.
    `on_epoch(EpochReport)` runs after every epoch. `val_flip`: features of the
    mirrored val images; the val logits are then the mean over both (flip TTA).
    `val_whole`: features of more views of the val images (the whole photos and their
    mirror images, `tta="flip+whole"`), averaged into the val logits likewise.
    """
    import mindspore as ms
    from mindspore import nn

    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.optim import build_optimizer
    from ms_impl.trainer.mixing import MixSettings, mix_batch
    from ms_impl.trainer.train_step import NetWithLoss, dropout_keep_mask

    if len(features) == 0 or len(features) != len(labels):
        raise ValueError(f"need matching, non-empty features and labels, got {len(features)} and {len(labels)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    steps_per_epoch = max(1, len(features) // batch_size)  # drop the ragged tail: one compiled shape
    batch_size = min(batch_size, len(features))
    lr = warmup_cosine_lr(lr_init=lr_init, lr_max=lr_max, lr_end=lr_end, warmup_epochs=warmup_epochs,
                          total_epochs=epochs, steps_per_epoch=steps_per_epoch)
    optimizer = build_optimizer(head.trainable_params(), lr, momentum=momentum, weight_decay=weight_decay)
    criterion = smoothed_cross_entropy(label_smoothing, class_weights)
    mixing = MixSettings(mixup_alpha=mixup_alpha)
    step = nn.TrainOneStepCell(NetWithLoss(head, criterion), optimizer)
    step.set_train(True)
    if ms.get_context("mode") == ms.PYNATIVE_MODE:
        # a step on cached features is tiny: compiled it runs ~20x faster than op by op
        step.construct = ms.jit(step.construct)
    rng = np.random.default_rng(seed)
    feats4d = np.ascontiguousarray(features[:, :, None, None], dtype=np.float32)
    labels32 = np.asarray(labels, dtype=np.int32)
    result = HeadTrainingResult(epochs=epochs, seconds=0.0)
    start = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        order = balanced_order(labels, rng) if balanced_sampling else rng.permutation(len(features))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            batch = feats4d[idx]
            if dropout > 0:
                batch = batch * dropout_keep_mask(rng, batch.shape, dropout)
            if mixing.enabled:
                batch, partner, lam = mix_batch(batch, labels32[idx], mixing, seed, epoch * steps_per_epoch + s)
                loss = step(ms.Tensor(batch), ms.Tensor(labels32[idx]), ms.Tensor(partner), ms.Tensor(np.float32(lam)))
            else:
                loss = step(ms.Tensor(batch), ms.Tensor(labels32[idx]))
            losses.append(float(loss.asnumpy()))
        result.losses.append(float(np.mean(losses)))
        epoch_seconds = time.perf_counter() - epoch_start
        val_logits = None
        if val is not None:
            val_logits = view_mean_logits(head, [val[0]] + ([] if val_flip is None else [val_flip]) + list(val_whole))
            result.val_top1.append(top1(val_logits, np.asarray(val[1])))
        if on_epoch is not None:
            on_epoch(EpochReport(epoch, result.losses[-1], val_logits, float(lr[(epoch + 1) * steps_per_epoch - 1]), epoch_seconds))
    result.seconds = time.perf_counter() - start
    head.set_train(False)
    return result


@dataclass
class FrozenRunResult:
    """What a frozen-backbone run produced: the trained head is already in the network."""

    val_logits: np.ndarray
    val_labels: np.ndarray
    history: HeadTrainingResult
    train_features: "CachedFeatures"
    val_features: "CachedFeatures"


def train_frozen_backbone(
    network,
    train_files: Sequence[str],
    train_labels: Sequence[int],
    val_files: Sequence[str],
    val_labels: Sequence[int],
    *,
    cache_dir: str,
    train_settings: "FeatureSettings",
    val_settings: "FeatureSettings",
    batch_size: int,
    dropout: float = 0.2,
    progress: bool = True,
    feature_norm: str = "none",
    feature_flip: bool = False,
    feature_whole: bool = False,
    tta: str = "none",
    **head_training,
) -> FrozenRunResult:
    """Backbone frozen: features from the cache (extracted when needed), then the head trains on them.

    The head trains as a plain `MobileNetV2Head` started from `network.head`'s
    dense weights (so the run follows the network's seed); the result is copied
    back into `network.head.dense`. The backbone's weights are never changed.
    `feature_norm` ("center"/"standardize"): the head trains on normalised
    features and the normalisation is folded into the dense layer afterwards, so
    the network takes raw features as always. `feature_flip`: the mirror images
    of the training crops are added as a second view. `feature_whole`: the whole
    photos resized to a square (`transforms.whole_transforms`) are added as views
    too (and their mirror images with `feature_flip`). `tta="flip"`: val logits
    are the mean over each image and its mirror image; `tta="flip+whole"`: the
    mean over the eval crop, the whole photo and the mirror images of both.
    `head_training`: the other keywords of `train_head_on_features` (epochs,
    lr_max, lr_init, lr_end, warmup_epochs, momentum, weight_decay,
    label_smoothing, seed, on_epoch, class_weights, balanced_sampling, mixup_alpha).
    """
    import dataclasses

    import mindspore as ms

    from ms_impl.trainer.feature_cache import load_or_extract
    from ms_impl.mobilenetv2 import MobileNetV2Head

    def cached(files, labels, settings, name):
        return load_or_extract(cache_dir, network.backbone, files, labels, settings,
                               batch_size=batch_size, progress=progress, name=name)

    train = cached(train_files, train_labels, train_settings, "train")
    val = cached(val_files, val_labels, val_settings, "val")
    if tta not in TTA_VIEWS:
        raise ValueError(f"tta must be one of {', '.join(TTA_VIEWS)}, got {tta!r}")
    if feature_whole and train_settings.feature_views > 1:
        raise ValueError("feature_whole needs feature_views 1 (the whole photo is an eval view)")
    parts, part_labels = [train.features], [train.labels]
    extra = [("train-flip", dict(hflip=True))] if feature_flip else []
    if feature_whole:
        extra += [("train-whole", dict(whole=True))] + ([("train-whole-flip", dict(whole=True, hflip=True))] if feature_flip else [])
    for name, change in extra:
        more = cached(train_files, train_labels, dataclasses.replace(train_settings, **change), name)
        parts.append(more.features)
        part_labels.append(more.labels)
    features, labels = np.concatenate(parts), np.concatenate(part_labels)
    val_views = {name: cached(val_files, val_labels, dataclasses.replace(val_settings, **change), name).features
                 for name, change in TTA_VIEWS[tta]}
    val_flip = val_views.pop("val-flip", None)
    mean, std = feature_statistics(features, feature_norm)

    def normalised(x: Optional[np.ndarray]) -> Optional[np.ndarray]:
        return None if x is None else ((x - mean) / std).astype(np.float32)

    head = MobileNetV2Head(network.num_features, network.num_classes, dropout=0.0)  # dropout: on the host
    head.dense.weight.set_data(network.head.dense.weight.value().copy())
    head.dense.bias.set_data(network.head.dense.bias.value().copy())
    whole_views = [normalised(v) for v in val_views.values()]
    history = train_head_on_features(head, normalised(features), labels, batch_size=batch_size, dropout=dropout,
                                     val=(normalised(val.features), val.labels), val_flip=normalised(val_flip),
                                     val_whole=whole_views, **head_training)
    val_logits = view_mean_logits(head, [normalised(val.features)] + ([] if val_flip is None else [normalised(val_flip)]) + whole_views)
    weight, bias = fold_normalisation(head.dense.weight.asnumpy(), head.dense.bias.asnumpy(), mean, std)
    network.head.dense.weight.set_data(ms.Tensor(weight))
    network.head.dense.bias.set_data(ms.Tensor(bias))
    return FrozenRunResult(val_logits, np.asarray(val.labels), history, train, val)
