"""Convert MobileNetV2 checkpoints between torchvision, ms-official and mindcv layouts.

Library: `read_checkpoint(path)` -> `Checkpoint` (numpy tensors, layout, width
and class count detected from names and shapes), `convert(ckpt, to_layout)`
(renames, never touches a value: round trips are bit-exact), and
`write_checkpoint(ckpt, path)` (atomic: temporary file in the same folder,
then `os.replace`). Formats by extension: `.pth`/`.pt` (PyTorch, read with
`weights_only=True`), `.ckpt` (MindSpore), `.safetensors` (any layout; the
layout is recorded in the file's metadata).

CLI (`python -m parity.convert SRC DST ...`, console script `mbv2-convert`):
exit 0 on success, 2 on bad input or usage (one-line message, nothing
written), 1 when `--verify` finds the twins disagree (nothing written).

Only numpy is imported here at module import; torch, mindspore and
safetensors are imported inside the functions that need them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

if not __package__:  # run as a file (`python parity/x.py`): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parity import spec as mbv2_spec
from parity import tolerances
from parity.layouts import (FRAMEWORK_OF_LAYOUT, LAYOUTS, TORCH_BN_COUNTER, TensorSlot, head_names,
                            tensor_table)

__all__ = [
    "LAYOUTS", "FRAMEWORK_OF_LAYOUT", "ConversionError", "Checkpoint", "LoadResult", "VerifyReport",
    "read_checkpoint", "checkpoint_from_state", "convert", "write_checkpoint",
    "state_from_ms_net", "load_into_ms_net", "state_from_torch_module", "load_into_torch_module",
    "verify_conversion", "main",
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


class ConversionError(Exception):
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


class LoadResult(NamedTuple):
    missing: List[str]  # network tensors the dict did not provide
    unexpected: List[str]  # dict entries the network has no place for


# ---------------------------------------------------------------------------- helpers

def _listing(names: Sequence[str], shown: int = _SHOWN) -> str:
    head = ", ".join(names[:shown])
    return head + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:limit]}"


def _format_of(path: Path) -> str:
    fmt = FORMAT_OF_EXTENSION.get(path.suffix.lower())
    if fmt is None:
        raise ConversionError(f"{path}: unknown extension {path.suffix or '(none)'!r}; "
                              f"expected one of {', '.join(FORMAT_OF_EXTENSION)}")
    return fmt


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def _group_skipped(names: Sequence[str]) -> str:
    """`moments.* (262), learning_rate, global_step`: optimizer state grouped by its prefix."""
    groups: Dict[str, int] = {}
    for name in names:
        key = name.split(".", 1)[0] + ".*" if "." in name else name
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{key} ({count})" if key.endswith(".*") else key for key, count in groups.items())


# ---------------------------------------------------------------------------- reading

def _read_torch(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str], List[str]]:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; each becomes one line
        raise ConversionError(f"{path}: cannot read as a PyTorch file ({_one_line(exc)})") from exc
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: not a state_dict (found {type(obj).__name__})")
    tensors: Dict[str, np.ndarray] = {}
    skipped: List[str] = []
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            skipped.append(str(name))
            continue
        if value.dtype == torch.bfloat16:
            raise ConversionError(f"{path}: tensor {name} is bfloat16, which numpy cannot hold; cast it first")
        tensors[str(name)] = value.detach().cpu().numpy()
    return tensors, {}, skipped


def _read_mindspore(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str], List[str]]:
    import mindspore as ms

    try:
        params = ms.load_checkpoint(str(path))
    except Exception as exc:  # ValueError/RuntimeError for truncated or foreign files
        raise ConversionError(f"{path}: cannot read as a MindSpore checkpoint ({_one_line(exc)})") from exc
    # A training checkpoint also holds non-tensor entries (the trainer's JSON train state): skipped, listed.
    tensors = {name: param.asnumpy() for name, param in params.items() if hasattr(param, "asnumpy")}
    return tensors, {}, [name for name in params if name not in tensors]


def _read_safetensors(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, str], List[str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # SafetensorError and friends
        raise ConversionError(f"{path}: cannot read as a safetensors file ({_one_line(exc)})") from exc
    return tensors, metadata, []


_READERS: Dict[str, Callable[[Path], Tuple[Dict[str, np.ndarray], Dict[str, str], List[str]]]] = {
    "torch": _read_torch, "mindspore": _read_mindspore, "safetensors": _read_safetensors,
}


def read_checkpoint(path: PathLike, layout: Optional[str] = None) -> Checkpoint:
    """Read any supported file; detect layout (unless given), width multiplier and class count."""
    path = Path(path)
    fmt = _format_of(path)
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
    return ckpt


def _strip_wrapper_prefix(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    # DataParallel / wrapper cells prefix every key; a prefix shared by all keys is not part of the model.
    for prefix in ("module.", "network.", "model."):
        if tensors and all(name.startswith(prefix) for name in tensors):
            return {name[len(prefix):]: value for name, value in tensors.items()}
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
                              f"(tried {tried}), first: {_listing(unmatched)}")
    if unmatched:
        raise ConversionError(f"{source}: closest layout {layout} (tried {tried}) but {len(unmatched)} keys do not "
                              f"belong to it, first: {_listing(unmatched)}")
    raise ConversionError(f"{source}: incomplete MobileNetV2 checkpoint in layout {layout}: {len(missing)} tensors "
                          f"missing, first: {_listing(missing)}")


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
    for slot in slots:
        name = slot.names[ckpt.layout]
        if name not in ckpt.tensors:
            raise ConversionError(f"{ckpt.metadata.get('source', 'checkpoint')}: tensor {name} is missing")
        tensors[slot.names[to_layout]] = ckpt.tensors[name]
    metadata = dict(ckpt.metadata)
    metadata["converted_from"] = ckpt.layout
    return Checkpoint(tensors, to_layout, ckpt.width_mult, kept_classes, metadata, list(ckpt.skipped))


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

    torch.save({name: torch.tensor(value) for name, value in _torch_state(ckpt).items()}, str(path))


def _write_mindspore(ckpt: Checkpoint, path: Path) -> None:
    import mindspore as ms

    ms.save_checkpoint([{"name": name, "data": ms.Tensor(value)} for name, value in ckpt.tensors.items()], str(path))


def _write_safetensors(ckpt: Checkpoint, path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = _torch_state(ckpt) if FRAMEWORK_OF_LAYOUT[ckpt.layout] == "torch" else dict(ckpt.tensors)
    metadata = {"layout": ckpt.layout, "width_mult": str(ckpt.width_mult),
                "num_classes": "none" if ckpt.num_classes is None else str(ckpt.num_classes)}
    if TORCH_BN_COUNTER in ckpt.metadata:
        metadata[TORCH_BN_COUNTER] = ckpt.metadata[TORCH_BN_COUNTER]
    save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()}, str(path), metadata=metadata)


_WRITERS: Dict[str, Callable[[Checkpoint, Path], None]] = {
    "torch": _write_torch, "mindspore": _write_mindspore, "safetensors": _write_safetensors,
}


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_checkpoint(ckpt: Checkpoint, path: PathLike, *, force: bool = False,
                     before_replace: Optional[Callable[[Path], None]] = None) -> None:
    """Write `ckpt` in the format of `path`'s extension, atomically.

    The file is written to a temporary name in the destination folder and
    renamed over `path` only when complete (and when `before_replace(temp)`,
    if given, returns without raising); on any failure nothing is left behind.
    """
    path = Path(path)
    fmt = _format_of(path)
    _check_layout(ckpt.layout)
    if ckpt.layout not in LAYOUTS_OF_FORMAT[fmt]:
        allowed = ", ".join(ext for ext, f in FORMAT_OF_EXTENSION.items() if ckpt.layout in LAYOUTS_OF_FORMAT[f])
        raise ConversionError(f"{path}: a {path.suffix} file cannot hold layout {ckpt.layout!r}; use {allowed}")
    if path.exists() and not force:
        raise ConversionError(f"{path}: already exists; pass --force (force=True) to overwrite")
    if not path.parent.is_dir():
        raise ConversionError(f"{path}: folder {path.parent} does not exist")
    # Same folder (so os.replace is atomic) and same suffix (MindSpore appends .ckpt otherwise).
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=str(path.parent))
    os.close(handle)
    temp = Path(temp_name)
    try:
        try:
            _WRITERS[fmt](ckpt, temp)
        except Exception as exc:  # disk full, permissions, framework errors
            raise ConversionError(f"{path}: cannot write ({_one_line(exc)})") from exc
        if before_replace is not None:
            before_replace(temp)
        os.chmod(temp, _default_file_mode())  # mkstemp makes 0600 files; give the usual umask mode
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


# ---------------------------------------------------------------------------- the twins

def state_from_ms_net(net) -> Dict[str, np.ndarray]:
    """Every parameter of a MindSpore Cell (weights and BN moving statistics), by name."""
    return {param.name: param.asnumpy() for param in net.get_parameters()}


def load_into_ms_net(net, tensors: Mapping[str, np.ndarray], strict: bool = True) -> LoadResult:
    """Copy `tensors` (MindSpore names) into `net`'s parameters, cast to each parameter's dtype.

    A shape mismatch always raises; with `strict`, so do missing or unexpected
    names. Without it they are returned (e.g. `dense.*` missing after loading a
    backbone-only checkpoint into a full net)."""
    import mindspore as ms

    params = {param.name: param for param in net.get_parameters()}
    missing = [name for name in params if name not in tensors]
    unexpected = [name for name in tensors if name not in params]
    if strict and (missing or unexpected):
        raise ConversionError(f"cannot load into {type(net).__name__}: missing {_listing(missing) or 'none'}; "
                              f"unexpected {_listing(unexpected) or 'none'}")
    for name, param in params.items():
        if name in tensors and tuple(np.shape(tensors[name])) != tuple(param.shape):
            raise ConversionError(f"tensor {name}: shape {tuple(np.shape(tensors[name]))} does not fit "
                                  f"{type(net).__name__}'s {tuple(param.shape)}")
    for name, param in params.items():
        if name in tensors:
            value = np.asarray(tensors[name])
            param.set_data(ms.Tensor(value.astype(ms.dtype_to_nptype(param.dtype), copy=False)))
    return LoadResult(missing, unexpected)


def state_from_torch_module(model) -> Dict[str, np.ndarray]:
    """The module's state_dict as numpy (including `num_batches_tracked`)."""
    return {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}


def load_into_torch_module(model, tensors: Mapping[str, np.ndarray], strict: bool = True) -> LoadResult:
    """Copy `tensors` (torchvision names) into `model`, cast to each entry's dtype.

    `num_batches_tracked` buffers the dict lacks keep the module's values (they
    do not affect eval outputs). Shape mismatches always raise; missing or
    unexpected names raise with `strict`, else are returned."""
    import torch

    own = model.state_dict()
    missing = [name for name in own if name not in tensors and not name.endswith("." + TORCH_BN_COUNTER)]
    unexpected = [name for name in tensors if name not in own]
    if strict and (missing or unexpected):
        raise ConversionError(f"cannot load into {type(model).__name__}: missing {_listing(missing) or 'none'}; "
                              f"unexpected {_listing(unexpected) or 'none'}")
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


@dataclass
class VerifyReport:
    max_abs: float
    max_rel: float  # max_abs / max |reference output|
    compared: str  # "logits", or "pooled features" for backbone-only checkpoints
    reference: str  # twin that ran the source, e.g. "mindspore (ms-official)"
    candidate: str  # twin that ran the result

    @property
    def ok(self) -> bool:
        return self.max_abs <= tolerances.EVAL_LOGITS_ABS


def _run_twin(framework: str, ckpt: Checkpoint, batch: np.ndarray) -> np.ndarray:
    """Eval-mode output of the `framework` twin loaded with `ckpt` (renamed to that twin's layout)."""
    layout = "torchvision" if framework == "torch" else "ms-official"
    tensors = convert(ckpt, layout).tensors
    if framework == "torch":
        import torch
        from pt_impl import mobilenetv2 as pt_model

        net = (pt_model.MobileNetV2Backbone(ckpt.width_mult) if ckpt.num_classes is None
               else pt_model.MobileNetV2(ckpt.num_classes, ckpt.width_mult))
        load_into_torch_module(net, tensors, strict=True)
        net.eval()
        with torch.no_grad():
            output = net(torch.from_numpy(batch)).numpy()
        return output if ckpt.num_classes is not None else output.mean(axis=(2, 3))
    import mindspore as ms
    from ms_impl import mobilenetv2 as ms_model

    net = (ms_model.MobileNetV2Backbone(ckpt.width_mult) if ckpt.num_classes is None
           else ms_model.MobileNetV2(ckpt.num_classes, ckpt.width_mult))
    load_into_ms_net(net, tensors, strict=True)
    net.set_train(False)
    output = net(ms.Tensor(batch)).asnumpy()
    # Backbone only: compare what a head would see, the globally pooled features.
    return output if ckpt.num_classes is not None else output.mean(axis=(2, 3))


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
    rng = np.random.default_rng(seed)
    # Noise plus a per-image colour offset: pure noise images pool to nearly the same features.
    batch = (rng.standard_normal((batch_size, 3, image_size, image_size))
             + rng.uniform(-1.0, 1.0, (batch_size, 3, 1, 1))).astype(np.float32)
    expected = _run_twin(source_framework, source, batch)
    found = _run_twin(other, result, batch)
    if expected.shape != found.shape:
        raise ConversionError(f"verify: output shapes differ: {expected.shape} vs {found.shape}")
    max_abs = float(np.max(np.abs(expected.astype(np.float64) - found)))
    max_rel = max_abs / max(float(np.max(np.abs(expected))), np.finfo(np.float32).tiny)
    return VerifyReport(max_abs, max_rel, "pooled features" if result.num_classes is None else "logits",
                        f"{source_framework} twin with the source ({source.layout})",
                        f"{other} twin with the result ({result.layout})")


# ---------------------------------------------------------------------------- CLI

def _default_to_layout(dst: Path, from_layout: str) -> str:
    fmt = _format_of(dst)
    if fmt == "torch":
        return "torchvision"
    if fmt == "mindspore":
        return "ms-official"
    return "ms-official" if FRAMEWORK_OF_LAYOUT[from_layout] == "torch" else "torchvision"


def _describe(ckpt: Checkpoint) -> str:
    classes = "backbone only" if ckpt.num_classes is None else f"{ckpt.num_classes} classes"
    return f"layout {ckpt.layout}, width {ckpt.width_mult}, {classes}, {len(ckpt.tensors)} tensors"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbv2-convert",
        description="Convert a MobileNetV2 checkpoint between torchvision (.pth), official MindSpore and mindcv "
                    "(.ckpt) layouts; .safetensors holds any layout. Exit 2 on bad input, 1 if --verify fails.")
    parser.add_argument("src", type=Path, help="source checkpoint (.pth, .pt, .ckpt, .safetensors)")
    parser.add_argument("dst", type=Path, help="destination file; its extension picks the format")
    parser.add_argument("--from-layout", choices=LAYOUTS, help="source layout (default: detected)")
    parser.add_argument("--to-layout", choices=LAYOUTS,
                        help="destination layout (default: torchvision for .pth/.pt, ms-official for .ckpt, "
                             "the other framework's for .safetensors)")
    parser.add_argument("--num-classes", type=int, help="expected class count; a different one needs --drop-head")
    parser.add_argument("--drop-head", action="store_true", help="write the backbone only (no classifier)")
    parser.add_argument("--force", action="store_true", help="overwrite DST (and allow DST == SRC)")
    parser.add_argument("--verify", action="store_true",
                        help="compare the source twin's and the destination twin's eval outputs on a random batch; "
                             f"fail above {tolerances.EVAL_LOGITS_ABS:g} max abs difference")
    parser.add_argument("--verify-image-size", type=int, default=224, metavar="PX",
                        help="side of the random images --verify runs (default 224)")
    return parser


def _run(args: argparse.Namespace) -> int:
    src, dst = args.src, args.dst
    _format_of(src)
    _format_of(dst)
    if dst.exists() and not args.force:
        same = src.exists() and os.path.samefile(src, dst)
        raise ConversionError(f"{dst}: {'is the source file' if same else 'already exists'}; "
                              f"pass --force to overwrite")
    source = read_checkpoint(src, layout=args.from_layout)
    line = f"read {src}: {_describe(source)}"
    if source.skipped:
        line += f"; skipped {len(source.skipped)} non-model entries: {_group_skipped(source.skipped)}"
    print(line)
    to_layout = args.to_layout or _default_to_layout(dst, source.layout)
    result = convert(source, to_layout, num_classes=args.num_classes, drop_head=args.drop_head)
    failed: List[VerifyReport] = []

    def verify_written(temp: Path) -> None:
        # Read back what was written, so the check covers the file and not just the arrays in memory.
        report = verify_conversion(source, read_checkpoint(temp, layout=result.layout),
                                   image_size=args.verify_image_size)
        print(f"verify: {report.reference} vs {report.candidate}, {report.compared}: "
              f"max abs diff {report.max_abs:.3e}, max rel diff {report.max_rel:.3e} "
              f"(tolerance {tolerances.EVAL_LOGITS_ABS:g} abs)")
        if not report.ok:
            failed.append(report)
            raise ConversionError(f"{dst}: verification failed, nothing written")

    if args.verify:
        os.environ.setdefault("GLOG_v", "3")
        _use_cpu_pynative()
    try:
        write_checkpoint(result, dst, force=args.force, before_replace=verify_written if args.verify else None)
    except ConversionError:
        if failed:
            print(f"error: {dst}: max abs diff {failed[0].max_abs:.3e} above {tolerances.EVAL_LOGITS_ABS:g}; "
                  "nothing written", file=sys.stderr)
            return 1
        raise
    print(f"wrote {dst}: {_describe(result)}")
    return 0


def _use_cpu_pynative() -> None:
    # Verification runs a tiny batch: CPU and PyNative start fastest and need no device.
    import mindspore as ms

    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("GLOG_v", "3")  # before mindspore is first imported: errors only
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for usage errors, 0 for --help
        return int(exc.code or 0)
    try:
        return _run(args)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
