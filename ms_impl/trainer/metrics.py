"""Classification metrics from logits: top-1/top-5, loss, confusion matrix, per-class precision/recall/F1.

The one place these are computed. `result_from_logits` works on arrays (one
process); `evaluate` runs a network over a dataset, and in data parallel sums
each rank's counts so every rank returns the figures of the whole set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from parity.core import interrupts
from parity.core.loss import smoothed_cross_entropy

__all__ = ["EvalResult", "confusion_matrix", "per_class_metrics", "top1", "result_from_logits", "evaluate",
           "softmax", "category_probabilities", "category_predictions", "category_accuracy", "category_confusion",
           "average_flip_logits"]


TTA_MODES = ("none", "flip", "flip+whole")


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    confusion: np.ndarray  # counts[true, predicted]
    num_images: int
    # counts[true category, predicted category] (summed-probability rule); None when no groups were given
    category_confusion: Optional[np.ndarray] = None

    @property
    def category_acc(self) -> Optional[float]:
        if self.category_confusion is None:
            return None
        return float(np.trace(self.category_confusion) / max(self.category_confusion.sum(), 1))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray) -> Dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _counts(logits: np.ndarray, labels: np.ndarray, num_classes: int, label_smoothing: float,
            groups: Optional[np.ndarray] = None):
    """(confusion matrix, top-5 hits, loss sum, category confusion or None): additive, so ranks can sum them."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, num_classes)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    top5 = np.argsort(-logits, axis=1)[:, : min(5, num_classes)]
    confusion = confusion_matrix(labels, top5[:, 0], num_classes)
    top5_hits = int((top5 == labels[:, None]).any(axis=1).sum())
    loss_sum = float(smoothed_cross_entropy(logits, labels, label_smoothing)) * len(labels) if len(labels) else 0.0
    categories = None
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        categories = (category_confusion(logits, labels, groups) if len(labels)
                      else np.zeros((int(groups.max()) + 1,) * 2, dtype=np.int64))
    return confusion, top5_hits, loss_sum, categories


def _result(confusion: np.ndarray, top5_hits: int, loss_sum: float, categories: Optional[np.ndarray] = None) -> EvalResult:
    num_images = int(confusion.sum())
    return EvalResult(top1=float(np.trace(confusion) / max(num_images, 1)), top5=top5_hits / max(num_images, 1),
                      loss=loss_sum / max(num_images, 1), confusion=confusion, num_images=num_images,
                      category_confusion=categories)


def result_from_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                       label_smoothing: float = 0.0, groups: Optional[np.ndarray] = None) -> EvalResult:
    """Top-1/top-5, mean loss and confusion matrix of `logits` (N, C) against integer `labels`;
    with `groups` (class -> category index) also the category confusion matrix."""
    return _result(*_counts(logits, labels, num_classes, label_smoothing, groups))


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose largest logit is the label (0 for no rows)."""
    return result_from_logits(logits, labels, np.shape(logits)[1]).top1 if len(labels) else 0.0


def evaluate(network, dataset, num_classes: int, label_smoothing: float = 0.0, ctx=None,
             groups: Optional[np.ndarray] = None, tta: str = "none", whole_dataset=None) -> EvalResult:
    """Run `network` in eval mode over `dataset` (batches of image, label); restores training mode after.

    `groups` (class -> category index): also the category confusion matrix.
    `tta="flip"`: the logits are the mean over each image and its mirror image.
    `tta="flip+whole"`: the mean over the eval crop, the whole photo (`whole_dataset`: the
    same images in the same order through `transforms.whole_transforms`) and both mirror images.
    In data parallel (`ctx` a distributed.DistributedContext) each rank passes
    its shard of the val set; the counts (confusion matrices, top-5 hits, loss
    sum) are summed over the ranks, so every rank returns the accuracy of the
    whole set.
    """
    import mindspore as ms

    from ms_impl.trainer.distributed import SINGLE_PROCESS, all_reduce_sum

    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if (tta == "flip+whole") != (whole_dataset is not None):
        raise ValueError("tta='flip+whole' needs whole_dataset (and only it does)")
    ctx = ctx or SINGLE_PROCESS
    was_training = network.training
    network.set_train(False)
    labels_all: List[np.ndarray] = [np.zeros(0, np.int64)]  # a rank may get no val image at all
    logits_all: List[np.ndarray] = [np.zeros((0, num_classes))]
    wholes = whole_dataset.create_tuple_iterator(num_epochs=1) if whole_dataset is not None else None
    try:
        for images, labels in dataset.create_tuple_iterator(num_epochs=1):
            with interrupts.deferred():  # the first batch compiles the graph
                logits = network(images).asnumpy()
                if tta != "none":  # NCHW: mirroring the crop = reversing the width axis
                    mirrored = ms.Tensor(np.ascontiguousarray(images.asnumpy()[..., ::-1]))
                    logits = average_flip_logits(logits, network(mirrored).asnumpy())
                if wholes is not None:
                    whole, _ = next(wholes)
                    whole_mirrored = ms.Tensor(np.ascontiguousarray(whole.asnumpy()[..., ::-1]))
                    logits = (logits + average_flip_logits(network(whole).asnumpy(), network(whole_mirrored).asnumpy())) / 2
            logits_all.append(logits.astype(np.float64))
            labels_all.append(labels.asnumpy())
    finally:
        network.set_train(was_training)
    confusion, top5_hits, loss_sum, categories = _counts(np.concatenate(logits_all), np.concatenate(labels_all),
                                                         num_classes, label_smoothing, groups)
    if ctx.distributed:
        confusion = all_reduce_sum(confusion, ctx)
        top5_hits = int(all_reduce_sum(np.array([top5_hits]), ctx)[0])
        loss_sum = float(all_reduce_sum(np.array([loss_sum]), ctx)[0])
        if categories is not None:
            categories = all_reduce_sum(categories, ctx)
    return _result(confusion, top5_hits, loss_sum, categories)


# ---------------------------------------------------------------- garbage categories
# `groups[c]` is the category index of class c (`ms_impl.trainer.classes.category_groups`).


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def category_probabilities(logits: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N, categories): the summed softmax probability of each category's classes."""
    groups = np.asarray(groups, dtype=np.int64)
    probs = softmax(logits)
    out = np.zeros((len(probs), int(groups.max()) + 1))
    for category in range(out.shape[1]):
        out[:, category] = probs[:, groups == category].sum(axis=1)
    return out


def category_predictions(logits: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The category people act on: the one whose classes hold the most probability together
    (not merely the top-1 class's category)."""
    return category_probabilities(logits, groups).argmax(axis=1)


def category_confusion(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """counts[true category, predicted category]."""
    groups = np.asarray(groups, dtype=np.int64)
    true = groups[np.asarray(labels, dtype=np.int64)]
    return confusion_matrix(true, category_predictions(logits, groups), int(groups.max()) + 1)


def category_accuracy(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Share of images whose predicted category (summed-probability rule) is their class's category."""
    matrix = category_confusion(logits, labels, groups)
    return float(np.trace(matrix) / max(matrix.sum(), 1))


def average_flip_logits(logits: np.ndarray, flipped_logits: np.ndarray) -> np.ndarray:
    """Horizontal-flip test-time augmentation: the mean of the logits of an image and of its mirror image."""
    return (np.asarray(logits, dtype=np.float64) + np.asarray(flipped_logits, dtype=np.float64)) / 2
