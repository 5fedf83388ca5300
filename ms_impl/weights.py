"""Weights in and out of the MindSpore twin: the one way to load a name->array dict into a Cell.

Mirrors `pt_impl/weights.py`. The dict uses the twin's own (ms-official)
names; `parity.core.converter` renames any other layout to them first.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from parity.core.converter import ConversionError, LoadResult, first_nonfinite, listing

__all__ = ["state_of", "load_into", "digest", "nonfinite_parameter"]


def state_of(net) -> Dict[str, np.ndarray]:
    """Every parameter of a MindSpore Cell (weights and BN moving statistics), by name."""
    return {param.name: param.asnumpy() for param in net.get_parameters()}


def load_into(net, tensors: Mapping[str, np.ndarray], strict: bool = True) -> LoadResult:
    """Copy `tensors` (MindSpore names) into `net`'s parameters, cast to each parameter's dtype.

    A shape mismatch always raises; with `strict`, so do missing or unexpected
    names. Without it they are returned (e.g. `dense.*` missing after loading a
    backbone-only checkpoint into a full net)."""
    import mindspore as ms

    params = {param.name: param for param in net.get_parameters()}
    missing = [name for name in params if name not in tensors]
    unexpected = [name for name in tensors if name not in params]
    if strict and (missing or unexpected):
        raise ConversionError(f"cannot load into {type(net).__name__}: missing {listing(missing) or 'none'}; "
                              f"unexpected {listing(unexpected) or 'none'}")
    for name, param in params.items():
        if name in tensors and tuple(np.shape(tensors[name])) != tuple(param.shape):
            raise ConversionError(f"tensor {name}: shape {tuple(np.shape(tensors[name]))} does not fit "
                                  f"{type(net).__name__}'s {tuple(param.shape)}")
    for name, param in params.items():
        if name in tensors:
            param.set_data(ms.Tensor(np.asarray(tensors[name]), dtype=param.dtype))  # cast to the parameter's dtype
    return LoadResult(missing, unexpected)


def digest(named_params: Iterable) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of parameters in name order: equal digests = identical weights.

    `named_params`: (name, parameter) pairs, e.g. `network.parameters_and_names()`;
    values may be MindSpore Parameters/Tensors or numpy arrays.
    """
    sha = hashlib.sha256()
    for name, value in sorted(((n, v) for n, v in named_params), key=lambda item: item[0]):
        array = np.ascontiguousarray(value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value))
        sha.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


def nonfinite_parameter(net) -> Optional[str]:
    """`name (k NaN, m Inf of n values)` of the Cell's first parameter holding NaN or Inf, else None."""
    return first_nonfinite((param.name, param.asnumpy()) for param in net.get_parameters())
