"""The float64 golden of the parity verdicts, and ReLU6 kinks handled instead of tolerated.

`float64_twin(pt_net)` is a copy of the PyTorch twin in float64, every ReLU6 replaced by
`KinkReLU6`: the same clamp, whose backward can follow given masks. A float32 run whose
pre-activation lies within rounding of a kink (0 or 6) may clip an element that exact
arithmetic passes, or the reverse; its gradient then differs from the float64 one by that
element's whole contribution, which is a branch decision, not a framework difference. So
gradients are compared with a golden computed in float64 along each side's own branch
decisions: its ReLU6 masks, captured from its own float32 pre-activations
(`torch_relu6_inputs`, `mindspore_relu6_inputs`). The number of elements whose mask differs
from the float64 one (`flipped`) is reported; each of them lies within the forward's
rounding of a kink, which the forward rows bound.

Stage ops (`torch_stage_ops`, `mindspore_stage_ops`): every conv, BatchNorm and ReLU6 of a
stage in order, named as torchvision names them inside the stage.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["float64_twin", "perturbed_twin", "PERTURBED_RUNS", "KinkReLU6", "use_masks", "torch_relu6_inputs", "mindspore_relu6_inputs", "masks_of",
           "flipped", "torch_stage_ops", "mindspore_stage_ops"]

Masks = Dict[str, np.ndarray]


def masks_of(pre_activations: Dict[str, np.ndarray]) -> Masks:
    """Where ReLU6 passes the gradient: 0 < x < 6 (the kink elements themselves pass none, as in both frameworks)."""
    return {name: (x > 0) & (x < 6) for name, x in pre_activations.items()}


def flipped(masks: Masks, golden_masks: Masks) -> int:
    """Elements whose mask differs from the float64 run's: pre-activations within rounding of a kink."""
    return int(sum(np.count_nonzero(masks[name] != golden_masks[name]) for name in masks if name in golden_masks))


def _kink_relu6_class():
    import torch

    class MaskedClamp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, mask):  # noqa: D401 - torch.autograd.Function protocol
            ctx.save_for_backward(mask)
            return x.clamp(0.0, 6.0)

        @staticmethod
        def backward(ctx, grad):
            (mask,) = ctx.saved_tensors
            return grad * mask, None

    class KinkReLU6(torch.nn.Module):
        """ReLU6 whose backward follows `mask` (a bool tensor) when one is set, else its own."""

        def __init__(self) -> None:
            super().__init__()
            self.mask: Optional[torch.Tensor] = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.mask is None:
                return torch.clamp(x, 0.0, 6.0)
            return MaskedClamp.apply(x, self.mask.to(x.dtype))

    return KinkReLU6


_KINK_RELU6 = None


def KinkReLU6():  # noqa: N802 - a class made on first use, so this module imports without torch
    global _KINK_RELU6
    if _KINK_RELU6 is None:
        _KINK_RELU6 = _kink_relu6_class()
    return _KINK_RELU6()


def float64_twin(pt_net):
    """A float64 copy of a PyTorch twin (or one of its stages), ReLU6 replaced by KinkReLU6."""
    import torch

    golden = copy.deepcopy(pt_net).double()
    for name, module in list(golden.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU6):
                setattr(module, child_name, KinkReLU6())
    return golden


PERTURBED_RUNS = 2  # perturbed copies of the golden behind each forward noise floor


def perturbed_twin(golden, seed: int):
    """A copy of a float64 twin whose every weight and BatchNorm statistic, and every convolution's, BatchNorm's
    and linear layer's output, is multiplied by (1 + u), u uniform in [-eps32, eps32] (one float32 ulp):
    the float32 rounding of each value and each op, modelled in exact arithmetic. Its spread around the
    golden is how far a float32 implementation may land from it in this net, whatever its summation order."""
    import torch

    eps = float(np.finfo(np.float32).eps)
    copy_ = copy.deepcopy(golden)
    generator = torch.Generator().manual_seed(seed)

    def jitter(tensor):
        return 1 + eps * (2 * torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) - 1)

    with torch.no_grad():
        for name, tensor in list(copy_.named_parameters()) + list(copy_.named_buffers()):
            if tensor.is_floating_point():
                tensor.mul_(jitter(tensor))
    for module in copy_.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)):
            module.register_forward_hook(lambda _module, _inputs, output: output * jitter(output))
    return copy_


@contextlib.contextmanager
def use_masks(net, masks: Optional[Masks], prefix: str = "") -> Iterator[None]:
    """The golden's ReLU6 backward follows `masks` (module path -> bool array) inside the block; names are
    `prefix` + the module's path in `net`. Every KinkReLU6 of `net` must have a mask; None: its own."""
    import torch

    kinks = {prefix + name: m for name, m in net.named_modules() if type(m).__name__ == "KinkReLU6"}
    if masks is not None and set(kinks) - set(masks):
        raise ValueError(f"no ReLU6 mask for {sorted(set(kinks) - set(masks))[:3]}")
    try:
        for name, module in kinks.items():
            module.mask = None if masks is None else torch.from_numpy(np.ascontiguousarray(masks[name]))
        yield
    finally:
        for module in kinks.values():
            module.mask = None


@contextlib.contextmanager
def torch_relu6_inputs(net, prefix: str = "") -> Iterator[Dict[str, np.ndarray]]:
    """Collects every ReLU6's input (pre-activation) of a PyTorch module's forward inside the block."""
    import torch

    found: Dict[str, np.ndarray] = {}
    handles = []
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.ReLU6) or type(module).__name__ == "KinkReLU6":
            def hook(_module, inputs, key=prefix + name):
                found[key] = inputs[0].detach().cpu().numpy().copy()  # before an in-place clamp
            handles.append(module.register_forward_pre_hook(hook))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def torch_stage_ops(stage) -> List[Tuple[str, object]]:
    """(name inside the stage, module) of every conv, BN and ReLU6 of a PyTorch twin's stage, in order."""
    import torch

    from pt_impl.mobilenetv2 import InvertedResidual

    children, prefix = (list(stage.conv), "conv.") if isinstance(stage, InvertedResidual) else ([stage], "")
    found = []
    for position, child in enumerate(children):
        if isinstance(child, torch.nn.Sequential):  # a ConvBNReLU
            leaf_prefix = f"{prefix}{position}." if prefix else ""
            found += [(f"{leaf_prefix}{j}", leaf) for j, leaf in enumerate(child)]
        else:
            found.append((f"{prefix}{position}", child))
    return found


def mindspore_stage_ops(stage) -> List[Tuple[str, object]]:
    """(name inside the stage, cell) of every conv, BN and ReLU6 of a MindSpore twin's stage, in order."""
    from ms_impl.mobilenetv2 import ConvBNReLU, InvertedResidual

    children, prefix = (([stage.conv[i] for i in range(len(stage.conv))], "conv.")
                        if isinstance(stage, InvertedResidual) else ([stage], ""))
    found = []
    for position, child in enumerate(children):
        if isinstance(child, ConvBNReLU):
            leaf_prefix = f"{prefix}{position}." if prefix else ""
            found += [(f"{leaf_prefix}{j}", child.features[j]) for j in range(len(child.features))]
        else:
            found.append((f"{prefix}{position}", child))
    return found


def mindspore_relu6_inputs(stages, first: int, x: np.ndarray, last: Optional[int] = None,
                           ) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Runs MindSpore stages `first`..`last` op by op from `x` in their current train/eval mode, returns
    ({"features.i.<op>": ReLU6 input}, the last stage's output). The BatchNorm moving statistics are put back:
    capturing must not count as a forward."""
    import mindspore as ms
    from mindspore import nn, ops

    last = first if last is None else last
    found: Dict[str, np.ndarray] = {}
    saved = {}
    for index in range(first, last + 1):
        for param in stages[index].get_parameters():
            if param.name.endswith(("moving_mean", "moving_variance")):
                saved[param.name] = (param, param.asnumpy().copy())
    try:
        activations = ms.Tensor(np.ascontiguousarray(x, dtype=np.float32))
        for index in range(first, last + 1):
            stage = stages[index]
            y = activations
            for name, op in mindspore_stage_ops(stage):
                if isinstance(op, nn.ReLU6):
                    found[f"features.{index}.{name}"] = y.asnumpy().copy()
                y = op(y)
            activations = activations + y if getattr(stage, "use_residual", False) else y
        return found, activations.asnumpy()
    finally:
        for param, value in saved.values():
            # in place: set_data would leave a compiled graph reading the moved statistics
            ops.assign(param, ms.Tensor(value))
