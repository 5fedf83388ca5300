"""Checkpoints like the ones people have, made here: for the parity tests and the noise-floor measurements.

- `sample_state(...)`: the PyTorch twin's own init (torchvision's), gamma and beta drawn at random as
  training leaves them, then BatchNorm statistics calibrated on data (smooth random images: every
  layer's running mean and variance are the statistics of its input). `extreme=True` adds what real
  checkpoints hold and random ones lack: in every BatchNorm a few channels whose input barely varies
  (their convolution weights scaled by 1e-2 before calibrating), so running_var lands near 1e-4, with
  a large gamma (5-20): BatchNorm multiplies those channels by ~1000 to bring them back, and folding
  it into the convolution makes weights of very different scales meet.
- `perturb_block(state, block)`: one block's weights changed by 1% (random, relative), what a parity
  verdict must catch and name.
- `write_pth(state, path)`: a torchvision-layout `.pth` of plain tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

__all__ = ["sample_state", "perturb_block", "write_pth", "calibration_images"]


def calibration_images(count: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour fields with noise, normalised like photos (mean ~0, std ~1 per channel)."""
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64) / image_size
    images = np.empty((count, 3, image_size, image_size), np.float32)
    for i in range(count):
        for c in range(3):
            fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
            field = np.sin(2 * np.pi * fx * xx + phase) * np.cos(2 * np.pi * fy * yy - phase)
            images[i, c] = field + rng.uniform(-0.8, 0.8) + 0.3 * rng.standard_normal(field.shape)
    return images


def sample_state(width: float, num_classes: int = 26, seed: int = 0, image_size: int = 96,
                 extreme: bool = False) -> Dict[str, np.ndarray]:
    """A torchvision-layout state dict (numpy) of a calibrated MobileNetV2; see the module docstring."""
    import torch

    from pt_impl.mobilenetv2 import MobileNetV2

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = MobileNetV2(num_classes=num_classes, width_mult=width, dropout=0.0)
    pairs = []  # (convolution, the BatchNorm after it)
    last_conv = None
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            last_conv = module
        elif isinstance(module, torch.nn.BatchNorm2d):
            pairs.append((last_conv, module))
    with torch.no_grad():
        for conv, module in pairs:
            n = module.num_features
            module.weight.copy_(torch.from_numpy(rng.uniform(0.6, 1.4, n).astype(np.float32)))
            module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.3, n).astype(np.float32)))
            if extreme:
                picked = torch.from_numpy(rng.choice(n, size=max(1, n // 32), replace=False))
                conv.weight[picked] *= 1e-2
                module.weight[picked] = torch.from_numpy(rng.uniform(5.0, 20.0, len(picked)).astype(np.float32))
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
        net.train()
        for _ in range(2):
            net(torch.from_numpy(calibration_images(8, image_size, rng)))
        net.eval()
        for _, module in pairs:
            module.momentum = 0.1
        net.classifier[1].bias.copy_(torch.from_numpy(rng.normal(0.0, 0.1, num_classes).astype(np.float32)))
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def perturb_block(state: Dict[str, np.ndarray], block: int, fraction: float = 0.01,
                  seed: int = 0) -> Dict[str, np.ndarray]:
    """A copy of `state` whose stage `features.{block}` convolution weights each move by `fraction` (relative,
    random sign and size per element: a scale alone would vanish behind a training-mode BatchNorm)."""
    rng = np.random.default_rng(seed)
    prefix = f"features.{block}."
    changed = {}
    for key, value in state.items():
        if key.startswith(prefix) and value.ndim == 4:
            value = (value * (1.0 + fraction * rng.standard_normal(value.shape))).astype(value.dtype)
        changed[key] = value
    if changed.keys() != state.keys() or all(np.array_equal(changed[k], state[k]) for k in state):
        raise ValueError(f"no convolution weights under {prefix}")
    return changed


def write_pth(state: Dict[str, np.ndarray], path: Path) -> Path:
    import torch

    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, str(path))
    return Path(path)
