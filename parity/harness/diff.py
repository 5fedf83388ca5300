"""`python -m parity diff REFERENCE CANDIDATE`: the first layer where two checkpoints, or two frameworks, part ways.

Each checkpoint runs in a twin (its own framework's by default; the same file
twice runs once in each framework), both twins get the same input, and the
outputs are compared stage by stage: `features.0` ... `features.18`, `pool`
and `logits` (with `--per-op`, every convolution, BatchNorm and ReLU6 inside
the stages as well). The twins are built from one spec (`parity.core.spec`),
so their stages line up by construction: the stages are run one by one here,
and no parameter is renamed or wrapped.

`--mode train` runs a training-mode forward (batch statistics) and compares
the stage outputs, then each parameter's gradient. Gradients are compared
stage by stage: both sides' stage i get the reference's input to stage i and
the reference's gradient of the loss with respect to stage i's output, so a
difference in stage 7 shows in stage 7's gradients and nowhere else (in one
end-to-end backward it would reach every earlier stage too).

Verdicts: across frameworks each row is judged against the PyTorch twin in float64 on the
reference's weights: the candidate's error (and a MindSpore reference's) must be within
NOISE_MULTIPLE x the float32 PyTorch twin's own error, the noise floor (parity.core.verdict);
gradients are compared along each side's own ReLU6 masks (parity.harness.golden). Within one
framework rows must be bit-exact. `--atol/--rtol` replace both with a direct rule.

Exit 0 when every row is within tolerance, 1 when one is not, 2 for bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from parity.core import tolerances
from parity.core.converter import FRAMEWORK_OF_LAYOUT, Checkpoint, ConversionError, convert, read_checkpoint
from parity.core.difference import WITHIN_REL, Difference, difference
from parity.core.files import WriteError, atomic_path, atomic_write_text
from parity.core.layouts import name_map
from parity.core.verdict import Calibrated, calibrated, calibrated_tensors, within_noise
from parity.harness.command import (BATCH_RANGE, IMAGE_SIZE_RANGE, SEED_RANGE, OneLineErrorParser, float_in, int_in,
                                    path_argument, run_command)
from parity.harness.golden import (PERTURBED_RUNS, flipped, float64_twin, masks_of, mindspore_relu6_inputs,
                                   mindspore_stage_ops, perturbed_twin, torch_relu6_inputs, torch_stage_ops, use_masks)
from parity.harness.verify import build_twin, random_batch

__all__ = ["Row", "Side", "DiffReport", "Options", "diff_checkpoints", "format_report", "plot_report", "main"]

FRAMEWORK_OF_OPTION = {"pt": "torch", "ms": "mindspore"}
TWIN_NAME = {"torch": "PyTorch", "mindspore": "MindSpore"}
LABEL_SMOOTHING = 0.1  # the trainer's loss, for `--mode train`
HEAD_STAGE = "classifier"  # the stage name of the head's parameters in gradient rows
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


# ----------------------------------------------------------------------------- rows and report

@dataclass
class Row:
    """One compared output (a stage, an op, `pool`, `logits`, `loss`) or one stage's gradients."""

    name: str
    stage: str  # the stage it belongs to: features.i, pool, logits, loss or classifier
    kind: str  # "output" or "gradient"
    shape: Tuple[int, ...]
    figures: Difference
    atol: float
    rtol: float
    passed: bool
    detail: str = ""
    calibration: Optional[Calibrated] = None  # cross-framework rows: judged against the float64 golden

    def judge(self, verdict: Calibrated) -> None:
        """The row's verdict becomes the float64-calibrated one (the direct difference stays as figures)."""
        self.calibration, self.passed = verdict, verdict.passed

    def as_json(self) -> Dict[str, object]:
        def number(value: float) -> Optional[float]:
            return value if math.isfinite(value) else None  # JSON has no inf / nan

        result = {"name": self.name, "stage": self.stage, "kind": self.kind, "shape": list(self.shape),
                  "max_abs": number(self.figures.max_abs), "max_rel": number(self.figures.max_rel),
                  "cosine": number(self.figures.cosine), "within_1e-3": number(self.figures.within),
                  "atol": self.atol, "rtol": self.rtol, "pass": self.passed}
        if self.calibration is not None:
            c = self.calibration
            result.update({"error_vs_float64": number(c.error), "float32_noise": number(c.noise),
                           "noise_ratio": number(c.ratio), "noise_multiple": tolerances.NOISE_MULTIPLE})
        return result


def compare_row(name: str, stage: str, kind: str, reference: np.ndarray, candidate: np.ndarray, atol: float,
                rtol: float, floor: float = 0.0) -> Row:
    """Pass when max |candidate - reference| <= atol + rtol * max |reference| (floored at `floor`)."""
    figures = difference(reference, candidate, floor)
    passed = bool(math.isfinite(figures.max_abs) and figures.max_abs <= atol + rtol * figures.scale)
    return Row(name, stage, kind, tuple(np.shape(reference)), figures, atol, rtol, passed)


def stage_gradient_row(name: str, stage: str, rows: Sequence[Row], reference: Sequence[np.ndarray],
                       candidate: Sequence[np.ndarray]) -> Row:
    """One row for a stage's parameter gradients (`rows`, one per tensor): max abs and max rel diff are the
    worst tensor's, the row passes when every tensor does; cosine and the share within 1e-3 are those of
    the stage's gradients as one vector (a gradient that is zero in exact arithmetic is rounding noise
    on both sides, and its own cosine says nothing)."""
    worst = max(rows, key=lambda r: (not r.passed, r.figures.max_rel))
    whole = difference(np.concatenate([np.ravel(g) for g in reference]),
                       np.concatenate([np.ravel(g) for g in candidate]))
    figures = Difference(max(r.figures.max_abs for r in rows), max(r.figures.max_rel for r in rows),
                         whole.cosine, whole.within, max(r.figures.scale for r in rows))
    worst_tensor = worst.name[:-len(" (grad)")] if worst.name.endswith(" (grad)") else worst.name
    return Row(name, stage, "gradient", (sum(int(np.prod(r.shape)) for r in rows),), figures, worst.atol,
               worst.rtol, all(r.passed for r in rows), f"{len(rows)} tensors, worst {worst_tensor}")


@dataclass
class Side:
    """One checkpoint and the twin that runs it."""

    path: str
    ckpt: Checkpoint
    framework: str  # "torch" or "mindspore"

    @property
    def label(self) -> str:
        classes = "backbone only" if self.ckpt.num_classes is None else f"{self.ckpt.num_classes} classes"
        return (f"{self.path} ({self.ckpt.layout}, {self.ckpt.width_mult}x, {classes}) "
                f"in the {TWIN_NAME[self.framework]} twin")

    def as_json(self) -> Dict[str, object]:
        return {"path": self.path, "twin": self.framework, "layout": self.ckpt.layout,
                "width_mult": self.ckpt.width_mult, "num_classes": self.ckpt.num_classes}


@dataclass
class DiffReport:
    reference: Side
    candidate: Side
    mode: str
    input: str  # what both twins were fed
    rows: List[Row] = field(default_factory=list)
    stopped: Optional[str] = None  # where the two models' shapes stopped agreeing
    notes: List[str] = field(default_factory=list)

    @property
    def first_divergent(self) -> Optional[str]:
        return next((r.name for r in self.rows if not r.passed), None)

    @property
    def first_divergent_gradient(self) -> Optional[str]:
        return next((r.name for r in self.rows if r.kind == "gradient" and not r.passed), None)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def as_json(self) -> Dict[str, object]:
        result: Dict[str, object] = {
            "reference": self.reference.as_json(), "candidate": self.candidate.as_json(), "mode": self.mode,
            "input": self.input, "rows": [r.as_json() for r in self.rows], "first_divergent": self.first_divergent,
        }
        if self.mode == "train":
            result["first_divergent_gradient"] = self.first_divergent_gradient
        result["stopped"] = self.stopped
        result["notes"] = list(self.notes)
        return result


@dataclass(frozen=True)
class Options:
    mode: str = "eval"  # "eval" or "train"
    per_op: bool = False
    atol: Optional[float] = None  # None: the tolerance of parity.core.tolerances for the row's kind
    rtol: Optional[float] = None
    seed: int = 0


# ----------------------------------------------------------------------------- running one twin stage by stage

class TorchStages:
    """The PyTorch twin, run stage by stage (and op by op) with every output kept.

    `float64`: the twin in float64, ReLU6 backward along given masks: the golden of the verdicts;
    `perturb_seed`: that golden with every value and op output moved by up to one float32 ulp."""

    framework = "torch"

    def __init__(self, ckpt: Checkpoint, float64: bool = False, perturb_seed: Optional[int] = None) -> None:
        import torch

        self.torch = torch
        self.ckpt = ckpt
        self.net = build_twin("torch", ckpt, dropout=0.0)
        self.dtype = np.float64 if float64 else np.float32
        if float64:
            self.net = float64_twin(self.net)
            if perturb_seed is not None:
                self.net = perturbed_twin(self.net, perturb_seed)
        self.stages = list(self.net.features)
        self.head = getattr(self.net, "classifier", None)

    def _tensor(self, array: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(array, dtype=self.dtype))

    def ops(self, index: int) -> List[Tuple[str, object]]:
        """(name inside the stage, module) of every conv, BN and ReLU6, in order; names as torchvision's."""
        return torch_stage_ops(self.stages[index])

    def set_train(self, train: bool) -> None:
        self.net.train(train)

    def forward(self, batch: np.ndarray, per_op: bool) -> List[Tuple[str, np.ndarray]]:
        torch = self.torch
        outputs: List[Tuple[str, np.ndarray]] = []
        with torch.no_grad():
            x = self._tensor(batch)
            for index, stage in enumerate(self.stages):
                if per_op:
                    y = x
                    for name, op in self.ops(index):
                        y = op(y)
                        outputs.append((f"features.{index}.{name}", y.numpy().copy()))  # copy: ReLU6 is in place
                    x = x + y if getattr(stage, "use_residual", False) else y
                else:
                    x = stage(x)
                outputs.append((f"features.{index}", x.numpy().copy()))
            pooled = torch.mean(x, (2, 3))
            outputs.append(("pool", pooled.numpy().copy()))
            if self.head is not None:
                outputs.append(("logits", self.head(pooled).numpy().copy()))
        return outputs

    def head_backward(self, features: np.ndarray, target: np.ndarray,
                      ) -> Tuple[np.ndarray, Dict[str, np.ndarray], float]:
        """Loss of the head on `features`: (gradient w.r.t. features, head parameter gradients, loss).

        `target`: class labels (int) with a head; without one, a fixed projection of the pooled features."""
        torch = self.torch
        x = self._tensor(features).requires_grad_(True)
        pooled = torch.mean(x, (2, 3))
        if self.head is None:
            loss = (pooled * self._tensor(target)).sum()
            params: Dict[str, object] = {}
        else:
            from pt_impl import loss as pt_loss

            self.head.zero_grad(set_to_none=True)
            loss = pt_loss.smoothed_cross_entropy(LABEL_SMOOTHING)(self.head(pooled),
                                                                    torch.from_numpy(target.astype(np.int64)))
            params = {f"classifier.{n}": p for n, p in self.head.named_parameters()}
        loss.backward()
        return x.grad.numpy(), {n: p.grad.numpy().copy() for n, p in params.items()}, float(loss.item())

    def stage_backward(self, index: int, stage_input: np.ndarray, upstream: np.ndarray,
                       masks: Optional[Dict[str, np.ndarray]] = None,
                       ) -> Tuple[np.ndarray, Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """Stage `index` on `stage_input`, backward from `upstream`: (input gradient, parameter gradients, the
        ReLU6 inputs of its forward). `masks`: the float64 twin's ReLU6 backward follows them."""
        stage = self.stages[index]
        stage.zero_grad(set_to_none=True)
        prefix = f"features.{index}."
        x = self._tensor(stage_input.copy()).requires_grad_(True)
        with use_masks(stage, masks, prefix), torch_relu6_inputs(stage, prefix) as pre_activations:
            (stage(x) * self._tensor(upstream)).sum().backward()
        grads = {f"features.{index}.{n}": p.grad.numpy().copy() for n, p in stage.named_parameters()}
        return x.grad.numpy(), grads, pre_activations


class MindSporeStages:
    """The MindSpore twin (PyNative), run stage by stage (and op by op) with every output kept."""

    framework = "mindspore"

    def __init__(self, ckpt: Checkpoint) -> None:
        import mindspore as ms

        self.ms = ms
        self.ckpt = ckpt
        self.net = build_twin("mindspore", ckpt, dropout=0.0)
        features = self.net.features if ckpt.num_classes is None else self.net.backbone.features
        self.stages = [features[i] for i in range(len(features))]
        self.head = None if ckpt.num_classes is None else self.net.head.dense
        # Gradients come back in MindSpore names; rows use torchvision's, like the forward rows.
        self.torch_name = name_map("ms-official", "torchvision", ckpt.width_mult, ckpt.num_classes)

    def ops(self, index: int) -> List[Tuple[str, object]]:
        """(name inside the stage, cell) of every conv, BN and ReLU6, in order; names as torchvision's."""
        return mindspore_stage_ops(self.stages[index])

    def set_train(self, train: bool) -> None:
        self.net.set_train(train)

    def forward(self, batch: np.ndarray, per_op: bool) -> List[Tuple[str, np.ndarray]]:
        ms = self.ms
        outputs: List[Tuple[str, np.ndarray]] = []
        x = ms.Tensor(batch)
        for index, stage in enumerate(self.stages):
            if per_op:
                y = x
                for name, op in self.ops(index):
                    y = op(y)
                    outputs.append((f"features.{index}.{name}", y.asnumpy()))
                x = x + y if getattr(stage, "use_residual", False) else y
            else:
                x = stage(x)
            outputs.append((f"features.{index}", x.asnumpy()))
        pooled = ms.ops.mean(x, (2, 3))
        outputs.append(("pool", pooled.asnumpy()))
        if self.head is not None:
            outputs.append(("logits", self.head(pooled).asnumpy()))
        return outputs

    def head_backward(self, features: np.ndarray, target: np.ndarray,
                      ) -> Tuple[np.ndarray, Dict[str, np.ndarray], float]:
        ms = self.ms
        head = self.head
        if head is None:
            projection = ms.Tensor(target)

            def loss_of(x):
                return (ms.ops.mean(x, (2, 3)) * projection).sum()

            loss, input_grad = ms.value_and_grad(loss_of, grad_position=0)(ms.Tensor(features))
            return input_grad.asnumpy(), {}, float(loss.asnumpy())
        from ms_impl import loss as ms_loss

        criterion = ms_loss.smoothed_cross_entropy(LABEL_SMOOTHING)
        labels = ms.Tensor(target.astype(np.int32))
        params = head.trainable_params()

        def head_loss(x):
            return criterion(head(ms.ops.mean(x, (2, 3))), labels)

        loss, (input_grad, param_grads) = ms.value_and_grad(head_loss, grad_position=0, weights=params)(
            ms.Tensor(features))
        grads = {self.torch_name[p.name]: g.asnumpy() for p, g in zip(params, param_grads)}
        return input_grad.asnumpy(), grads, float(loss.asnumpy())

    def stage_backward(self, index: int, stage_input: np.ndarray, upstream: np.ndarray,
                       ) -> Tuple[np.ndarray, Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        ms = self.ms
        stage = self.stages[index]
        weights = ms.Tensor(upstream)
        params = stage.trainable_params()

        def weighted_output(x):
            return (stage(x) * weights).sum()

        input_grad, param_grads = ms.grad(weighted_output, grad_position=0, weights=params)(ms.Tensor(stage_input))
        pre_activations = mindspore_relu6_inputs(self.stages, index, stage_input)[0]
        return (input_grad.asnumpy(), {self.torch_name[p.name]: g.asnumpy() for p, g in zip(params, param_grads)},
                pre_activations)


def twin_stages(side: Side):
    return TorchStages(side.ckpt) if side.framework == "torch" else MindSporeStages(side.ckpt)


# ----------------------------------------------------------------------------- comparing

def default_tolerance(kind: str, mode: str, cross_framework: bool) -> Tuple[float, float]:
    """(atol, rtol) of the direct rule: bit-exact within one framework. Rows across frameworks are judged
    against float64 instead (`_Golden`), or by --atol/--rtol, whose missing half is then 0."""
    return 0.0, (0.0 if cross_framework else tolerances.STAGE_SAME_FRAMEWORK_REL)


def _stage_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "features" else parts[0]


def _both(first: Calibrated, second: Optional[Calibrated]) -> Calibrated:
    """One verdict for two judged sides: both must pass; the figures are the worse side's."""
    if second is None:
        return first
    worst = max((first, second), key=lambda c: (not c.passed, c.ratio))
    return Calibrated(worst.error, worst.noise, first.passed and second.passed, worst.where)


class _Golden:
    """The float64 golden of the cross-framework rows and their noise floor (parity.core.verdict).

    Golden: the PyTorch twin in float64 with the reference's weights. Noise floor: the PyTorch twin in float32
    with the same weights (the reference itself when it runs in PyTorch). The candidate is judged against
    the golden, and so is a reference that runs in MindSpore: each framework's twin is held to the float32
    noise of PyTorch's."""

    def __init__(self, reference: Side, ref_twin) -> None:
        self.twin = TorchStages(reference.ckpt, float64=True)
        self.reference_is_noise = ref_twin.framework == "torch"
        self.noise_twin = ref_twin if self.reference_is_noise else TorchStages(reference.ckpt)
        self.on_ref: Dict[str, np.ndarray] = {}
        self.on_cand: Dict[str, np.ndarray] = {}
        self.noise: Dict[str, np.ndarray] = {}
        self.perturbed: List[Dict[str, np.ndarray]] = []
        self.ms_flips = self.pt_flips = 0

    def forward(self, ref_input: np.ndarray, cand_input: np.ndarray, train: bool, per_op: bool,
                ref_outputs: Dict[str, np.ndarray]) -> None:
        self.twin.set_train(train)
        self.on_ref = dict(self.twin.forward(ref_input, per_op))
        self.on_cand = self.on_ref if cand_input is ref_input else dict(self.twin.forward(cand_input, per_op))
        self.perturbed = []
        for seed in range(PERTURBED_RUNS):
            twin = TorchStages(self.twin.ckpt, float64=True, perturb_seed=seed)
            twin.set_train(train)
            self.perturbed.append(dict(twin.forward(ref_input, per_op)))
        if self.reference_is_noise:
            self.noise = ref_outputs
        else:
            self.noise_twin.set_train(train)
            self.noise = dict(self.noise_twin.forward(ref_input, per_op))

    def judge_output(self, name: str, ref_value: np.ndarray, cand_value: np.ndarray) -> Calibrated:
        perturbed = [run[name] for run in self.perturbed]
        candidate = calibrated(cand_value, self.noise[name], self.on_cand[name], self.on_ref[name], perturbed)
        reference = (None if self.reference_is_noise
                     else calibrated(ref_value, self.noise[name], self.on_ref[name], perturbed=perturbed))
        return _both(candidate, reference)

    def judge_loss(self, ref_loss: float, cand_loss: float, features_name: str, target: np.ndarray) -> Calibrated:
        golden_loss = self.twin.head_backward(self.on_ref[features_name], target)[2]
        noise_loss = self.noise_twin.head_backward(self.noise[features_name], target)[2]
        perturbed = [np.float64(self.twin.head_backward(run[features_name], target)[2]) for run in self.perturbed]
        candidate = calibrated(np.float64(cand_loss), np.float64(noise_loss), np.float64(golden_loss),
                               perturbed=perturbed)
        reference = (None if self.reference_is_noise
                     else calibrated(np.float64(ref_loss), np.float64(noise_loss), np.float64(golden_loss),
                                     perturbed=perturbed))
        return _both(candidate, reference)

    def head_gradients(self, features: np.ndarray, target: np.ndarray, ref_grads: Dict[str, np.ndarray],
                       ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """(golden, noise) gradients of the head's parameters: no ReLU6 there, one golden for both sides."""
        golden = self.twin.head_backward(features, target)[1]
        noise = ref_grads if self.reference_is_noise else self.noise_twin.head_backward(features, target)[1]
        return golden, noise

    def stage_gradients(self, index: int, stage_input: np.ndarray, upstream: np.ndarray,
                        ref: Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], str],
                        cand: Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], str]) -> Dict[str, object]:
        """Stage `index`'s golden gradients along each side's ReLU6 masks, and the noise floor's gradients.
        `ref`, `cand`: (gradients, ReLU6 inputs, framework) of each side."""
        if self.reference_is_noise:
            noise_grads, noise_pre = ref[0], ref[1]
        else:
            _, noise_grads, noise_pre = self.noise_twin.stage_backward(index, stage_input, upstream)
        _, golden_noise, golden_pre = self.twin.stage_backward(index, stage_input, upstream, masks_of(noise_pre))
        golden_masks = masks_of(golden_pre)
        found: Dict[str, object] = {"noise": noise_grads, "golden_noise": golden_noise}
        for key, (grads, pre, framework) in (("cand", cand), ("ref", ref)):
            if key == "ref" and self.reference_is_noise:
                continue
            found[f"golden_{key}"] = self.twin.stage_backward(index, stage_input, upstream, masks_of(pre))[1]
        for _, pre, framework in {ref[2]: ref, cand[2]: cand}.values():
            count = flipped(masks_of(pre), golden_masks)
            if framework == "mindspore":
                self.ms_flips += count
            else:
                self.pt_flips += count
        return found

    def judge_gradients(self, ref_grads: Dict[str, np.ndarray], cand_grads: Dict[str, np.ndarray],
                        goldens: Dict[str, object], floor: float) -> Calibrated:
        candidate = calibrated_tensors(cand_grads, goldens["noise"], goldens["golden_cand"],
                                       golden_for_reference=goldens["golden_noise"], floor=floor)
        reference = None if self.reference_is_noise else calibrated_tensors(
            ref_grads, goldens["noise"], goldens["golden_ref"], golden_for_reference=goldens["golden_noise"],
            floor=floor)
        return _both(candidate, reference)


def diff_checkpoints(reference: Side, candidate: Side, batch: Tuple[np.ndarray, np.ndarray], options: Options,
                     input_label: str = "") -> DiffReport:
    """Compare the two sides on `batch` (reference's input, candidate's input: the same array unless each
    twin preprocessed an image itself). Rows across frameworks are judged against the float64 golden
    (unless --atol/--rtol set a direct rule); rows within one framework must be bit-exact."""
    cross = reference.framework != candidate.framework
    report = DiffReport(reference, candidate, options.mode, input_label)

    def tolerance(kind: str) -> Tuple[float, float]:
        atol, rtol = default_tolerance(kind, options.mode, cross)
        return (atol if options.atol is None else options.atol), (rtol if options.rtol is None else options.rtol)

    ref_input, cand_input = batch
    if ref_input is not cand_input:
        report.rows.append(compare_row("input", "input", "output", ref_input, cand_input,
                                       tolerances.PREPROCESS_ABS if options.atol is None else options.atol,
                                       0.0 if options.rtol is None else options.rtol))
    ref_twin, cand_twin = twin_stages(reference), twin_stages(candidate)
    golden = _Golden(reference, ref_twin) if cross and options.atol is None and options.rtol is None else None
    train = options.mode == "train"
    ref_twin.set_train(train)
    cand_twin.set_train(train)
    ref_outputs = ref_twin.forward(ref_input, options.per_op)
    cand_outputs = dict(cand_twin.forward(cand_input, options.per_op))
    if golden is not None:
        golden.forward(ref_input, cand_input, train, options.per_op, dict(ref_outputs))
        report.notes.append(f"across frameworks each row is judged against the PyTorch twin in float64: error <= "
                            f"{tolerances.NOISE_MULTIPLE:g} x the float32 PyTorch twin's own error (noise floor)")
    atol, rtol = tolerance("output")
    for name, ref_value in ref_outputs:
        if name not in cand_outputs:  # logits of a backbone-only candidate
            report.notes.append(f"{name} not compared: the candidate has no classifier head")
            break
        cand_value = cand_outputs[name]
        if ref_value.shape != cand_value.shape:
            report.stopped = f"{name}: shapes {tuple(ref_value.shape)} and {tuple(cand_value.shape)} differ"
            break
        row = compare_row(name, _stage_of(name), "output", ref_value, cand_value, atol, rtol)
        if golden is not None:
            row.judge(golden.judge_output(name, ref_value, cand_value))
        report.rows.append(row)
    else:
        if "logits" in cand_outputs and ref_twin.head is None:
            report.notes.append("logits not compared: the reference has no classifier head")
    if ref_twin.head is None and cand_twin.head is None:
        report.notes.append("logits not compared: backbone-only checkpoints")
    if train:
        if report.stopped is not None and not report.stopped.startswith("logits"):
            report.notes.append("gradients not compared: the backbones' shapes differ")
        else:
            _compare_gradients(report, ref_twin, cand_twin, dict(ref_outputs), cand_outputs, ref_input, options,
                               tolerance("gradient"), golden)
    return report


def _compare_gradients(report: DiffReport, ref_twin, cand_twin, ref_outputs: Dict[str, np.ndarray],
                       cand_outputs: Dict[str, np.ndarray], ref_input: np.ndarray, options: Options,
                       tolerance: Tuple[float, float], golden: Optional[_Golden]) -> None:
    """Stage by stage from the loss down, each side fed the reference's stage input and upstream gradient."""
    rng = np.random.default_rng(options.seed + 1)
    features_name = f"features.{len(ref_twin.stages) - 1}"
    features = ref_outputs[features_name]
    if ref_twin.head is not None:
        target = rng.integers(0, ref_twin.ckpt.num_classes, features.shape[0])
        what = f"smoothed cross entropy ({LABEL_SMOOTHING}) on labels {target.tolist()}"
    else:
        target = rng.standard_normal((features.shape[0], features.shape[1])).astype(np.float32)
        what = "a fixed random projection of the pooled features (no classifier head)"
    upstream, ref_grads, ref_loss = ref_twin.head_backward(features, target)
    heads_match = (ref_twin.head is not None and cand_twin.head is not None
                   and ref_twin.ckpt.num_classes == cand_twin.ckpt.num_classes)
    cand_grads: Dict[str, np.ndarray] = {}
    goldens: Dict[str, Dict[str, object]] = {}
    if heads_match or (ref_twin.head is None and cand_twin.head is None):
        _, cand_grads, _ = cand_twin.head_backward(features, target)
        # The loss row is each side's own forward, like the other output rows.
        cand_loss = cand_twin.head_backward(cand_outputs[features_name], target)[2]
        row = compare_row("loss", "loss", "output", np.float64(ref_loss), np.float64(cand_loss),
                          0.0, tolerances.LOSS_REL if options.rtol is None else options.rtol)
        if golden is not None:
            row.judge(golden.judge_loss(ref_loss, cand_loss, features_name, target))
            head_golden, head_noise = golden.head_gradients(features, target, ref_grads)
            goldens[HEAD_STAGE] = {"noise": head_noise, "golden_noise": head_golden, "golden_cand": head_golden,
                                   "golden_ref": head_golden}
        report.rows.append(row)
    else:
        report.notes.append("classifier gradients not compared: the heads differ")
    grad_rows: List[Row] = []
    stage_grads: List[Tuple[str, Dict[str, np.ndarray], Dict[str, np.ndarray]]] = [(HEAD_STAGE, ref_grads, cand_grads)]
    for index in reversed(range(len(ref_twin.stages))):
        stage_input = ref_input if index == 0 else ref_outputs[f"features.{index - 1}"]
        next_upstream, ref_stage_grads, ref_pre = ref_twin.stage_backward(index, stage_input, upstream)
        _, cand_stage_grads, cand_pre = cand_twin.stage_backward(index, stage_input, upstream)
        stage = f"features.{index}"
        stage_grads.append((stage, ref_stage_grads, cand_stage_grads))
        if golden is not None:
            goldens[stage] = golden.stage_gradients(index, stage_input, upstream,
                                                    (ref_stage_grads, ref_pre, ref_twin.framework),
                                                    (cand_stage_grads, cand_pre, cand_twin.framework))
        upstream = next_upstream
    largest = max((float(np.max(np.abs(g))) for _, grads, _ in stage_grads for g in grads.values()), default=0.0)
    floor = tolerances.GRAD_FLOOR * largest
    atol, rtol = tolerance
    for stage, ref_stage_grads, cand_stage_grads in reversed(stage_grads):  # network order: input to output
        if not cand_stage_grads:
            continue
        rows = [compare_row(name, stage, "gradient", ref_stage_grads[name], cand_stage_grads[name],
                            atol, rtol, floor) for name in ref_stage_grads]
        stage_verdict = None
        if golden is not None:
            stage_verdict = golden.judge_gradients(ref_stage_grads, cand_stage_grads, goldens[stage], floor)
            for row in rows:  # each tensor against the stage's noise floor: one small tensor's max is no floor
                only = {key: {row.name: value[row.name]} for key, value in goldens[stage].items()}
                error = golden.judge_gradients({row.name: ref_stage_grads[row.name]},
                                               {row.name: cand_stage_grads[row.name]}, only, floor).error
                row.judge(Calibrated(error, stage_verdict.noise, within_noise(error, stage_verdict.noise)))
        for row in rows:
            row.name += " (grad)"
        if options.per_op:
            grad_rows += rows
            continue
        stage_row = stage_gradient_row(f"{stage} (grad)", stage, rows, list(ref_stage_grads.values()),
                                       [cand_stage_grads[name] for name in ref_stage_grads])
        if stage_verdict is not None:
            stage_row.judge(stage_verdict)
        grad_rows.append(stage_row)
    report.rows += grad_rows
    report.notes.append(f"gradients of {what}; each stage fed the reference's input and upstream gradient; "
                        f"scales floored at {tolerances.GRAD_FLOOR:g} x the largest gradient ({largest:.3g})")
    if golden is not None:
        report.notes.append(f"ReLU6 kinks: {golden.ms_flips} MindSpore / {golden.pt_flips} PyTorch elements fell on "
                            f"the other side of 0 or 6 than in float64; each side's gradients are compared with "
                            f"float64 along its own masks")


def _model_text(ckpt: Checkpoint) -> str:
    classes = "backbone only" if ckpt.num_classes is None else f"{ckpt.num_classes} classes"
    return f"{ckpt.width_mult}x, {classes}"


# ----------------------------------------------------------------------------- output

def _format_value(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else str(value)


def _rule(row: Row) -> str:
    if row.calibration is not None:
        return f"<= {tolerances.NOISE_MULTIPLE:g}x noise"
    return f"{row.atol:g} + {row.rtol:g} x max|ref|" if row.atol else f"rel {row.rtol:g}"


def format_report(report: DiffReport) -> str:
    lines = [f"reference: {report.reference.label}", f"candidate: {report.candidate.label}",
             f"mode: {report.mode}; input: {report.input}", ""]
    header = ("", "row", "shape", "max abs diff", "max rel diff", "cosine", f"within {WITHIN_REL:g}", "err vs f64",
              "f32 noise", "ratio", "rule", "result")
    first = report.first_divergent
    first_gradient = report.first_divergent_gradient
    table = [header]
    for row in report.rows:
        marker = ">>" if row.name in (first, first_gradient) else ""
        c = row.calibration
        verdict = (("-", "-", "-") if c is None else
                   (_format_value(c.error, ".2e"), _format_value(c.noise, ".2e"), _format_value(c.ratio, ".2f")))
        table.append((marker, row.name, "x".join(str(n) for n in row.shape) or "scalar",
                      _format_value(row.figures.max_abs, ".3e"), _format_value(row.figures.max_rel, ".3e"),
                      _format_value(row.figures.cosine, ".8f"), _format_value(100 * row.figures.within, ".2f") + "%",
                      *verdict, _rule(row), "PASS" if row.passed else "FAIL"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for index, cells in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    for row in report.rows:
        if row.detail and not row.passed:
            lines.append(f"{row.name}: {row.detail}")
    lines += [f"note: {note}" for note in report.notes]
    lines.append(conclusion(report))
    return "\n".join(lines)


def _row_figures(row: Row) -> str:
    text = f"max rel diff {row.figures.max_rel:.3e}, cosine {row.figures.cosine:.6f}"
    if row.calibration is not None:
        c = row.calibration
        return (f"error vs float64 {c.error:.3e}, {_format_value(c.ratio, '.1f')} x the float32 noise {c.noise:.3e}, "
                f"limit {tolerances.NOISE_MULTIPLE:g}x; {text}")
    return f"{text}, tolerance rel {row.rtol:g}"


def conclusion(report: DiffReport) -> str:
    """The last line of the report: the first divergent row, or that all agree."""
    if report.first_divergent is None and report.stopped:
        return f"no divergence in the {len(report.rows)} rows compared; stopped at {report.stopped}"
    if report.first_divergent is None:
        return f"all stages agree: {len(report.rows)} rows within tolerance"
    row = next(r for r in report.rows if r.name == report.first_divergent)
    text = f"first divergence: {row.name} ({_row_figures(row)})"
    if report.first_divergent_gradient and report.first_divergent_gradient != row.name:
        gradient = next(r for r in report.rows if r.name == report.first_divergent_gradient)
        text += f"; first failing gradient: {gradient.stage} ({gradient.detail or gradient.name})"
    if report.stopped:
        text += f"; stopped at {report.stopped}"
    return text


def plot_report(report: DiffReport, path: Path) -> None:
    """Max relative difference per row on a log scale, tolerance and first divergence marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs = [r for r in report.rows if r.kind == "output" and r.name not in ("input", "loss")]
    gradients = [r for r in report.rows if r.kind == "gradient"]
    tiny = 1e-12  # exact zeros would vanish from a log axis
    figure, axis = plt.subplots(figsize=(10, 4.2), dpi=90)
    series = [("outputs", outputs, "tab:blue")] + ([("gradients", gradients, "tab:orange")] if gradients else [])
    stage_names = [r.name for r in outputs]
    for label, rows, colour in series:
        xs = list(range(len(rows))) if label == "outputs" else [
            stage_names.index(r.stage) if r.stage in stage_names else len(stage_names) - 1 for r in rows]
        calibrated_rows = bool(rows) and all(r.calibration is not None for r in rows)

        def figure_of(r: Row) -> float:
            value = r.calibration.error if calibrated_rows else r.figures.max_rel
            return max(value, tiny) if math.isfinite(value) else 1.0

        ys = [figure_of(r) for r in rows]
        what = "error vs float64" if calibrated_rows else "max rel diff"
        axis.semilogy(xs, ys, marker="o", markersize=3, color=colour, label=f"{what}, {label}")
        failed = [(x, y) for x, y, r in zip(xs, ys, rows) if not r.passed]
        if failed:
            axis.scatter(*zip(*failed), s=36, facecolors="none", edgecolors="red", zorder=3)
        if rows and calibrated_rows:
            axis.semilogy(xs, [max(r.calibration.limit, tiny) for r in rows], color=colour, linestyle="--",
                          linewidth=1, alpha=0.7, label=f"limit, {label} ({tolerances.NOISE_MULTIPLE:g}x float32 noise)")
        elif rows:
            axis.axhline(rows[0].rtol, color=colour, linestyle="--", linewidth=1, alpha=0.7,
                         label=f"tolerance, {label} (rel {rows[0].rtol:g})")
    first = next((r for r in outputs if not r.passed), None)
    if first is not None:
        axis.axvline(stage_names.index(first.name), color="red", linewidth=1,
                     label=f"first divergence: {first.name}")
    step = max(1, len(stage_names) // 40)
    axis.set_xticks(range(0, len(stage_names), step))
    axis.set_xticklabels([n.replace("features.", "f.") for n in stage_names[::step]], rotation=90, fontsize=7)
    axis.set_ylabel("relative error (log)")
    axis.set_title(f"{Path(report.reference.path).name} ({TWIN_NAME[report.reference.framework]}) vs "
                   f"{Path(report.candidate.path).name} ({TWIN_NAME[report.candidate.framework]}), {report.mode}",
                   fontsize=9)
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    try:
        with atomic_path(path) as temp:
            figure.savefig(temp, format=path.suffix.lstrip(".").lower())
    finally:
        plt.close(figure)


# ----------------------------------------------------------------------------- command line

def _path(text: str) -> Path:
    return Path(path_argument(text))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m parity diff",
        description="Run two MobileNetV2 checkpoints (or one checkpoint in both frameworks) on the same input and "
                    "name the first stage where their outputs part ways. Exit 0 if every row is within "
                    "tolerance, 1 if one is not, 2 for bad input.")
    parser.add_argument("reference", type=_path, help="reference checkpoint (.pth, .pt, .ckpt, .safetensors)")
    parser.add_argument("candidate", type=_path, help="candidate checkpoint; the same file twice compares the "
                                                     "two frameworks on identical weights")
    parser.add_argument("--framework", choices=tuple(FRAMEWORK_OF_OPTION),
                        help="run both checkpoints in this twin (default: each in its own framework's twin)")
    parser.add_argument("--mode", choices=("eval", "train"), default="eval",
                        help="eval: inference forward; train: training-mode forward and per-stage gradients "
                             "(default eval)")
    parser.add_argument("--per-op", action="store_true", help="also compare every conv, BatchNorm and ReLU6")
    parser.add_argument("--image", type=_path, metavar="PATH", help="an image, preprocessed by each twin's own eval pipeline "
                                                   "(default: a random batch)")
    parser.add_argument("--batch", type=int_in(*BATCH_RANGE), default=2, metavar="N", help="random batch size (default 2)")
    parser.add_argument("--image-size", type=int_in(*IMAGE_SIZE_RANGE), default=224, metavar="PX", help="input side in pixels (default 224)")
    parser.add_argument("--seed", type=int_in(*SEED_RANGE), default=0, help="seed of the random batch and labels (default 0)")
    parser.add_argument("--atol", type=float_in(0.0),
                        help="a direct rule instead of the float64 verdict: absolute tolerance of every row "
                             "(default 0 when --rtol is given)")
    parser.add_argument("--rtol", type=float_in(0.0),
                        help="a direct rule instead of the float64 verdict: tolerance relative to the row's "
                             "max |reference| (default 0 when --atol is given)")
    parser.add_argument("--json", type=_path, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--plot", type=_path, metavar="FILE.png", help="draw the per-stage error (log scale)")
    parser.add_argument("--force", action="store_true", help="overwrite existing --json / --plot files")
    return parser


def _check_output(path: Optional[Path], option: str, force: bool) -> None:
    if path is None:
        return
    if path.is_dir():
        raise ConversionError(f"{option} {path}: is a folder")
    if path.exists() and not force:
        raise ConversionError(f"{option} {path}: already exists; pass --force to overwrite")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConversionError(f"{option} {path}: folder {folder} does not exist")


def _sides(args: argparse.Namespace) -> Tuple[Side, Side]:
    reference = read_checkpoint(args.reference)
    candidate = read_checkpoint(args.candidate)
    if args.framework is not None:
        ref_framework = cand_framework = FRAMEWORK_OF_OPTION[args.framework]
    else:
        ref_framework = FRAMEWORK_OF_LAYOUT[reference.layout]
        cand_framework = FRAMEWORK_OF_LAYOUT[candidate.layout]
        if os.path.samefile(args.reference, args.candidate):  # one file: each framework runs it once
            cand_framework = "mindspore" if ref_framework == "torch" else "torch"
    return Side(str(args.reference), reference, ref_framework), Side(str(args.candidate), candidate, cand_framework)


def _inputs(args: argparse.Namespace, reference: Side, candidate: Side) -> Tuple[Tuple[np.ndarray, np.ndarray], str]:
    if args.image is None:
        batch = random_batch(args.batch, args.image_size, args.seed)
        return (batch, batch), f"random batch {args.batch}x3x{args.image_size}x{args.image_size}, seed {args.seed}"
    from ms_impl.trainer.images import unreadable_reason
    from parity.harness.compare import ms_preprocess, pt_preprocess

    if not args.image.is_file():
        raise ConversionError(f"--image {args.image}: no such file")
    reason = unreadable_reason(args.image)
    if reason:
        raise ConversionError(f"--image {args.image}: not a readable image ({reason})")
    data = args.image.read_bytes()
    # Each twin's own eval pipeline; a side run in both frameworks' twins gets both pipelines.
    pipeline = {"torch": lambda: pt_preprocess([data], args.image_size)[0],
                "mindspore": lambda: ms_preprocess([data], args.image_size)[0]}
    ref_input = np.asarray(pipeline[reference.framework](), dtype=np.float32)[None]
    cand_input = (ref_input if candidate.framework == reference.framework
                  else np.asarray(pipeline[candidate.framework](), dtype=np.float32)[None])
    return (ref_input, cand_input), f"{args.image}, {args.image_size} px eval pipeline of each twin"


def use_cpu_pynative() -> None:
    # Stage-by-stage runs call each cell on its own: PyNative, and CPU, which needs no device.
    import mindspore as ms

    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)


def run(args: argparse.Namespace) -> int:
    _check_output(args.json, "--json", args.force)
    _check_output(args.plot, "--plot", args.force)
    if args.plot is not None and args.plot.suffix.lower() not in PLOT_SUFFIXES:
        raise ConversionError(f"--plot {args.plot}: unknown image format; use {', '.join(PLOT_SUFFIXES)}")
    reference, candidate = _sides(args)
    if "mindspore" in (reference.framework, candidate.framework):
        use_cpu_pynative()
    batch, input_label = _inputs(args, reference, candidate)
    options = Options(args.mode, args.per_op, args.atol, args.rtol, args.seed)
    report = diff_checkpoints(reference, candidate, batch, options, input_label)
    print(format_report(report))
    try:
        if args.json is not None:
            atomic_write_text(args.json, json.dumps(report.as_json(), indent=2) + "\n")
        if args.plot is not None:
            plot_report(report, args.plot)
    except WriteError as exc:
        raise ConversionError(str(exc)) from exc
    if not report.passed:
        return 1
    if report.stopped is not None:
        # Nothing failed where the shapes agree, but the two are not the same model.
        compared = f"compared up to {report.rows[-1].name}" if report.rows else "nothing compared"
        print(f"error: {args.candidate}: a {_model_text(candidate.ckpt)} model, the reference a "
              f"{_model_text(reference.ckpt)} one: {compared}, stopped at {report.stopped}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(build_parser(), run, argv)


def first_divergence_line(source: Checkpoint, result: Checkpoint, image_size: int, seed: int = 0,
                          batch_size: int = 2) -> str:
    """For `convert --verify`: the source in its twin vs the result in the other twin, stage by stage."""
    if result.num_classes is None and source.num_classes is not None:
        source = convert(source, source.layout, drop_head=True)
    source_framework = FRAMEWORK_OF_LAYOUT[source.layout]
    other = "mindspore" if source_framework == "torch" else "torch"
    batch = random_batch(batch_size, image_size, seed)
    report = diff_checkpoints(Side("source", source, source_framework), Side("result", result, other),
                              (batch, batch), Options(seed=seed), f"random batch, seed {seed}")
    return conclusion(report)
