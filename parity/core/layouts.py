"""Checkpoint layouts of MobileNetV2: tensor names in torchvision, ms-official and mindcv.

Nothing here is a hand-written table. `tensor_table()` walks the layers of
`parity.core.spec.build_spec(...)` and, for each layer, asks each layout how it
names that layer's module (`_LayerNames`) and its tensors (`_BN_SUFFIXES`):

| layer | torchvision | ms-official | mindcv |
|---|---|---|---|
| stem conv / BN | `features.0.0` / `.0.1` | `features.0.features.0` / `.1` | `features.0` / `features.1` |
| block i (1..17) | `features.i.conv.{k}` | `features.i.conv.{k}` | `features.{i+2}.layers.{k'}` |
| last 1x1 | `features.18.{0,1}` | `features.18.features.{0,1}` | `features.20` / `features.21` |
| head | `classifier.1` | `dense` | `classifier.1` |

mindcv (mindspore-lab/mindcv `models/mobilenet_v2.py`) keeps conv, BN and
ReLU6 as separate cells of one flat `features` list (so the stem takes
indices 0-2 and blocks start at 3), and each block is one flat `layers`
list: expand conv/BN/ReLU6 at 0-2 (only when t != 1), depthwise at +0/+1
(+2 ReLU6), projection conv/BN after that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from parity.core import spec as mbv2_spec

LAYOUTS: Tuple[str, ...] = ("torchvision", "ms-official", "mindcv")
FRAMEWORK_OF_LAYOUT: Dict[str, str] = {"torchvision": "torch", "ms-official": "mindspore", "mindcv": "mindspore"}

# BatchNorm tensors, in one fixed order: PyTorch names <-> MindSpore names.
_BN_ROLES: Tuple[str, ...] = ("bn_weight", "bn_bias", "bn_mean", "bn_var")
_BN_SUFFIXES: Dict[str, Tuple[str, ...]] = {
    "torch": ("weight", "bias", "running_mean", "running_var"),
    "mindspore": ("gamma", "beta", "moving_mean", "moving_variance"),
}
TORCH_BN_COUNTER = "num_batches_tracked"  # PyTorch-only buffer, not a model tensor here


@dataclass(frozen=True)
class TensorSlot:
    """One model tensor: its name in every layout, its shape and its role."""

    names: Dict[str, str]  # layout -> name
    shape: Tuple[int, ...]
    role: str  # "conv", "bn_weight", "bn_bias", "bn_mean", "bn_var", "dense_weight", "dense_bias"
    in_head: bool

    @property
    def bn_module(self) -> Optional[Dict[str, str]]:
        """layout -> BN module prefix (name without the tensor suffix), for BN slots only."""
        if not self.role.startswith("bn_"):
            return None
        return {layout: name.rsplit(".", 1)[0] for layout, name in self.names.items()}


@dataclass(frozen=True)
class _LayerNames:
    """Module prefixes of one conv (and its BN, if any) in every layout."""

    conv: Dict[str, str]
    bn: Optional[Dict[str, str]]


def _conv_bn_names(torchvision: str, ms_official: str, mindcv_conv: str, mindcv_bn: str) -> _LayerNames:
    """Names of a Conv+BN pair. `torchvision`/`ms_official` are the ConvBNReLU module prefixes, whose
    children are 0 (conv) and 1 (BN); mindcv gives conv and BN as two flat cells."""
    return _LayerNames(
        conv={"torchvision": f"{torchvision}.0", "ms-official": f"{ms_official}.features.0", "mindcv": mindcv_conv},
        bn={"torchvision": f"{torchvision}.1", "ms-official": f"{ms_official}.features.1", "mindcv": mindcv_bn},
    )


def _layers(spec: mbv2_spec.MobileNetV2Spec) -> List[Tuple[_LayerNames, mbv2_spec.ConvBNAct]]:
    """Every conv layer of the backbone, in network order, with its names in all layouts."""
    layers: List[Tuple[_LayerNames, mbv2_spec.ConvBNAct]] = []
    # Stem: mindcv flattens conv (0), BN (1), ReLU6 (2) into `features`.
    layers.append((_conv_bn_names("features.0", "features.0", "features.0", "features.1"), spec.stem))
    mindcv_index = 3
    for block_index, block in enumerate(spec.blocks, start=1):
        tv = f"features.{block_index}.conv"
        cv = f"features.{mindcv_index}.layers"
        sub = 0  # index in the torchvision / ms-official `conv` Sequential
        cv_sub = 0  # index in mindcv's flat `layers` list (conv, BN, ReLU6 each take one)
        if block.expand is not None:
            layers.append((_conv_bn_names(f"{tv}.{sub}", f"{tv}.{sub}", f"{cv}.{cv_sub}", f"{cv}.{cv_sub + 1}"),
                           block.expand))
            sub, cv_sub = sub + 1, cv_sub + 3
        layers.append((_conv_bn_names(f"{tv}.{sub}", f"{tv}.{sub}", f"{cv}.{cv_sub}", f"{cv}.{cv_sub + 1}"),
                       block.depthwise))
        sub, cv_sub = sub + 1, cv_sub + 3
        # Linear projection: a bare conv and a bare BN, the same in torchvision and ms-official.
        project = _LayerNames(
            conv={"torchvision": f"{tv}.{sub}", "ms-official": f"{tv}.{sub}", "mindcv": f"{cv}.{cv_sub}"},
            bn={"torchvision": f"{tv}.{sub + 1}", "ms-official": f"{tv}.{sub + 1}", "mindcv": f"{cv}.{cv_sub + 1}"},
        )
        layers.append((project, mbv2_spec.ConvBNAct(block.hidden_channels, block.out_channels, 1, 1)))
        mindcv_index += 1
    last = len(spec.blocks) + 1
    layers.append((_conv_bn_names(f"features.{last}", f"features.{last}", f"features.{mindcv_index}",
                                  f"features.{mindcv_index + 1}"), spec.last))
    return layers


HEAD_PREFIX: Dict[str, str] = {"torchvision": "classifier.1", "ms-official": "dense", "mindcv": "classifier.1"}


def tensor_table(spec: mbv2_spec.MobileNetV2Spec, num_classes: Optional[int]) -> List[TensorSlot]:
    """All model tensors of a MobileNetV2 (backbone, then head unless `num_classes` is None), in order."""
    slots: List[TensorSlot] = []
    for names, layer in _layers(spec):
        conv_shape = (layer.out_channels, layer.in_channels // layer.groups, layer.kernel_size, layer.kernel_size)
        slots.append(TensorSlot({lay: f"{p}.weight" for lay, p in names.conv.items()}, conv_shape, "conv", False))
        if names.bn is not None:
            for i, role in enumerate(_BN_ROLES):
                slots.append(TensorSlot(
                    {lay: f"{p}.{_BN_SUFFIXES[FRAMEWORK_OF_LAYOUT[lay]][i]}" for lay, p in names.bn.items()},
                    (layer.out_channels,), role, False))
    if num_classes is not None:
        slots.append(TensorSlot({lay: f"{p}.weight" for lay, p in HEAD_PREFIX.items()},
                                (num_classes, spec.num_features), "dense_weight", True))
        slots.append(TensorSlot({lay: f"{p}.bias" for lay, p in HEAD_PREFIX.items()},
                                (num_classes,), "dense_bias", True))
    return slots


def name_map(from_layout: str, to_layout: str, width_mult: float = 1.0, num_classes: Optional[int] = 1000,
             ) -> Dict[str, str]:
    """Source name -> destination name for every model tensor."""
    check_layout(from_layout)
    check_layout(to_layout)
    spec = mbv2_spec.build_spec(width_mult)
    return {slot.names[from_layout]: slot.names[to_layout] for slot in tensor_table(spec, num_classes)}


def head_names(layout: str) -> Tuple[str, str]:
    """(weight, bias) names of the classifier in `layout`."""
    check_layout(layout)
    return f"{HEAD_PREFIX[layout]}.weight", f"{HEAD_PREFIX[layout]}.bias"


def bn_counter_names(spec: mbv2_spec.MobileNetV2Spec) -> List[str]:
    """torchvision's `num_batches_tracked` buffer names, one per BatchNorm."""
    return [f"{slot.bn_module['torchvision']}.{TORCH_BN_COUNTER}"
            for slot in tensor_table(spec, None) if slot.role == "bn_weight"]


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
