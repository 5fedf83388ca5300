"""Parity harness: prove the MindSpore and PyTorch twins compute the same thing.

`run_case(case)` builds both twins with the same random weights (BatchNorm
statistics, gamma and beta randomized, never identity), feeds identical inputs
and returns one `CheckResult` per check:

- eval-mode logits;
- train-mode forward (batch statistics; dropout off: p = 0 on both sides);
- the smoothed cross-entropy of that forward, twin against twin;
- gradients of every parameter for that loss (per-parameter max relative diff);
- BatchNorm running statistics after that one training forward
  (PyTorch momentum 0.1 vs MindSpore 0.9);
- all weights and BN statistics after K optimizer steps (Momentum 0.9, the
  weight-decay rule of `parity.core.param_groups`, per-step warmup + cosine LR) on
  the same batches;
- the loss with label smoothing 0.1 of each framework against the float64
  reference `parity.core.loss.smoothed_cross_entropy`;
- the LR schedule: `parity.core.schedule.warmup_cosine_lr` as consumed by
  MindSpore's `nn.Momentum` vs PyTorch's LambdaLR, every step;
- preprocessing: the MindSpore eval pipeline (mindspore.dataset) vs the
  PIL pipeline of `pt_impl.transforms` on generated JPEGs of odd sizes and
  aspect ratios, and the top-1 agreement of the twins on those inputs.

`python -m parity check [--width W] [--image-size S] [--num-classes C]
[--batch B] [--mode graph|pynative] [--all]` prints the table and exits 1 on
any FAIL. Tolerances come from `parity.core.tolerances`. Frameworks are imported
lazily, inside the functions that need them.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from parity.core import loss as parity_loss
from parity.core import schedule, tolerances
from parity.core import spec as mbv2_spec
from parity.core.difference import difference
from parity.core.verdict import Calibrated, calibrated, calibrated_tensors
from parity.harness.command import (BATCH_RANGE, CLASSES_RANGE, IMAGE_SIZE_RANGE, SEED_RANGE, WIDTH_RANGE,
                                    OneLineErrorParser, float_in, int_in)
from parity.harness.golden import (PERTURBED_RUNS, flipped, float64_twin, masks_of, mindspore_relu6_inputs,
                                   perturbed_twin, torch_relu6_inputs, use_masks)

LABEL_SMOOTHING = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 4e-5  # the trainer's default, for the end-to-end steps
# Optimizer-rule check (identical gradients fed to both optimizers): a decay
# large enough that a wrong rule moves weights far beyond STEPS_REL in K steps.
RULE_WEIGHT_DECAY = 0.1
RULE_LR = dict(lr_init=0.01, lr_max=0.05, lr_end=0.0, warmup_epochs=1, steps_per_epoch=1)
# End-to-end steps: warmup for one step, then cosine (both branches of the formula).
# Small on purpose: a randomly initialised 52-layer BN net in training mode is
# chaotic (float32 rounding differences of 1e-4 in the activations grow by ~10x
# per step at lr 1e-3), so larger steps compare two diverging trajectories, not
# two frameworks. The exactness of the update rule itself is the rule check's job.
STEP_LR = dict(lr_init=2e-6, lr_max=1e-5, lr_end=0.0, warmup_epochs=1, steps_per_epoch=1)

# Generated JPEGs (height, width): square, landscape, portrait, odd, extreme and tiny.
JPEG_SIZES: Tuple[Tuple[int, int], ...] = (
    (224, 224), (101, 173), (173, 101), (300, 301), (257, 499),
    (480, 640), (333, 250), (64, 48), (511, 513), (900, 61),
)


@dataclass(frozen=True)
class Case:
    """One configuration of the twins to compare."""

    width: float = 1.0
    image_size: int = 224
    num_classes: int = 26
    batch: int = 4
    mode: str = "graph"  # MindSpore execution mode: graph or pynative
    steps: int = 5
    seed: int = 0
    fast_conv: str = "off"  # the MindSpore twin's own CPU 3x3 kernels (ms_impl/fast_conv.py)
    weights: Optional[str] = None  # a checkpoint (any layout) instead of random weights; sets width and classes

    @property
    def label(self) -> str:
        kernels = "" if self.fast_conv == "off" else f"/fast_conv={self.fast_conv}"
        source = "" if self.weights is None else f"/{Path(self.weights).name}"
        return (f"{self.width}x/{self.image_size}px/{self.num_classes}cls/b{self.batch}/{self.mode}{kernels}"
                f"{source}")


@dataclass
class CheckResult:
    """One row of the table: the worst difference found and whether it is within tolerance."""

    name: str
    max_abs: float
    max_rel: float
    tolerance: float
    kind: str  # "abs", "rel", "count" or "f64": which figure the verdict bounds
    detail: str = ""
    cosine: Optional[float] = None  # of the compared arrays as one vector each; None for scalars
    calibration: Optional[Calibrated] = None  # kind "f64": the candidate's and the noise floor's error vs float64

    @property
    def passed(self) -> bool:
        if self.calibration is not None:
            return self.calibration.passed
        value = {"abs": self.max_abs, "rel": self.max_rel, "count": self.max_abs}[self.kind]
        return bool(np.isfinite(value) and value <= self.tolerance)


# The cases of `--all` and of `tests/parity`: every width (0.35, 0.75, 1.0, 1.4),
# input size (96, 160, 224), class count (26, 1000), batch (1, 4) and MindSpore
# mode (graph, pynative) appears at least once, 224 px only where it matters.
COVERING_CASES: Tuple[Case, ...] = (
    Case(width=0.35, image_size=224, num_classes=26, batch=1, mode="graph", fast_conv="on"),
    Case(width=0.75, image_size=160, num_classes=1000, batch=4, mode="pynative"),
    Case(width=1.4, image_size=96, num_classes=1000, batch=1, mode="graph"),
    Case(width=1.0, image_size=96, num_classes=26, batch=4, mode="pynative"),
)


# ---------------------------------------------------------------- differences

def _abs_rel(actual: np.ndarray, reference: np.ndarray) -> Tuple[float, float]:
    """Max |actual - reference| and the same relative to max |reference|."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise ValueError(f"shape mismatch: {actual.shape} vs {reference.shape}")
    diff = float(np.max(np.abs(actual - reference))) if actual.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))


def _cosine(actual, reference) -> float:
    """Cosine similarity of two arrays, or of several (a list) concatenated into one vector each."""
    if isinstance(actual, (list, tuple)):
        actual = np.concatenate([np.ravel(a) for a in actual])
        reference = np.concatenate([np.ravel(r) for r in reference])
    return difference(reference, actual).cosine


def _compare_tensor_dicts(
    name: str, ms_tensors: Dict[str, np.ndarray], pt_tensors: Dict[str, np.ndarray], tolerance: float, kind: str,
    floor_fraction: float = 0.0,
) -> CheckResult:
    """Worst per-tensor difference over matching names, each relative to its own magnitude.

    `floor_fraction` > 0 puts a floor under that magnitude: that fraction of the
    largest magnitude over all tensors. Gradients that are zero in exact arithmetic
    (a BN beta followed only by linear layers and a training-mode BN) are pure
    rounding noise of ~1e-8, and dividing noise by noise measures nothing.
    """
    if set(ms_tensors) != set(pt_tensors):
        missing = sorted(set(ms_tensors) ^ set(pt_tensors))
        raise ValueError(f"{name}: tensors present on one side only: {missing[:5]}")
    largest = max((float(np.max(np.abs(v))) for v in pt_tensors.values() if v.size), default=0.0)
    floor = floor_fraction * largest
    worst_abs, worst_rel, worst_name = 0.0, 0.0, ""
    for key in sorted(ms_tensors):
        diff, _ = _abs_rel(ms_tensors[key], pt_tensors[key])
        scale = max(float(np.max(np.abs(pt_tensors[key]))) if pt_tensors[key].size else 0.0, floor)
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        worst_abs = max(worst_abs, diff)
        if rel >= worst_rel:
            worst_rel, worst_name = rel, key
    keys = sorted(ms_tensors)
    cosine = _cosine([ms_tensors[k] for k in keys], [pt_tensors[k] for k in keys])
    return CheckResult(name, worst_abs, worst_rel, tolerance, kind, f"{len(ms_tensors)} tensors, worst {worst_name}",
                       cosine)


# --------------------------------------------------------------- the weights

def _to_ms_names(torch_tensors: Dict[str, np.ndarray], case: "Case") -> Dict[str, np.ndarray]:
    """torchvision-layout tensors (any subset) -> the MindSpore twin's (ms-official) names.

    The names come from `parity.core.layouts`, the converter's own table, so the
    harness checks the same mapping that users' checkpoints go through.
    """
    from parity.core.layouts import TORCH_BN_COUNTER, name_map

    names = name_map("torchvision", "ms-official", case.width, case.num_classes)
    return {names[key]: value for key, value in torch_tensors.items() if not key.endswith(TORCH_BN_COUNTER)}


def _torch_state(pt_net, case: "Case") -> Dict[str, np.ndarray]:
    """Parameters and BN statistics of the PyTorch twin, in MindSpore names."""
    state = {k: v.detach().cpu().numpy().copy() for k, v in pt_net.state_dict().items()}
    return _to_ms_names(state, case)


def _ms_state(ms_net) -> Dict[str, np.ndarray]:
    return {p.name: p.asnumpy().copy() for p in ms_net.get_parameters()}


def _randomize_torch(pt_net, rng: np.random.Generator, image_size: int) -> None:
    """Random, non-identity BN gamma/beta/statistics and head bias, on the scale of real activations.

    gamma and beta are drawn at random; the running statistics are the batch
    statistics of a random calibration batch, each then perturbed at random
    (mean shifted by ~0.1 std, variance floored at a quarter of the layer's
    mean variance, then scaled by 0.7-1.4). Purely random
    statistics would saturate ReLU6 in deep layers in eval mode, and a net
    whose logits ignore its early layers would make the eval check blind.
    """
    import torch

    batch_norms = [m for m in pt_net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    calibration = torch.from_numpy(rng.standard_normal((4, 3, image_size, image_size)).astype(np.float32))
    with torch.no_grad():
        for module in batch_norms:
            n = module.num_features
            module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, n).astype(np.float32)))
            module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.2, n).astype(np.float32)))
            module.momentum = 1.0  # running stats := this batch's statistics
        was_training = pt_net.training
        pt_net.train()
        pt_net(calibration)
        pt_net.train(was_training)
        for module in batch_norms:
            n = module.num_features
            module.momentum = mbv2_spec.BN_MOMENTUM_TORCH
            module.num_batches_tracked.zero_()
            # Deep layers see few pixels per channel: keep tiny batch variances from
            # turning eval-mode BN into a x300 amplifier of rounding differences.
            module.running_var.clamp_(min=0.25 * float(module.running_var.mean()))
            std = module.running_var.sqrt()
            module.running_mean.add_(std * torch.from_numpy(rng.normal(0.0, 0.1, n).astype(np.float32)))
            module.running_var.mul_(torch.from_numpy(rng.uniform(0.7, 1.4, n).astype(np.float32)))
        pt_net.classifier[1].bias.copy_(torch.from_numpy(rng.normal(0.0, 0.1, pt_net.num_classes).astype(np.float32)))


@dataclass
class Twins:
    """Both nets with the same weights, and the MindSpore mode they run in."""

    case: Case
    ms_net: object
    pt_net: object
    _ms_eval: Optional[Callable] = None

    def ms_eval_logits(self, x: np.ndarray) -> np.ndarray:
        import mindspore as ms

        self.ms_net.set_train(False)
        if self._ms_eval is None:
            forward = lambda inputs: self.ms_net(inputs)  # noqa: E731
            self._ms_eval = ms.jit(forward) if self.case.mode == "graph" else forward
        logits = self._ms_eval(ms.Tensor(x)).asnumpy()
        self.ms_net.set_train(True)
        return logits

    def pt_eval_logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        self.pt_net.eval()
        with torch.no_grad():
            logits = self.pt_net(torch.from_numpy(x)).numpy()
        self.pt_net.train()
        return logits

    def golden_eval_logits(self, x: np.ndarray, perturb_seed: Optional[int] = None) -> np.ndarray:
        """The PyTorch twin's current weights in float64: the golden of the eval rows (`perturb_seed`: moved by
        up to one float32 ulp everywhere, see parity.harness.golden.perturbed_twin)."""
        import torch

        golden = float64_twin(self.pt_net).eval()
        if perturb_seed is not None:
            golden = perturbed_twin(golden, perturb_seed)
        with torch.no_grad():
            return golden(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()

    def perturbed_eval_logits(self, x: np.ndarray) -> List[np.ndarray]:
        return [self.golden_eval_logits(x, seed) for seed in range(PERTURBED_RUNS)]


def set_ms_mode(mode: str) -> None:
    import mindspore as ms

    if mode not in ("graph", "pynative"):
        raise ValueError(f"mode must be graph or pynative, got {mode!r}")
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


def build_twins(case: Case) -> Twins:
    """Both twins, dropout off, the PyTorch twin's randomized weights copied into the MindSpore twin."""
    import torch

    from ms_impl.mobilenetv2 import MobileNetV2 as MsMobileNetV2
    from pt_impl.mobilenetv2 import MobileNetV2 as PtMobileNetV2

    set_ms_mode(case.mode)
    torch.manual_seed(case.seed)
    pt_net = PtMobileNetV2(num_classes=case.num_classes, width_mult=case.width, dropout=0.0)
    if case.weights is None:
        _randomize_torch(pt_net, np.random.default_rng(case.seed), case.image_size)
    else:
        _load_checkpoint(pt_net, case)
    ms_net = MsMobileNetV2(num_classes=case.num_classes, width_mult=case.width, dropout=0.0, fast_conv=case.fast_conv)
    # The MindSpore twin gets its weights the way users' checkpoints travel: through the converter.
    from ms_impl import weights as ms_weights
    from parity.core import converter as convert
    from pt_impl import weights as pt_weights

    source = convert.checkpoint_from_state(pt_weights.state_of(pt_net), "torchvision", source="PyTorch twin")
    ms_weights.load_into(ms_net, convert.convert(source, "ms-official").tensors, strict=True)
    return Twins(case, ms_net, pt_net)


def case_for_weights(case: Case) -> Case:
    """`case` with the width and class count of its checkpoint (a backbone-only one keeps the case's classes)."""
    from parity.core.converter import read_checkpoint

    ckpt = read_checkpoint(case.weights)
    return replace(case, width=ckpt.width_mult, num_classes=ckpt.num_classes or case.num_classes)


def _load_checkpoint(pt_net, case: Case) -> None:
    """The checkpoint's tensors into the PyTorch twin; a backbone-only checkpoint keeps the twin's own head."""
    from parity.core.converter import convert, read_checkpoint
    from pt_impl import weights as pt_weights

    tensors = convert(read_checkpoint(case.weights), "torchvision").tensors
    result = pt_weights.load_into(pt_net, tensors, strict=False)
    missing = [name for name in getattr(result, "missing", []) if not name.startswith("classifier.")]
    if missing or getattr(result, "unexpected", []):
        raise ValueError(f"{case.weights}: does not fit a {case.width}x {case.num_classes}-class twin")


# ------------------------------------------------------------------- checks

def _inputs(case: Case, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((case.batch, 3, case.image_size, case.image_size)).astype(np.float32)
    labels = rng.integers(0, case.num_classes, case.batch)
    return x, labels


def _stage(name: str) -> str:
    """The stage a MindSpore-named tensor belongs to: features.i, or the head (`dense`)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "features" else parts[0]


def _kink_detail(ms_flips: int, pt_flips: int) -> str:
    return (f"ReLU6 kinks: {ms_flips} MindSpore / {pt_flips} PyTorch elements on the other side of 0 or 6 "
            f"than float64, compared along each side's own masks")


def check_eval_logits(twins: Twins, x: np.ndarray) -> CheckResult:
    ms_logits, pt_logits = twins.ms_eval_logits(x), twins.pt_eval_logits(x)
    diff, rel = _abs_rel(ms_logits, pt_logits)
    return CheckResult("eval logits", diff, rel, 0.0, "f64", f"max |logit| {np.abs(pt_logits).max():.3g}",
                       _cosine(ms_logits, pt_logits), calibrated(ms_logits, pt_logits, twins.golden_eval_logits(x),
                                                                 perturbed=twins.perturbed_eval_logits(x)))


class _TrainSteppers:
    """One training step per framework (forward, smoothed CE, backward, optimizer step).

    Each step returns the loss, the logits of the training forward and the
    gradients (MindSpore names), so the first step also yields the
    train-forward, gradient and BN-statistics checks.
    """

    def __init__(self, twins: Twins, lr_per_step: np.ndarray, weight_decay: float) -> None:
        import mindspore as ms

        from ms_impl import loss as ms_loss
        from ms_impl import optim as ms_optim
        from pt_impl import loss as pt_loss
        from pt_impl import optim as pt_optim

        self.twins = twins
        ms_net, pt_net = twins.ms_net, twins.pt_net
        ms_net.set_train(True)
        pt_net.train()
        self.ms_optimizer = ms_optim.build_optimizer(ms_net.trainable_params(), lr_per_step, MOMENTUM, weight_decay)
        self.pt_optimizer, self.pt_scheduler = pt_optim.build_optimizer(
            pt_net.named_parameters(), lr_per_step, MOMENTUM, weight_decay)
        self.ms_param_names = [p.name for p in self.ms_optimizer.parameters]
        ms_criterion = ms_loss.smoothed_cross_entropy(LABEL_SMOOTHING)
        self.pt_criterion = pt_loss.smoothed_cross_entropy(LABEL_SMOOTHING)

        def forward(x, labels):
            logits = ms_net(x)
            return ms_criterion(logits, labels), logits

        grad_fn = ms.value_and_grad(forward, None, self.ms_optimizer.parameters, has_aux=True)
        optimizer = self.ms_optimizer

        def step(x, labels):
            (loss, logits), grads = grad_fn(x, labels)
            optimizer(grads)
            return loss, logits, grads

        self._ms_step = ms.jit(step) if twins.case.mode == "graph" else step

    def ms_step(self, x: np.ndarray, labels: np.ndarray) -> Tuple[float, np.ndarray, Dict[str, np.ndarray]]:
        import mindspore as ms

        loss, logits, grads = self._ms_step(ms.Tensor(x), ms.Tensor(labels.astype(np.int32)))
        return float(loss.asnumpy()), logits.asnumpy(), {n: g.asnumpy() for n, g in zip(self.ms_param_names, grads)}

    def pt_step(self, x: np.ndarray, labels: np.ndarray) -> Tuple[float, np.ndarray, Dict[str, np.ndarray]]:
        import torch

        self.pt_optimizer.zero_grad(set_to_none=True)
        logits = self.twins.pt_net(torch.from_numpy(x))
        loss = self.pt_criterion(logits, torch.from_numpy(labels.astype(np.int64)))
        loss.backward()
        grads = {k: p.grad.numpy().copy() for k, p in self.twins.pt_net.named_parameters()}
        self.pt_optimizer.step()
        self.pt_scheduler.step()
        return float(loss.item()), logits.detach().numpy(), _to_ms_names(grads, self.twins.case)


class _GoldenStepper:
    """The PyTorch twin in float64, stepped like the twins, its ReLU6 backward along given masks."""

    def __init__(self, twins: Twins, lr_per_step: np.ndarray, weight_decay: float) -> None:
        from pt_impl import loss as pt_loss
        from pt_impl import optim as pt_optim

        self.case = twins.case
        self.net = float64_twin(twins.pt_net).train()
        self.optimizer, self.scheduler = pt_optim.build_optimizer(self.net.named_parameters(), lr_per_step,
                                                                  MOMENTUM, weight_decay)
        self.criterion = pt_loss.smoothed_cross_entropy(LABEL_SMOOTHING)

    def step(self, x: np.ndarray, labels: np.ndarray, masks: Optional[Dict[str, np.ndarray]],
             ) -> Tuple[float, np.ndarray, Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """(loss, logits, gradients in MindSpore names, ReLU6 inputs) of one step."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        with use_masks(self.net, masks), torch_relu6_inputs(self.net) as pre_activations:
            logits = self.net(torch.from_numpy(x.astype(np.float64)))
            loss = self.criterion(logits, torch.from_numpy(labels.astype(np.int64)))
            loss.backward()
        grads = {k: p.grad.numpy().copy() for k, p in self.net.named_parameters()}
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.item()), logits.detach().numpy(), _to_ms_names(grads, self.case), pre_activations

    def state(self) -> Dict[str, np.ndarray]:
        return _torch_state(self.net, self.case)


def _perturbed_train_logits(golden, x: np.ndarray) -> List[np.ndarray]:
    """Training-mode logits of the golden moved by up to one float32 ulp everywhere (statistics untouched)."""
    import torch

    logits = []
    for seed in range(PERTURBED_RUNS):
        with torch.no_grad():
            logits.append(perturbed_twin(golden, seed).train()(torch.from_numpy(x.astype(np.float64))).numpy())
    return logits


def _ms_relu6_inputs(twins: Twins, x: np.ndarray, first: int = 0, last: Optional[int] = None) -> Dict[str, np.ndarray]:
    """The MindSpore twin's own ReLU6 inputs on `x` (stages `first`..`last`, PyNative, statistics kept)."""
    import mindspore as ms

    stages = twins.ms_net.backbone.features
    previous_mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        return mindspore_relu6_inputs(stages, first, x, len(stages) - 1 if last is None else last)[0]
    finally:
        ms.set_context(mode=previous_mode)


def _bn_stats(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if k.endswith(("moving_mean", "moving_variance"))}


def _weights(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if not k.endswith(("moving_mean", "moving_variance"))}


def check_training(twins: Twins, rng: np.random.Generator) -> List[CheckResult]:
    """Train forward, its loss, gradients, BN statistics after it, then weights after K steps.

    Each against the float64 golden: two golden trajectories, one along PyTorch's ReLU6 masks (the noise
    floor's) and one along MindSpore's (the candidate's), see parity.harness.golden."""
    case = twins.case
    lr = schedule.warmup_cosine_lr(total_epochs=case.steps, **STEP_LR)
    steppers = _TrainSteppers(twins, lr, WEIGHT_DECAY)
    golden_pt, golden_ms = _GoldenStepper(twins, lr, WEIGHT_DECAY), _GoldenStepper(twins, lr, WEIGHT_DECAY)
    results: List[CheckResult] = []
    for step in range(case.steps):
        x, labels = _inputs(case, rng)
        ms_masks = masks_of(_ms_relu6_inputs(twins, x))  # before the step moves the weights
        perturbed = _perturbed_train_logits(golden_pt.net, x) if step == 0 else []
        ms_loss, ms_logits, ms_grads = steppers.ms_step(x, labels)
        with torch_relu6_inputs(twins.pt_net) as pt_pre:
            pt_loss, pt_logits, pt_grads = steppers.pt_step(x, labels)
        pt_masks = masks_of(pt_pre)
        gold_loss, gold_logits, gold_grads_pt, gold_pre = golden_pt.step(x, labels, pt_masks)
        _, _, gold_grads_ms, _ = golden_ms.step(x, labels, ms_masks)
        if step == 0:
            diff, rel = _abs_rel(ms_logits, pt_logits)
            results.append(CheckResult("train-mode forward", diff, rel, 0.0, "f64",
                                       f"max |logit| {np.abs(pt_logits).max():.3g}", _cosine(ms_logits, pt_logits),
                                       calibrated(ms_logits, pt_logits, gold_logits, perturbed=perturbed)))
            diff, rel = _abs_rel(np.float64(ms_loss), np.float64(pt_loss))
            results.append(CheckResult("train loss (MS vs PT)", diff, rel, 0.0, "f64", f"loss {pt_loss:.6f}",
                                       calibration=calibrated(np.float64(ms_loss), np.float64(pt_loss),
                                                              np.float64(gold_loss), perturbed=[
                                           np.float64(parity_loss.smoothed_cross_entropy(logits, labels,
                                                                                         LABEL_SMOOTHING))
                                           for logits in perturbed])))
            gold_masks = masks_of(gold_pre)
            results.append(_calibrated_tensors_row(
                "gradients, whole net", ms_grads, pt_grads, gold_grads_ms, gold_grads_pt, tolerances.GRAD_FLOOR,
                _kink_detail(flipped(ms_masks, gold_masks), flipped(pt_masks, gold_masks))))
            results.append(_calibrated_tensors_row(
                "BN stats after 1 forward", _bn_stats(_ms_state(twins.ms_net)),
                _bn_stats(_torch_state(twins.pt_net, case)), _bn_stats(golden_ms.state()),
                _bn_stats(golden_pt.state())))
    ms_state, pt_state = _ms_state(twins.ms_net), _torch_state(twins.pt_net, case)
    gold_ms_state, gold_pt_state = golden_ms.state(), golden_pt.state()
    results.append(_calibrated_tensors_row(f"weights after {case.steps} steps", _weights(ms_state),
                                           _weights(pt_state), _weights(gold_ms_state), _weights(gold_pt_state)))
    results.append(_calibrated_tensors_row(f"BN stats after {case.steps} steps", _bn_stats(ms_state),
                                           _bn_stats(pt_state), _bn_stats(gold_ms_state), _bn_stats(gold_pt_state)))
    return results


def _calibrated_tensors_row(name: str, ms_tensors: Dict[str, np.ndarray], pt_tensors: Dict[str, np.ndarray],
                            golden_ms: Dict[str, np.ndarray], golden_pt: Optional[Dict[str, np.ndarray]] = None,
                            floor_fraction: float = 0.0, detail: str = "") -> CheckResult:
    """A row of named tensors: MindSpore against its float64 golden, stage by stage, within NOISE_MULTIPLE x
    PyTorch's float32 error against its own (the same golden unless the ReLU6 masks differ)."""
    plain = _compare_tensor_dicts(name, ms_tensors, pt_tensors, 0.0, "rel", floor_fraction)
    verdict = calibrated_tensors(ms_tensors, pt_tensors, golden_ms, _stage, floor_fraction, golden_pt)
    text = f"{len(ms_tensors)} tensors, worst vs float64 {verdict.where}" + (f"; {detail}" if detail else "")
    return CheckResult(name, plain.max_abs, plain.max_rel, 0.0, "f64", text, plain.cosine, verdict)


def check_layer_gradients(twins: Twins, rng: np.random.Generator) -> CheckResult:
    """Backward of every layer of the real net on identical inputs and upstream gradients.

    Layer i of both twins gets the PyTorch twin's activations of layer i - 1 and
    the same random upstream gradient; the input gradient and every parameter
    gradient are compared, each side against layer i in float64 along its own
    ReLU6 masks. This is the whole-net gradient check without the growth of
    rounding through a 52-layer training-mode forward.
    Runs in PyNative mode (one graph per layer would cost minutes to compile).
    """
    import mindspore as ms
    import torch

    ms_layers, pt_layers = twins.ms_net.backbone.features, twins.pt_net.features
    x, _ = _inputs(twins.case, rng)
    activations = torch.from_numpy(x)
    ms_grads: Dict[str, np.ndarray] = {}
    pt_grads: Dict[str, np.ndarray] = {}
    gold_ms: Dict[str, np.ndarray] = {}
    gold_pt: Dict[str, np.ndarray] = {}
    ms_flips = pt_flips = 0
    previous_mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        for index in range(len(pt_layers)):
            ms_layer, pt_layer = ms_layers[index], pt_layers[index]
            prefix = f"features.{index}."
            goldens = (float64_twin(pt_layer), float64_twin(pt_layer))  # before this forward moves its statistics
            layer_input = activations.detach().clone().requires_grad_(True)
            with torch_relu6_inputs(pt_layer, prefix) as pt_pre:
                output = pt_layer(layer_input)
            upstream = rng.standard_normal(tuple(output.shape)).astype(np.float32)
            (output * torch.from_numpy(upstream)).sum().backward()
            upstream_ms = ms.Tensor(upstream)
            ms_params = ms_layer.trainable_params()

            def weighted_output(inputs, layer=ms_layer, weights=upstream_ms):
                return (layer(inputs) * weights).sum()

            input_numpy = layer_input.detach().numpy()
            input_grad, param_grads = ms.grad(weighted_output, grad_position=0, weights=ms_params)(
                ms.Tensor(input_numpy))
            ms_pre = mindspore_relu6_inputs(ms_layers, index, input_numpy)[0]
            ms_grads[f"features.{index}.input"] = input_grad.asnumpy()
            pt_grads[f"features.{index}.input"] = layer_input.grad.numpy()
            ms_grads.update({p.name: g.asnumpy() for p, g in zip(ms_params, param_grads)})
            pt_grads.update(_to_ms_names({f"{prefix}{n}": p.grad.numpy() for n, p in pt_layer.named_parameters()},
                                         twins.case))
            for golden, pre, grads in ((goldens[0], pt_pre, gold_pt), (goldens[1], ms_pre, gold_ms)):
                golden.train()
                golden_input = torch.from_numpy(input_numpy.astype(np.float64)).requires_grad_(True)
                with use_masks(golden, masks_of(pre), prefix), torch_relu6_inputs(golden, prefix) as gold_pre:
                    (golden(golden_input) * torch.from_numpy(upstream.astype(np.float64))).sum().backward()
                grads[f"features.{index}.input"] = golden_input.grad.numpy()
                grads.update(_to_ms_names({f"{prefix}{n}": p.grad.numpy() for n, p in golden.named_parameters()},
                                          twins.case))
            gold_masks = masks_of(gold_pre)
            pt_flips += flipped(masks_of(pt_pre), gold_masks)
            ms_flips += flipped(masks_of(ms_pre), gold_masks)
            activations = output.detach()
    finally:
        ms.set_context(mode=previous_mode)
        twins.pt_net.zero_grad(set_to_none=True)
    return _calibrated_tensors_row("gradients, layer by layer", ms_grads, pt_grads, gold_ms, gold_pt,
                                   tolerances.GRAD_FLOOR, _kink_detail(ms_flips, pt_flips))


def check_optimizer_rule(twins: Twins, rng: np.random.Generator) -> CheckResult:
    """K steps of both optimizers fed identical gradients: momentum, decay rule, per-step LR."""
    import mindspore as ms
    import torch

    from ms_impl import optim as ms_optim
    from ms_impl import weights as ms_weights
    from pt_impl import optim as pt_optim

    case = twins.case
    # Start from identical weights: the end-to-end steps before this check leave them a little apart.
    ms_weights.load_into(twins.ms_net, _torch_state(twins.pt_net, twins.case))
    golden = float64_twin(twins.pt_net)
    lr = schedule.warmup_cosine_lr(total_epochs=case.steps, **RULE_LR)
    ms_optimizer = ms_optim.build_optimizer(twins.ms_net.trainable_params(), lr, MOMENTUM, RULE_WEIGHT_DECAY)
    pt_optimizer, pt_scheduler = pt_optim.build_optimizer(twins.pt_net.named_parameters(), lr, MOMENTUM,
                                                          RULE_WEIGHT_DECAY)
    gold_optimizer, gold_scheduler = pt_optim.build_optimizer(golden.named_parameters(), lr, MOMENTUM,
                                                              RULE_WEIGHT_DECAY)
    pt_params, gold_params = dict(twins.pt_net.named_parameters()), dict(golden.named_parameters())
    ms_to_pt = _to_ms_names({name: name for name in pt_params}, twins.case)
    ms_names = [p.name for p in ms_optimizer.parameters]
    before = _ms_state(twins.ms_net)
    for _ in range(case.steps):
        grads = {name: rng.standard_normal(tuple(p.shape)).astype(np.float32)
                 for name, p in zip(ms_names, ms_optimizer.parameters)}
        ms_optimizer(tuple(ms.Tensor(grads[name]) for name in ms_names))
        for name in ms_names:
            pt_params[ms_to_pt[name]].grad = torch.from_numpy(grads[name])
            gold_params[ms_to_pt[name]].grad = torch.from_numpy(grads[name].astype(np.float64))
        for optimizer, scheduler in ((pt_optimizer, pt_scheduler), (gold_optimizer, gold_scheduler)):
            optimizer.step()
            scheduler.step()
    ms_state, pt_state = _ms_state(twins.ms_net), _torch_state(twins.pt_net, twins.case)
    gold_state = _torch_state(golden, twins.case)
    moved = max(float(np.max(np.abs(ms_state[k] - before[k]))) for k in ms_names)
    result = _calibrated_tensors_row(f"optimizer rule, same grads, {case.steps} steps",
                                     {k: ms_state[k] for k in ms_names}, {k: pt_state[k] for k in ms_names},
                                     {k: gold_state[k] for k in ms_names})
    result.detail += f"; wd {RULE_WEIGHT_DECAY}, largest move {moved:.2g}"
    return result


def check_loss(num_classes: int, batch: int, rng: np.random.Generator) -> List[CheckResult]:
    """Each framework's smoothed cross entropy against the float64 reference formula."""
    import mindspore as ms
    import torch

    from ms_impl import loss as ms_loss
    from pt_impl import loss as pt_loss

    logits = (3.0 * rng.standard_normal((batch, num_classes))).astype(np.float32)
    labels = rng.integers(0, num_classes, batch)
    reference = parity_loss.smoothed_cross_entropy(logits, labels, LABEL_SMOOTHING)
    ms_value = float(ms_loss.smoothed_cross_entropy(LABEL_SMOOTHING)(
        ms.Tensor(logits), ms.Tensor(labels.astype(np.int32))).asnumpy())
    pt_value = float(pt_loss.smoothed_cross_entropy(LABEL_SMOOTHING)(
        torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64))).item())
    results = []
    for name, value in (("loss MindSpore vs reference", ms_value), ("loss PyTorch vs reference", pt_value)):
        diff, rel = _abs_rel(np.float64(value), np.float64(reference))
        results.append(CheckResult(name, diff, rel, tolerances.LOSS_REL, "rel",
                                   f"smoothing {LABEL_SMOOTHING}, reference {reference:.6f}"))
    return results


def check_lr_schedule() -> CheckResult:
    """The per-step array as MindSpore's Momentum consumes it vs PyTorch's LambdaLR, every step."""
    import mindspore as ms
    import torch

    from ms_impl import optim as ms_optim
    from pt_impl import optim as pt_optim

    lr = schedule.warmup_cosine_lr(lr_init=0.0, lr_max=0.1, lr_end=1e-4, warmup_epochs=2,
                                   total_epochs=10, steps_per_epoch=7)
    ms_param = ms.Parameter(ms.Tensor(np.zeros(2, np.float32)), name="probe.weight")
    ms_optimizer = ms_optim.build_optimizer([ms_param], lr)
    zero_grads = (ms.Tensor(np.zeros(2, np.float32)),)
    pt_param = torch.nn.Parameter(torch.zeros(2))
    pt_optimizer, pt_scheduler = pt_optim.build_optimizer([("probe.weight", pt_param)], lr)
    ms_values, pt_values = [], []
    for _ in range(len(lr)):
        ms_values.append(float(np.asarray(ms_optimizer.get_lr().asnumpy()).ravel()[0]))
        ms_optimizer(zero_grads)  # advances global_step, as a training step does
        pt_values.append(pt_optimizer.param_groups[0]["lr"])
        pt_param.grad = torch.zeros(2)
        pt_optimizer.step()
        pt_scheduler.step()
    diff, rel = _abs_rel(np.asarray(ms_values), np.asarray(pt_values))
    return CheckResult("LR schedule (every step)", diff, rel, tolerances.LR_ABS, "abs",
                       f"{len(lr)} steps, warmup 14 + cosine", _cosine(np.asarray(ms_values), np.asarray(pt_values)))


def make_jpeg(height: int, width: int, rng: np.random.Generator, quality: int = 90) -> bytes:
    """A JPEG of smooth colour waves plus noise: edges and gradients for the resize kernels."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [128 + 100 * np.sin(xx / (7 + 5 * c) + c) * np.cos(yy / (11 + 3 * c) - c) for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0.0, 20.0, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def ms_preprocess(images: Sequence[bytes], image_size: int) -> List[np.ndarray]:
    """The MindSpore eval pipeline, run as a mindspore.dataset pipeline (as the trainer runs it)."""
    import mindspore.dataset as ds

    from ms_impl.transforms import eval_transforms

    def source():
        for data in images:
            yield (np.frombuffer(data, dtype=np.uint8),)

    dataset = ds.GeneratorDataset(source, column_names=["image"], shuffle=False, num_parallel_workers=1)
    dataset = dataset.map(operations=eval_transforms(image_size), input_columns="image", num_parallel_workers=1)
    return [row["image"] for row in dataset.create_dict_iterator(num_epochs=1, output_numpy=True)]


def pt_preprocess(images: Sequence[bytes], image_size: int) -> List[np.ndarray]:
    from pt_impl.transforms import apply, eval_transforms

    ops = eval_transforms(image_size)
    return [apply(ops, data).numpy() for data in images]


def check_preprocessing(twins: Twins, rng: np.random.Generator,
                        sizes: Sequence[Tuple[int, int]] = JPEG_SIZES) -> List[CheckResult]:
    """Pipeline outputs image by image, then each twin on its own pipeline's tensors."""
    image_size = twins.case.image_size
    images = [make_jpeg(h, w, rng) for h, w in sizes]
    ms_tensors, pt_tensors = ms_preprocess(images, image_size), pt_preprocess(images, image_size)
    worst_abs, worst_rel, unequal = 0.0, 0.0, 0
    for ms_tensor, pt_tensor in zip(ms_tensors, pt_tensors):
        diff, rel = _abs_rel(ms_tensor, pt_tensor)
        worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
        unequal += int(diff > 0)
    results = [CheckResult(f"preprocessing ({len(images)} JPEGs)", worst_abs, worst_rel,
                           tolerances.PREPROCESS_ABS, "abs", f"{unequal} of {len(images)} not bit-exact",
                           _cosine(list(ms_tensors), list(pt_tensors)))]

    # Batches of the case's batch size, so a compiled graph is reused (last one padded).
    batch = twins.case.batch
    ms_stack, pt_stack = np.stack(ms_tensors), np.stack(pt_tensors)
    pad = (-len(images)) % batch
    ms_stack = np.concatenate([ms_stack, ms_stack[:pad]]) if pad else ms_stack
    pt_stack = np.concatenate([pt_stack, pt_stack[:pad]]) if pad else pt_stack
    ms_logits = np.concatenate([twins.ms_eval_logits(ms_stack[i:i + batch]) for i in range(0, len(ms_stack), batch)])
    pt_logits = np.concatenate([twins.pt_eval_logits(pt_stack[i:i + batch]) for i in range(0, len(pt_stack), batch)])
    ms_logits, pt_logits = ms_logits[:len(images)], pt_logits[:len(images)]
    # A disagreement on an image whose two classes are closer in float64 than the twins' logits are apart
    # there is a tie within rounding, not a divergence: counted apart. Any other disagreement fails.
    golden = twins.golden_eval_logits(pt_stack[:len(images)])
    ms_top, pt_top = ms_logits.argmax(1), pt_logits.argmax(1)
    rows = np.arange(len(images))
    margins = np.abs(golden[rows, ms_top] - golden[rows, pt_top])
    gaps = np.max(np.abs(ms_logits.astype(np.float64) - pt_logits), axis=1)
    disagree = int(np.sum(ms_top != pt_top))
    ties = int(np.sum((ms_top != pt_top) & (margins <= gaps)))
    diff, rel = _abs_rel(ms_logits, pt_logits)
    results.append(CheckResult("top-1 on those JPEGs", float(disagree - ties), rel, 0, "count",
                               f"{len(images) - disagree}/{len(images)} agree"
                               + (f", {ties} tied within the logits' gap" if ties else "")
                               + f", logits max abs {diff:.2e}", _cosine(ms_logits, pt_logits)))
    return results


def run_case(case: Case, include_case_free: bool = True, include_preprocessing: bool = True) -> List[CheckResult]:
    """Every check for one configuration (loss, LR schedule and preprocessing unless excluded)."""
    rng = np.random.default_rng(case.seed + 1)
    twins = build_twins(case)
    x, _ = _inputs(case, rng)
    results = [check_eval_logits(twins, x)]
    if include_preprocessing:  # its own random stream: the training checks see the same inputs with or without it
        results += check_preprocessing(twins, np.random.default_rng([case.seed, 1]))
    results.append(check_layer_gradients(twins, rng))
    results += check_training(twins, rng)
    results.append(check_optimizer_rule(twins, rng))  # last: it moves the weights far
    if include_case_free:
        results += check_loss(case.num_classes, case.batch, rng)
        results.append(check_lr_schedule())
    return results


# ---------------------------------------------------------------------- CLI

def format_table(results: Sequence[CheckResult], title: str = "") -> str:
    """The check table: the twins' direct difference, then the verdict's figures (error vs float64, the float32
    noise floor, their ratio) for the rows judged against float64."""
    header = ("check", "max abs diff", "max rel diff", "cosine", "err vs f64", "f32 noise", "ratio", "rule",
              "result", "detail")

    def rule(r: CheckResult) -> str:
        if r.calibration is not None:
            return f"<= {tolerances.NOISE_MULTIPLE:g}x noise"
        return f"{r.kind} {r.tolerance:g}" if r.kind != "count" else "all agree"

    def figures(r: CheckResult) -> Tuple[str, str, str]:
        c = r.calibration
        return ("-", "-", "-") if c is None else (f"{c.error:.2e}", f"{c.noise:.2e}", f"{c.ratio:.2f}")

    rows = [header] + [
        (r.name, f"{r.max_abs:.3e}", f"{r.max_rel:.3e}", "-" if r.cosine is None else f"{r.cosine:.8f}",
         *figures(r), rule(r), "PASS" if r.passed else "FAIL", r.detail)
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [title] if title else []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m parity check",
        description="Compare the MindSpore and PyTorch twins: forward, gradients, BN statistics, "
                    "optimizer steps, loss, LR schedule, preprocessing. Exits 1 on any FAIL.")
    parser.add_argument("--width", type=float_in(*WIDTH_RANGE, low_open=True), default=1.0,
                        help="width multiplier (default 1.0)")
    parser.add_argument("--image-size", type=int_in(*IMAGE_SIZE_RANGE), default=224, help="input size in pixels (default 224)")
    parser.add_argument("--num-classes", type=int_in(*CLASSES_RANGE), default=26, help="classes (default 26)")
    parser.add_argument("--batch", type=int_in(*BATCH_RANGE), default=4, help="batch size (default 4)")
    parser.add_argument("--mode", choices=("graph", "pynative"), default="graph", help="MindSpore mode (default graph)")
    parser.add_argument("--steps", type=int_in(1, 10_000), default=5, help="optimizer steps compared (default 5)")
    parser.add_argument("--seed", type=int_in(*SEED_RANGE), default=0, help="random seed (default 0)")
    parser.add_argument("--fast-conv", choices=("off", "auto", "on"), default="off",
                        help="MindSpore twin's own CPU 3x3 kernels (default off: MindSpore's nn.Conv2d)")
    parser.add_argument("--weights", type=Path, metavar="CHECKPOINT",
                        help="compare the twins on this checkpoint (.pth, .ckpt, .safetensors, any layout) instead "
                             "of random weights; its width and class count replace --width and --num-classes "
                             "(a backbone-only checkpoint gets the twin's own head)")
    parser.add_argument("--all", action="store_true", help="run the covering set of cases of tests/parity instead")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # every value range-checked: bad input is one line, exit 2
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    cases = COVERING_CASES if args.all else (Case(args.width, args.image_size, args.num_classes, args.batch,
                                                  args.mode, args.steps, args.seed, args.fast_conv),)
    if args.weights is not None:
        from parity.core.converter import ConversionError

        if args.all:
            print("error: --weights: compares one checkpoint; leave out --all", file=sys.stderr)
            return 2
        try:
            cases = (case_for_weights(replace(cases[0], weights=str(args.weights))),)
        except ConversionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    all_passed = True
    for index, case in enumerate(cases):
        start = time.perf_counter()
        results = run_case(case, include_case_free=index == 0)
        seconds = time.perf_counter() - start
        print(format_table(results, f"MobileNetV2 twins, {case.label} ({seconds:.0f} s)"))
        print()
        all_passed &= all(r.passed for r in results)
    print("PASS" if all_passed else "FAIL")
    return 0 if all_passed else 1
