"""Weights in and out of the PyTorch twin: the one way to load a name->array dict into a Module.

Mirrors `ms_impl/weights.py`. The dict uses the twin's own (torchvision)
names; `parity.core.converter` renames any other layout to them first.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np

from parity.core.converter import ConversionError, LoadResult, first_nonfinite, listing
from parity.core.layouts import TORCH_BN_COUNTER

__all__ = ["state_of", "load_into", "nonfinite_parameter"]


def state_of(model) -> Dict[str, np.ndarray]:
    """The module's state_dict as numpy (including `num_batches_tracked`)."""
    return {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}


def load_into(model, tensors: Mapping[str, np.ndarray], strict: bool = True) -> LoadResult:
    """Copy `tensors` (torchvision names) into `model`, cast to each entry's dtype.

    `num_batches_tracked` buffers the dict lacks keep the module's values (they
    do not affect eval outputs). Shape mismatches always raise; missing or
    unexpected names raise with `strict`, else are returned."""
    import torch

    own = model.state_dict()
    missing = [name for name in own if name not in tensors and not name.endswith("." + TORCH_BN_COUNTER)]
    unexpected = [name for name in tensors if name not in own]
    if strict and (missing or unexpected):
        raise ConversionError(f"cannot load into {type(model).__name__}: missing {listing(missing) or 'none'}; "
                              f"unexpected {listing(unexpected) or 'none'}")
    state = {}
    for name, current in own.items():
        if name not in tensors:
            continue
        value = np.asarray(tensors[name])
        if tuple(value.shape) != tuple(current.shape):
            raise ConversionError(f"tensor {name}: shape {tuple(value.shape)} does not fit "
                                  f"{type(model).__name__}'s {tuple(current.shape)}")
        state[name] = torch.tensor(value).to(current.dtype)
    model.load_state_dict(state, strict=False)
    return LoadResult(missing, unexpected)


def nonfinite_parameter(model) -> Optional[str]:
    """`name (k NaN, m Inf of n values)` of the Module's first state entry holding NaN or Inf, else None."""
    return first_nonfinite((name, value.detach().cpu().numpy()) for name, value in model.state_dict().items())
