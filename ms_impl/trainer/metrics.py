"""Classification metrics from logits: top-1/top-5, loss, confusion matrix, per-class precision/recall/F1.

The one place these are computed. `result_from_logits` works on arrays (one
process); `evaluate` runs a network over a dataset, and in data parallel sums
each rank's counts so every rank returns the figures of the whole set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from parity.core.loss import smoothed_cross_entropy

__all__ = ["EvalResult", "confusion_matrix", "per_class_metrics", "top1", "result_from_logits", "evaluate"]


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    confusion: np.ndarray  # counts[true, predicted]
    num_images: int


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


def _counts(logits: np.ndarray, labels: np.ndarray, num_classes: int, label_smoothing: float):
    """(confusion matrix, top-5 hits, loss sum): additive, so ranks can sum them."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, num_classes)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    top5 = np.argsort(-logits, axis=1)[:, : min(5, num_classes)]
    confusion = confusion_matrix(labels, top5[:, 0], num_classes)
    top5_hits = int((top5 == labels[:, None]).any(axis=1).sum())
    loss_sum = float(smoothed_cross_entropy(logits, labels, label_smoothing)) * len(labels) if len(labels) else 0.0
    return confusion, top5_hits, loss_sum


def _result(confusion: np.ndarray, top5_hits: int, loss_sum: float) -> EvalResult:
    num_images = int(confusion.sum())
    return EvalResult(top1=float(np.trace(confusion) / max(num_images, 1)), top5=top5_hits / max(num_images, 1),
                      loss=loss_sum / max(num_images, 1), confusion=confusion, num_images=num_images)


def result_from_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                       label_smoothing: float = 0.0) -> EvalResult:
    """Top-1/top-5, mean loss and confusion matrix of `logits` (N, C) against integer `labels`."""
    return _result(*_counts(logits, labels, num_classes, label_smoothing))


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose largest logit is the label (0 for no rows)."""
    return result_from_logits(logits, labels, np.shape(logits)[1]).top1 if len(labels) else 0.0


def evaluate(network, dataset, num_classes: int, label_smoothing: float = 0.0, ctx=None) -> EvalResult:
    """Run `network` in eval mode over `dataset` (batches of image, label); restores training mode after.

    In data parallel (`ctx` a distributed.DistributedContext) each rank passes
    its shard of the val set; the counts (confusion matrix, top-5 hits, loss
    sum) are summed over the ranks, so every rank returns the accuracy of the
    whole set.
    """
    from ms_impl.trainer.distributed import SINGLE_PROCESS, all_reduce_sum

    ctx = ctx or SINGLE_PROCESS
    was_training = network.training
    network.set_train(False)
    labels_all: List[np.ndarray] = [np.zeros(0, np.int64)]  # a rank may get no val image at all
    logits_all: List[np.ndarray] = [np.zeros((0, num_classes))]
    try:
        for images, labels in dataset.create_tuple_iterator(num_epochs=1):
            logits_all.append(network(images).asnumpy().astype(np.float64))
            labels_all.append(labels.asnumpy())
    finally:
        network.set_train(was_training)
    confusion, top5_hits, loss_sum = _counts(np.concatenate(logits_all), np.concatenate(labels_all), num_classes,
                                             label_smoothing)
    if ctx.distributed:
        confusion = all_reduce_sum(confusion, ctx)
        top5_hits = int(all_reduce_sum(np.array([top5_hits]), ctx)[0])
        loss_sum = float(all_reduce_sum(np.array([loss_sum]), ctx)[0])
    return _result(confusion, top5_hits, loss_sum)
