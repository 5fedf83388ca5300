"""`--verify`: run a checkpoint and its conversion in the two framework twins and compare their outputs.

Harness layer: builds both twins. Used by `python -m parity.convert --verify`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.core import tolerances
from parity.core.converter import FRAMEWORK_OF_LAYOUT, Checkpoint, ConversionError, convert
from parity.core.verdict import Calibrated, calibrated

__all__ = ["VerifyReport", "verify_conversion", "run_twin", "build_twin", "random_batch"]


@dataclass
class VerifyReport:
    max_abs: float
    max_rel: float  # max_abs / max |reference output|
    compared: str  # "logits", or "pooled features" for backbone-only checkpoints
    reference: str  # twin that ran the source, e.g. "mindspore (ms-official)"
    candidate: str  # twin that ran the result
    calibration: Calibrated  # each MindSpore side against the PyTorch twin in float64 (parity.core.verdict)

    @property
    def ok(self) -> bool:
        return self.calibration.passed

    def verdict_text(self) -> str:
        c = self.calibration
        return (f"error vs float64 {c.error:.3e} = {c.ratio:.2f} x the float32 noise {c.noise:.3e} "
                f"(limit {tolerances.NOISE_MULTIPLE:g}x)")


def build_twin(framework: str, ckpt: Checkpoint, dropout: float = 0.0):
    """The `framework` twin ("torch" or "mindspore") loaded with `ckpt` (renamed to that twin's layout), eval mode.

    A backbone-only checkpoint gives the backbone alone; `dropout` is the head's."""
    layout = "torchvision" if framework == "torch" else "ms-official"
    tensors = convert(ckpt, layout).tensors
    if framework == "torch":
        from pt_impl import mobilenetv2 as pt_model
        from pt_impl import weights as pt_weights

        net = (pt_model.MobileNetV2Backbone(ckpt.width_mult) if ckpt.num_classes is None
               else pt_model.MobileNetV2(ckpt.num_classes, ckpt.width_mult, dropout=dropout))
        pt_weights.load_into(net, tensors, strict=True)
        return net.eval()
    from ms_impl import mobilenetv2 as ms_model
    from ms_impl import weights as ms_weights

    net = (ms_model.MobileNetV2Backbone(ckpt.width_mult) if ckpt.num_classes is None
           else ms_model.MobileNetV2(ckpt.num_classes, ckpt.width_mult, dropout=dropout))
    ms_weights.load_into(net, tensors, strict=True)
    net.set_train(False)
    return net


def run_twin(framework: str, ckpt: Checkpoint, batch: np.ndarray, float64: bool = False) -> np.ndarray:
    """Eval-mode output of the `framework` twin loaded with `ckpt` (renamed to that twin's layout).
    `float64`: the PyTorch twin in float64, the golden of the verdicts."""
    net = build_twin(framework, ckpt)
    if framework == "torch":
        import torch

        if float64:
            net = net.double()
            batch = batch.astype(np.float64)
        with torch.no_grad():
            output = net(torch.from_numpy(batch)).numpy()
    else:
        import mindspore as ms

        output = net(ms.Tensor(batch)).asnumpy()
    # Backbone only: compare what a head would see, the globally pooled features.
    return output if ckpt.num_classes is not None else output.mean(axis=(2, 3))


def random_batch(batch_size: int, image_size: int, seed: int = 0) -> np.ndarray:
    """Noise plus a per-image colour offset: pure noise images pool to nearly the same features."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch_size, 3, image_size, image_size))
            + rng.uniform(-1.0, 1.0, (batch_size, 3, 1, 1))).astype(np.float32)


def verify_conversion(source: Checkpoint, result: Checkpoint, *, batch_size: int = 2, image_size: int = 224,
                      seed: int = 0) -> VerifyReport:
    """Run the source in its framework's twin and the result in the OTHER framework's twin, same batch.

    When both layouts belong to one framework (ms-official <-> mindcv), the
    result is still run by the other framework's twin (renamed in memory), so
    every conversion is checked across frameworks."""
    if result.num_classes is None and source.num_classes is not None:
        source = convert(source, source.layout, drop_head=True)  # a backbone-only result: compare features
    source_framework = FRAMEWORK_OF_LAYOUT[source.layout]
    other = "mindspore" if source_framework == "torch" else "torch"
    batch = random_batch(batch_size, image_size, seed)
    expected = run_twin(source_framework, source, batch)
    found = run_twin(other, result, batch)
    if expected.shape != found.shape:
        raise ConversionError(f"verify: output shapes differ: {expected.shape} vs {found.shape}")
    max_abs = float(np.max(np.abs(expected.astype(np.float64) - found)))
    max_rel = max_abs / max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
    # The golden and the noise floor come from the source's weights: the result must compute the same thing.
    golden = run_twin("torch", source, batch, float64=True)
    noise = expected if source_framework == "torch" else run_twin("torch", source, batch)
    verdict = calibrated(found, noise, golden)
    if source_framework != "torch":  # the MindSpore twin ran the source: held to the golden as well
        verdict = _worse(verdict, calibrated(expected, noise, golden))
    return VerifyReport(max_abs, max_rel, "pooled features" if result.num_classes is None else "logits",
                        f"{source_framework} twin with the source ({source.layout})",
                        f"{other} twin with the result ({result.layout})", verdict)


def _worse(first: Calibrated, second: Calibrated) -> Calibrated:
    worst = max((first, second), key=lambda c: (not c.passed, c.ratio))
    return Calibrated(worst.error, worst.noise, first.passed and second.passed, worst.where)
