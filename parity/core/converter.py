"""Convert MobileNetV2 checkpoints between torchvision, ms-official and mindcv layouts.

Library: `read_checkpoint(path)` -> `Checkpoint` (numpy tensors, layout, width
and class count detected from names and shapes), `convert(ckpt, to_layout)`
(renames, never touches a value: round trips are bit-exact), and
`write_checkpoint(ckpt, path)` (atomic: temporary file in the same folder,
then `os.replace`). Formats by extension: `.pth`/`.pt` (PyTorch, read with
`weights_only=True`), `.ckpt` (MindSpore), `.safetensors` (any layout; the
layout is recorded in the file's metadata).

This is the framework-neutral core of the converter: it never imports a
twin. Loading into a network lives with each twin (`ms_impl.weights`,
`pt_impl.weights`); the CLI and `--verify`, which run both twins, live in
`parity.harness.convert_cli` (`python -m parity.convert`).

Only numpy is imported here at module import; torch, mindspore and
safetensors are imported inside the functions that need them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from parity.core import spec as mbv2_spec
from parity.core.errors import UserError
from parity.core.files import WriteError, atomic_path, one_line
from parity.core.layouts import (FRAMEWORK_OF_LAYOUT, LAYOUTS, TORCH_BN_COUNTER, TensorSlot, head_names,
                            tensor_table)

__all__ = [
    "LAYOUTS", "FRAMEWORK_OF_LAYOUT", "ConversionError", "Checkpoint", "LoadResult",
    "read_checkpoint", "checkpoint_from_state", "convert", "write_checkpoint", "listing", "format_of",
    "group_skipped", "first_nonfinite", "check_finite", "HALF_DTYPES",
]

PathLike = Union[str, "os.PathLike[str]"]

# File format by extension; each format accepts the layouts of its framework.
FORMAT_OF_EXTENSION: Dict[str, str] = {".pth": "torch", ".pt": "torch", ".ckpt": "mindspore",
                                       ".safetensors": "safetensors"}
LAYOUTS_OF_FORMAT: Dict[str, Tuple[str, ...]] = {
    "torch": ("torchvision",),
    "mindspore": ("ms-official", "mindcv"),
    "safetensors": LAYOUTS,
}
# Widths tried first when detecting the multiplier (the published ones); then a fine grid.
STANDARD_WIDTHS: Tuple[float, ...] = (1.0, 0.75, 0.5, 0.35, 1.4, 1.3, 0.25, 1.5, 2.0)
FINE_WIDTHS: Tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(2, 61))
# Training state that MindSpore's ModelCheckpoint / optimizers store next to the weights.
TRAINING_SCALARS = frozenset({
    "learning_rate", "global_step", "epoch_num", "step_num", "momentum", "weight_decay", "loss_scale",
    "scale_sense", "current_iterator_step", "last_overflow_iterator_step", "beta1_power", "beta2_power",
})
WRAPPER_KEYS = ("state_dict", "model")  # PyTorch files wrapping the state_dict
_SHOWN = 5  # how many names an error message lists


class ConversionError(UserError):
    """A checkpoint cannot be read, converted or written. `str(e)` is one line naming the file or tensor."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass
class Checkpoint:
    """Model tensors of one MobileNetV2 in one layout (numpy), with what was learned about them."""

    tensors: Dict[str, np.ndarray]  # model tensors only, in `layout` names, in network order
    layout: str
    width_mult: float
    num_classes: Optional[int]  # None = backbone only (no head)
    metadata: Dict[str, str] = field(default_factory=dict)  # e.g. num_batches_tracked, source
    skipped: List[str] = field(default_factory=list)  # non-model entries dropped on read
    # The file's dtype of tensors stored in half precision ("float16", "bfloat16"); numpy has no
    # bfloat16, so those arrays hold the (exact) float32 values. Written back only with keep_dtype.
    dtypes: Dict[str, str] = field(default_factory=dict)


class LoadResult(NamedTuple):
    missing: List[str]  # network tensors the dict did not provide
    unexpected: List[str]  # dict entries the network has no place for


# ---------------------------------------------------------------------------- helpers

def listing(names: Sequence[str], shown: int = _SHOWN) -> str:
    head = ", ".join(names[:shown])
    return head + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


def format_of(path: Path) -> str:
    fmt = FORMAT_OF_EXTENSION.get(path.suffix.lower())
    if fmt is None:
        raise ConversionError(f"{path}: unknown extension {path.suffix or '(none)'!r}; "
                              f"expected one of {', '.join(FORMAT_OF_EXTENSION)}")
    return fmt


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def group_skipped(names: Sequence[str]) -> str:
    """`moments.* (262), learning_rate, global_step`: optimizer state grouped by its prefix."""
    groups: Dict[str, int] = {}
    for name in names:
        key = name.split(".", 1)[0] + ".*" if "." in name else name
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{key} ({count})" if key.endswith(".*") else key for key, count in groups.items())


def first_nonfinite(named_arrays: Union[Mapping[str, np.ndarray], Iterable[Tuple[str, np.ndarray]]]) -> Optional[str]:
    """`name (k NaN, m Inf of n values)` for the first array holding NaN or Inf, else None.

    One vectorised pass per array (np.isfinite), so it is cheap enough to run on
    every load and after every training epoch.
    """
    items = named_arrays.items() if isinstance(named_arrays, Mapping) else named_arrays
    for name, value in items:
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all():
            continue
        nan = int(np.isnan(array).sum())
        return f"{name} ({nan} NaN, {int(array.size - nan - np.isfinite(array).sum())} Inf of {array.size} values)"
    return None


def check_finite(ckpt: "Checkpoint") -> None:
    """ConversionError naming the first tensor of `ckpt` that holds NaN or Inf."""
    bad = first_nonfinite(ckpt.tensors)
    if bad:
        raise ConversionError(f"{ckpt.metadata.get('source', 'checkpoint')}: tensor {bad}: the weights are not finite "
                              "(a diverged run?)")


# ---------------------------------------------------------------------------- reading

HALF_DTYPES = ("float16", "bfloat16")

def _read_torch(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str], List[str]]:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; each becomes one line
        raise ConversionError(f"{path}: cannot read as a PyTorch file ({one_line(exc)})") from exc
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: not a state_dict (found {type(obj).__name__})")
    tensors: Dict[str, np.ndarray] = {}
    skipped: List[str] = []
    dtypes: Dict[str, str] = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            skipped.append(str(name))
            continue
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
            dtypes[str(name)] = "bfloat16"
            value = value.float()
        elif value.dtype == torch.float16:
            dtypes[str(name)] = "float16"
        tensors[str(name)] = value.numpy()
    return tensors, _dtype_metadata(dtypes), skipped


def _dtype_metadata(dtypes: Mapping[str, str]) -> Dict[str, str]:
    # carried to checkpoint_from_state through the file metadata, under names no layout uses
    return {f"dtype:{name}": dtype for name, dtype in dtypes.items()}


def _read_mindspore(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str], List[str]]:
    import mindspore as ms

    try:
        params = ms.load_checkpoint(str(path))
    except Exception as exc:  # ValueError/RuntimeError for truncated or foreign files
        raise ConversionError(f"{path}: cannot read as a MindSpore checkpoint ({one_line(exc)})") from exc
    # A training checkpoint also holds non-tensor entries (the trainer's JSON train state): skipped, listed.
    tensors: Dict[str, np.ndarray] = {}
    dtypes: Dict[str, str] = {}
    for name, param in params.items():
        if not hasattr(param, "asnumpy"):
            continue
        if param.dtype == ms.bfloat16:
            dtypes[name] = "bfloat16"
            param = param.astype(ms.float32)
        elif param.dtype == ms.float16:
            dtypes[name] = "float16"
        tensors[name] = param.asnumpy()
    return tensors, _dtype_metadata(dtypes), [name for name in params if name not in tensors]


def _read_safetensors(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str], List[str]]:
    from safetensors import safe_open

    dtypes: Dict[str, str] = {}
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {}
            for name in handle.keys():
                kind = handle.get_slice(name).get_dtype()
                if kind == "BF16":  # numpy cannot hold it: read those through torch
                    dtypes[name] = "bfloat16"
                    continue
                if kind == "F16":
                    dtypes[name] = "float16"
                tensors[name] = handle.get_tensor(name)
        if any(kind == "bfloat16" for kind in dtypes.values()):
            with safe_open(str(path), framework="pt") as handle:
                for name, kind in dtypes.items():
                    if kind == "bfloat16":
                        tensors[name] = handle.get_tensor(name).float().numpy()
    except Exception as exc:  # SafetensorError and friends
        raise ConversionError(f"{path}: cannot read as a safetensors file ({one_line(exc)})") from exc
    return tensors, {**metadata, **_dtype_metadata(dtypes)}, []


_READERS: Dict[str, Callable[[Path], Tuple[Dict[str, np.ndarray], Dict[str, str], List[str]]]] = {
    "torch": _read_torch, "mindspore": _read_mindspore, "safetensors": _read_safetensors,
}


def read_checkpoint(path: PathLike, layout: Optional[str] = None) -> Checkpoint:
    """Read any supported file; detect layout (unless given), width multiplier and class count."""
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    tensors, file_metadata, skipped = _READERS[fmt](path)
    if layout is None and file_metadata.get("layout") in LAYOUTS:
        layout = file_metadata["layout"]
    if layout is not None:
        _check_layout(layout)
        if layout not in LAYOUTS_OF_FORMAT[fmt]:
            raise ConversionError(f"{path}: a {path.suffix} file cannot hold layout {layout!r}")
    candidates = LAYOUTS_OF_FORMAT[fmt] if layout is None else (layout,)
    metadata = {key: value for key, value in file_metadata.items() if key == TORCH_BN_COUNTER}
    ckpt = checkpoint_from_state(tensors, layout=layout, source=str(path), candidates=candidates)
    ckpt.metadata = {**metadata, **ckpt.metadata}
    ckpt.skipped = skipped + ckpt.skipped
    file_dtypes = {key[len("dtype:"):]: value for key, value in file_metadata.items() if key.startswith("dtype:")}
    ckpt.dtypes = _model_dtypes(file_dtypes, ckpt)
    return ckpt


def _model_dtypes(file_dtypes: Mapping[str, str], ckpt: "Checkpoint") -> Dict[str, str]:
    """The half-precision dtypes of the model tensors, under their names after wrapper prefixes were stripped."""
    found: Dict[str, str] = {}
    for name in ckpt.tensors:
        for file_name, dtype in file_dtypes.items():
            if dtype in HALF_DTYPES and (file_name == name or file_name.endswith("." + name)):
                found[name] = dtype
                break
    return found


# Prefixes that wrappers put before every key: DataParallel/DDP (`module.`), torch.compile
# (`_orig_mod.`), MindSpore's WithLossCell/TrainOneStepCell (`network.`), Lightning-style (`model.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "network.", "model.")


def _strip_wrapper_prefix(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    # A prefix shared by all keys is not part of the model; wrappers nest (DDP around a compiled module).
    stripped = True
    while stripped and tensors:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(name.startswith(prefix) for name in tensors):
                tensors = {name[len(prefix):]: value for name, value in tensors.items()}
                stripped = True
    return tensors


def _is_training_state(name: str, model_names: Iterable[str]) -> bool:
    """Optimizer moments (`moments.<param>`, `adam_m.<param>`, ...) and training scalars."""
    if name in TRAINING_SCALARS:
        return True
    _, _, rest = name.partition(".")
    return bool(rest) and rest in model_names


def checkpoint_from_state(
    tensors: Mapping[str, np.ndarray],
    layout: Optional[str] = None,
    source: str = "state",
    candidates: Sequence[str] = LAYOUTS,
) -> Checkpoint:
    """Build a `Checkpoint` from a flat name -> array dict (file contents, `state_from_*` output):
    drop training state, move `num_batches_tracked` to metadata, detect layout, width and classes."""
    tensors = {str(name): np.asarray(value) for name, value in tensors.items()}
    counters = {name: value for name, value in tensors.items() if name.endswith("." + TORCH_BN_COUNTER)}
    tensors = _strip_wrapper_prefix({name: value for name, value in tensors.items() if name not in counters})
    metadata: Dict[str, str] = {"source": source}
    if counters:
        metadata[TORCH_BN_COUNTER] = str(int(max(int(value) for value in counters.values())))
    if not tensors:
        raise ConversionError(f"{source}: contains no tensors")

    layout, skipped = _detect_layout(tensors, source, candidates if layout is None else (layout,))
    model = {name: value for name, value in tensors.items() if name not in skipped}
    weight_name, bias_name = head_names(layout)
    has_head = weight_name in model or bias_name in model
    if has_head and not (weight_name in model and bias_name in model):
        missing = bias_name if weight_name in model else weight_name
        raise ConversionError(f"{source}: classifier tensor {missing} is missing")
    num_classes = int(model[weight_name].shape[0]) if has_head else None
    width, slots = _detect_width(model, layout, num_classes, source)
    for slot in slots:
        array = model[slot.names[layout]]
        if not np.issubdtype(array.dtype, np.floating):
            raise ConversionError(f"{source}: tensor {slot.names[layout]} has dtype {array.dtype}, expected floating")
    ordered = {slot.names[layout]: model[slot.names[layout]] for slot in slots}
    return Checkpoint(ordered, layout, width, num_classes, metadata, sorted(skipped))


def _names_of(layout: str, with_head: bool) -> List[str]:
    # Names do not depend on the width multiplier; the 1.0x table gives them all.
    return [slot.names[layout] for slot in tensor_table(mbv2_spec.build_spec(1.0), 1 if with_head else None)]


def _detect_layout(tensors: Mapping[str, np.ndarray], source: str, candidates: Sequence[str]) -> Tuple[str, List[str]]:
    """The layout whose names cover every model key and every backbone tensor; else a one-line reason."""
    best: Optional[Tuple[int, str, List[str], List[str]]] = None  # (matched, layout, unmatched, missing)
    for layout in candidates:
        known = set(_names_of(layout, with_head=True))
        matched = [name for name in tensors if name in known]
        rest = [name for name in tensors if name not in known]
        skipped = [name for name in rest if _is_training_state(name, known)]
        unmatched = [name for name in rest if name not in skipped]
        missing = [name for name in _names_of(layout, with_head=False) if name not in tensors]
        if not unmatched and not missing:
            return layout, skipped
        if best is None or len(matched) > best[0]:
            best = (len(matched), layout, unmatched, missing)
    assert best is not None
    matched_count, layout, unmatched, missing = best
    tried = ", ".join(candidates)
    if matched_count == 0 or (unmatched and len(unmatched) >= matched_count):
        raise ConversionError(f"{source}: not a MobileNetV2 checkpoint: {len(unmatched)} keys match no layout "
                              f"(tried {tried}), first: {listing(unmatched)}")
    if unmatched:
        raise ConversionError(f"{source}: closest layout {layout} (tried {tried}) but {len(unmatched)} keys do not "
                              f"belong to it, first: {listing(unmatched)}")
    raise ConversionError(f"{source}: incomplete MobileNetV2 checkpoint in layout {layout}: {len(missing)} tensors "
                          f"missing, first: {listing(missing)}")


def _mismatches(model: Mapping[str, np.ndarray], slots: Sequence[TensorSlot], layout: str,
                ) -> List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]:
    return [(slot.names[layout], slot.shape, tuple(model[slot.names[layout]].shape))
            for slot in slots if tuple(model[slot.names[layout]].shape) != slot.shape]


def _detect_width(model: Mapping[str, np.ndarray], layout: str, num_classes: Optional[int], source: str,
                  ) -> Tuple[float, List[TensorSlot]]:
    """The first width multiplier (published ones first) whose every tensor shape matches."""
    closest: Optional[Tuple[int, float, List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]]] = None
    for width in STANDARD_WIDTHS + FINE_WIDTHS:
        slots = tensor_table(mbv2_spec.build_spec(width), num_classes)
        wrong = _mismatches(model, slots, layout)
        if not wrong:
            return width, slots
        if closest is None or len(wrong) < closest[0]:
            closest = (len(wrong), width, wrong)
    assert closest is not None
    _, width, wrong = closest
    name, expected, found = wrong[0]
    raise ConversionError(f"{source}: tensor {name} has shape {found}, expected {expected} "
                          f"(closest match: {width}x MobileNetV2, {len(wrong)} tensors differ)")


# ---------------------------------------------------------------------------- converting

def convert(ckpt: Checkpoint, to_layout: str, *, num_classes: Optional[int] = None, drop_head: bool = False,
            ) -> Checkpoint:
    """Rename every tensor into `to_layout`; values are shared, never changed.

    `num_classes` is a check: a value different from the checkpoint's fails
    (the head cannot be resized) unless `drop_head`, which returns the backbone only.
    """
    _check_layout(to_layout)
    _check_layout(ckpt.layout)
    if num_classes is not None and not drop_head and num_classes != ckpt.num_classes:
        have = "no classifier head" if ckpt.num_classes is None else f"{ckpt.num_classes} classes"
        raise ConversionError(f"{ckpt.metadata.get('source', 'checkpoint')}: has {have}, not {num_classes}; "
                              f"pass --drop-head (drop_head=True) to convert the backbone only")
    kept_classes = None if drop_head else ckpt.num_classes
    slots = tensor_table(mbv2_spec.build_spec(ckpt.width_mult), kept_classes)
    tensors: Dict[str, np.ndarray] = {}
    dtypes: Dict[str, str] = {}
    for slot in slots:
        name = slot.names[ckpt.layout]
        if name not in ckpt.tensors:
            raise ConversionError(f"{ckpt.metadata.get('source', 'checkpoint')}: tensor {name} is missing")
        tensors[slot.names[to_layout]] = ckpt.tensors[name]
        if name in ckpt.dtypes:
            dtypes[slot.names[to_layout]] = ckpt.dtypes[name]
    metadata = dict(ckpt.metadata)
    metadata["converted_from"] = ckpt.layout
    return Checkpoint(tensors, to_layout, ckpt.width_mult, kept_classes, metadata, list(ckpt.skipped), dtypes)


# ---------------------------------------------------------------------------- writing

def _torch_state(ckpt: Checkpoint) -> Dict[str, np.ndarray]:
    """torchvision order, with `num_batches_tracked` after each BatchNorm so strict loading accepts it."""
    counter = np.array(int(ckpt.metadata.get(TORCH_BN_COUNTER, "0")), dtype=np.int64)
    state: Dict[str, np.ndarray] = {}
    for name, value in ckpt.tensors.items():
        state[name] = value
        if name.endswith(".running_var"):
            state[name[: -len("running_var")] + TORCH_BN_COUNTER] = counter
    return state


def _write_torch(ckpt: Checkpoint, path: Path) -> None:
    import torch

    torch.save(_torch_tensors(ckpt, _torch_state(ckpt)), str(path))


def _torch_tensors(ckpt: Checkpoint, state: Mapping[str, np.ndarray]) -> Dict[str, object]:
    import torch

    tensors = {name: torch.tensor(value) for name, value in state.items()}
    for name, dtype in ckpt.dtypes.items():
        if dtype == "bfloat16":
            tensors[name] = tensors[name].to(torch.bfloat16)
    return tensors


def _write_mindspore(ckpt: Checkpoint, path: Path) -> None:
    import mindspore as ms

    def tensor(name: str, value: np.ndarray):
        return ms.Tensor(value, dtype=ms.bfloat16) if ckpt.dtypes.get(name) == "bfloat16" else ms.Tensor(value)

    ms.save_checkpoint([{"name": name, "data": tensor(name, value)} for name, value in ckpt.tensors.items()], str(path))


def _write_safetensors(ckpt: Checkpoint, path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = _torch_state(ckpt) if FRAMEWORK_OF_LAYOUT[ckpt.layout] == "torch" else dict(ckpt.tensors)
    metadata = {"layout": ckpt.layout, "width_mult": str(ckpt.width_mult),
                "num_classes": "none" if ckpt.num_classes is None else str(ckpt.num_classes)}
    if TORCH_BN_COUNTER in ckpt.metadata:
        metadata[TORCH_BN_COUNTER] = ckpt.metadata[TORCH_BN_COUNTER]
    if "bfloat16" in ckpt.dtypes.values():  # numpy cannot hold bfloat16: write through torch
        from safetensors.torch import save_file as save_torch_file

        save_torch_file({name: value.contiguous() for name, value in _torch_tensors(ckpt, tensors).items()}, str(path),
                        metadata=metadata)
        return
    save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()}, str(path), metadata=metadata)


_WRITERS: Dict[str, Callable[[Checkpoint, Path], None]] = {
    "torch": _write_torch, "mindspore": _write_mindspore, "safetensors": _write_safetensors,
}


def _with_dtypes(ckpt: Checkpoint, keep_dtype: bool) -> Checkpoint:
    """`ckpt` as it is written: half-precision tensors as float32 unless `keep_dtype`."""
    if keep_dtype:
        return ckpt
    tensors = {name: value.astype(np.float32) if value.dtype == np.float16 else value
               for name, value in ckpt.tensors.items()}
    return Checkpoint(tensors, ckpt.layout, ckpt.width_mult, ckpt.num_classes, dict(ckpt.metadata), list(ckpt.skipped))


def write_checkpoint(ckpt: Checkpoint, path: PathLike, *, force: bool = False, keep_dtype: bool = False,
                     before_replace: Optional[Callable[[Path], None]] = None) -> None:
    """Write `ckpt` in the format of `path`'s extension, atomically (`parity.core.files.atomic_path`).

    The file is written to a temporary name in the destination folder and
    renamed over `path` only when complete (and when `before_replace(temp)`,
    if given, returns without raising); on any failure nothing is left behind.
    Half-precision tensors (float16, bfloat16) are written as float32 unless
    `keep_dtype` (every supported format holds both).
    """
    path = Path(path)
    ckpt = _with_dtypes(ckpt, keep_dtype)
    fmt = format_of(path)
    _check_layout(ckpt.layout)
    if ckpt.layout not in LAYOUTS_OF_FORMAT[fmt]:
        allowed = ", ".join(ext for ext, f in FORMAT_OF_EXTENSION.items() if ckpt.layout in LAYOUTS_OF_FORMAT[f])
        raise ConversionError(f"{path}: a {path.suffix} file cannot hold layout {ckpt.layout!r}; use {allowed}")
    if path.exists() and not force:
        raise ConversionError(f"{path}: already exists; pass --force (force=True) to overwrite")
    try:
        with atomic_path(path, before_replace=before_replace) as temp:
            try:
                _WRITERS[fmt](ckpt, temp)
            except OSError:
                raise
            except Exception as exc:  # framework errors (MindSpore reports a full disk as RuntimeError)
                raise ConversionError(f"{path}: cannot write ({one_line(exc)})") from exc
    except WriteError as exc:
        raise ConversionError(str(exc)) from exc
