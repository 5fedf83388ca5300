"""One optimisation step of the trainer, and dropout masks drawn on the host (replayable).

The step is the classic MindSpore Cell pair: network + loss, wrapped by
`nn.TrainOneStepCell` (gradients of the optimizer's parameters, then the
update), so it compiles to one graph in GRAPH mode and runs eagerly in PYNATIVE.

`ReplayableDropout` replaces the head's `nn.Dropout` during training. MindSpore's
dropout kernel keeps a random state that cannot be saved, so a resumed run
would draw other masks; here the mask of global step g is drawn on the host
from (seed, g), so a run interrupted and resumed draws the same masks as one
that ran through. Same distribution: keep with probability 1 - p, scale 1/(1 - p).
In data parallel the mask of the global batch is drawn and each rank takes
the rows of its samples, so W ranks apply the masks one process would.
`dropout_keep_mask` is the one host-side mask, also used by the frozen-backbone
head training (`transfer.train_head_on_features`).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


def dropout_keep_mask(rng: np.random.Generator, shape, p: float) -> np.ndarray:
    """A host-side dropout mask: keep with probability 1 - p, scaled by 1 / (1 - p); float32."""
    return (rng.random(shape) >= p).astype(np.float32) / np.float32(1.0 - p)


class ReplayableDropout(nn.Cell):
    """Multiply by a keep mask set from the host before each training step; identity in eval.

    The mask is trainer state, not model state: `train.network_params` leaves it out of checkpoints.
    """

    def __init__(self, p: float, batch_size: int, num_features: int, num_shards: int = 1, shard_id: int = 0) -> None:
        super().__init__()
        self.p = p
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.keep_mask = Parameter(Tensor(np.ones((batch_size, num_features), np.float32)), name="keep_mask", requires_grad=False)

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        if not self.training:
            return x
        return x * self.keep_mask

    def draw(self, seed: int, global_step: int) -> None:
        """Set the mask of `global_step` (a function of seed and step only)."""
        rng = np.random.default_rng([seed, 2, global_step])
        batch, features = self.keep_mask.shape
        mask = dropout_keep_mask(rng, (batch * self.num_shards, features), self.p)
        # row j of the global batch is sample j; this shard holds samples shard_id, shard_id + W, ...
        self.keep_mask.set_data(Tensor(np.ascontiguousarray(mask[self.shard_id::self.num_shards])))


def model_parameters(network: nn.Cell) -> dict:
    """{name: Parameter} of the model's own state (weights, BatchNorm statistics): what checkpoints hold and every
    data-parallel rank holds alike. The dropout masks are trainer state, per rank (MindSpore renames a parameter
    on assignment, so they are matched by identity)."""
    masks = {id(cell.keep_mask) for _, cell in network.cells_and_names() if isinstance(cell, ReplayableDropout)}
    return {p.name: p for p in network.get_parameters() if id(p) not in masks}


class NetWithLoss(nn.Cell):
    """loss(network(images), labels). With `frozen_layers` n > 0 (a MobileNetV2, its first n feature layers
    fixed by `transfer.freeze_leading_layers`) no gradient flows into those layers: their output is a constant
    of the backward pass, so none of their backward kernels run. With `partner_labels` and `lam` (a mixed
    batch, `mixing.mix_batch`): lam * loss(logits, labels) + (1 - lam) * loss(logits, partner_labels)."""

    def __init__(self, network: nn.Cell, loss_fn: nn.Cell, frozen_layers: int = 0) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss_fn = loss_fn
        self.frozen_layers = frozen_layers
        self.num_layers = len(network.backbone.features) if frozen_layers else 0

    def logits(self, images: ms.Tensor) -> ms.Tensor:
        if self.frozen_layers == 0:
            return self.network(images)
        # MobileNetV2.construct (features, then the head), cut after the frozen layers
        features = self.network.backbone.features
        x = images
        for i in range(self.frozen_layers):
            x = features[i](x)
        x = ops.stop_gradient(x)
        for i in range(self.frozen_layers, self.num_layers):
            x = features[i](x)
        return self.network.forward_head(x)

    def construct(self, images: ms.Tensor, labels: ms.Tensor, partner_labels=None, lam=None) -> ms.Tensor:
        logits = self.logits(images)
        if partner_labels is None:
            return self.loss_fn(logits, labels)
        return lam * self.loss_fn(logits, labels) + (1.0 - lam) * self.loss_fn(logits, partner_labels)


def build_train_step(network: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, frozen_layers: int = 0) -> nn.Cell:
    """`step(images, labels[, partner_labels, lam]) -> loss`: forward, backward and one optimizer update; the first
    `frozen_layers` feature layers forward only (see NetWithLoss)."""
    step = nn.TrainOneStepCell(NetWithLoss(network, loss_fn, frozen_layers), optimizer)
    step.set_train(True)
    return step
