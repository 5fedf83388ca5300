"""The trainer's options, declared once: for every key its type, default, allowed words or range, and help.

Everything else derives from `OPTIONS`: the command line and `--help` (trainer/config.py), the checks of values
from YAML files, from the command line and inside the recipes (`Option.check`, one place), and the saved
`config.yaml` (config.dump_config). The YAML files under configs/ only supply values: a per-device file changes
the defaults below where that device needs another value.

Adding a key: one `Option(...)` in its section below; a per-device file sets it only where the device needs
another value. A leaf module (it imports no other trainer module), so the class loader may use it too.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, Optional, Tuple

import yaml

from parity.core.spec import INVERTED_RESIDUAL_SETTING

DEVICES = ("CPU", "GPU", "Ascend")
RECIPES = ("auto", "scratch", "frozen", "finetune")
# The trainer's network: the stem, the inverted residual blocks and the last 1x1 layer (`features.0` ... `features.18`).
FEATURE_LAYERS = 2 + sum(repeats for _, _, repeats, _ in INVERTED_RESIDUAL_SETTING)


def format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Range:
    """A numeric interval; `None` ends are open to infinity."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def __str__(self) -> str:
        low = "-inf" if self.low is None else format_number(self.low)
        high = "inf" if self.high is None else format_number(self.high)
        return f"{'(' if self.low_open or self.low is None else '['}{low}, {high}{')' if self.high_open or self.high is None else ']'}"


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0, None)
FRACTION = Range(0, 1)  # [0, 1]
PROPER_FRACTION = Range(0, 1, high_open=True)  # [0, 1)
COUNT = Range(0, 100_000, low_open=True)


@dataclass(frozen=True)
class Option:
    """One config key. `type` is bool, int, float, str, or dict: a recipe, values for other keys (each checked by
    that key's own Option)."""

    name: str
    type: type
    default: Any
    help: str
    choices: Tuple[str, ...] = ()
    range: Optional[Range] = None
    section: str = ""

    def parse(self, text: str) -> Any:
        """The command-line string as this option's type (argparse `type=`); the rest of the checks is `check`."""
        try:
            value = _parse_as(self.type, text)
        except (ValueError, yaml.YAMLError):
            raise argparse.ArgumentTypeError(f"expected {self.type.__name__}, got {text!r}") from None
        if self.choices and value not in self.choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(self.choices)}, got {text!r}")
        return value

    def check(self, value: Any) -> Any:
        """A value from a file, the command line or a recipe, coerced to the option's type and checked against its
        choices or range; ValueError (one line, without the key's name) otherwise."""
        if self.type in (int, float) and isinstance(value, str):
            # PyYAML reads `1e-4` (no decimal point, YAML 1.1) as a string: a number written so is still a number
            try:
                value = self.type(value.strip())
            except ValueError:
                raise ValueError(f"expected {self.type.__name__}, got {value!r}") from None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"expected {_kind(self.type)}, got {value!r}")
        if self.type is dict:
            return check_recipe(value)
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        if self.range is not None and (not math.isfinite(value) or value not in self.range):
            raise ValueError(f"{value} is out of range {self.range}")
        return value

    def describe(self, default: Any = None) -> str:
        """The --help line: the help, then type, default (`default`, e.g. a per-device file's value) and range."""
        shown = self.default if default is None else default
        extra = [self.type.__name__, f"default {shown!r}" if self.type is str else f"default {shown}"]
        if self.range is not None:
            extra.append(f"range {self.range}")
        return f"{self.help} ({'; '.join(extra)})".replace("%", "%%")

    @property
    def metavar(self) -> str:
        if self.type is bool:
            return "true|false"
        return "{" + ",".join(self.choices) + "}" if self.choices else self.type.__name__.upper()


def _kind(kind: type) -> str:
    return "a mapping of keys to values" if kind is dict else kind.__name__


def _parse_as(kind: type, text: str) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError(text)
    if kind in (int, float, str):
        return kind(text)
    return yaml.safe_load(text)  # a recipe: a mapping, written as YAML (`{epochs: 3}`)


def check_recipe(values: Dict[str, Any]) -> Dict[str, Any]:
    """A recipe's values, each checked by its own key's Option; a recipe never sets another recipe."""
    checked = {}
    for key, value in values.items():
        option = OPTIONS.get(key)
        if option is None or option.type is dict or key == "recipe":
            raise ValueError(f"{key}: not a key a recipe can set")
        try:
            checked[key] = option.check(value)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    return checked


def _section(title: str, *options: Option) -> Tuple[Option, ...]:
    return tuple(replace(option, section=title) for option in options)


def _by_name(*sections: Iterable[Option]) -> Dict[str, Option]:
    options = {}
    for section in sections:
        for option in section:
            if option.name in options:
                raise ValueError(f"option {option.name} is declared twice")
            options[option.name] = option
    return options


OPTIONS: Dict[str, Option] = _by_name(
    _section(
        "run",
        Option("device", str, "CPU", "where to train; --device also picks configs/garbage26_<device>.yaml", DEVICES),
        Option("mode", str, "graph", "MindSpore execution: graph (compiled, the fast one) or pynative (op by op)",
               ("graph", "pynative")),
        Option("fast_conv", str, "auto", "our CPU kernels for the convolutions, BatchNorm (+ReLU6) and the head's pooling: "
               "auto = where they build (GPU/Ascend: always off)", ("auto", "on", "off")),
        Option("seed", int, 1, "weights, shuffling, augmentation and dropout all derive from it",
               range=Range(0, 2**31 - 1)),  # MindSpore's and numpy's seeds are 32-bit
        Option("output_dir", str, "runs/garbage26_cpu",
               "run folder: config.yaml, train.log, metrics.csv, checkpoints/, reports"),
        Option("force", bool, False, "allow writing into an output_dir that already holds a run (it is moved aside)"),
        Option("resume", str, "", '"" | auto | path/to/checkpoint.ckpt: continue a run (auto: the newest intact '
               "checkpoint in output_dir)"),
        Option("distributed", str, "auto", "data parallel: auto = when launched by msrun (README: Distributed training)",
               ("auto", "on", "off")),
        Option("scale_lr", bool, False, "distributed: multiply lr_init/lr_max/lr_end by the number of workers (linear rule)"),
    ),
    _section(
        "data",
        Option("classes_file", str, "garbage26_classes.yaml",
               "class list (index, names, category); relative to the file that sets it (default: the shipped one)"),
        Option("data_path", str, "", '<data_path>/{train,val}/<class name>/*.jpg; "" = embedded synthetic set'),
        Option("image_size", int, 224, "network input size with data_path (the synthetic set uses synthetic_image_size)",
               range=Range(0, 4096, low_open=True)),
        Option("batch_size", int, 32, "per worker; the global batch is batch_size x workers",
               range=Range(0, 65536, low_open=True)),
        Option("num_workers", int, 2, "data pipeline workers, capped at the machine's core count",
               range=Range(0, 1024, low_open=True)),
        Option("crop_scale_min", float, 0.08, "random resized crop: area fraction in [crop_scale_min, 1]",
               range=Range(0, 1, low_open=True)),
        Option("color_jitter", float, 0.4, "brightness/contrast/saturation jitter; 0 = off", range=NON_NEGATIVE),
        Option("hflip_prob", float, 0.5, "probability of a horizontal flip", range=FRACTION),
        Option("train_whole_prob", float, 0.0, "fraction of training views that are the whole photo resized to a square "
               "instead of a random resized crop", range=FRACTION),
        Option("train_augment", bool, True, "false: train on the eval transform (center crop), inputs identical on every run"),
        Option("mixup_alpha", float, 0.0, "mixup of each training batch with a shuffled copy, weight ~ Beta(a, a) (frozen "
               "backbone: of the cached feature rows; not fine-tuning's stage-1 head); 0 = off", range=NON_NEGATIVE),
        Option("cutmix_alpha", float, 0.0, "image training: CutMix (a box of the partner image pasted in), box share "
               "~ Beta(a, a); 0 = off; both on: one per batch", range=NON_NEGATIVE),
    ),
    _section(
        "embedded synthetic set (when data_path is \"\"; generated, not real photos)",
        Option("synthetic_cache_dir", str, "", '"" = ~/.cache/mbv2-twins/synthetic'),
        Option("synthetic_image_size", int, 32, "the set is drawn at this size and the network trains at it",
               range=Range(0, 1024, low_open=True)),
        Option("synthetic_train_per_class", int, 32, "generated train images per class", range=COUNT),
        Option("synthetic_val_per_class", int, 8, "generated val images per class", range=COUNT),
    ),
    _section(
        "model",
        Option("width_mult", float, 1.0, "channel width multiplier (0.35, 0.5, 0.75, 1.0, 1.4 have converters' layouts)",
               range=POSITIVE),
        Option("dropout", float, 0.2, "head dropout probability before the dense layer; 0 = none", range=PROPER_FRACTION),
        Option("freeze_bn", bool, False, "BatchNorm normalises with its moving statistics and never updates them"),
    ),
    _section(
        "schedule and optimizer",
        Option("epochs", int, 10, "training epochs",
               range=Range(0, 100_000, low_open=True)),  # the per-step LR array is materialised up front
        Option("warmup_epochs", int, 1, "linear warmup from lr_init to lr_max, then cosine to lr_end (at most epochs)",
               range=NON_NEGATIVE),
        Option("lr_init", float, 0.0, "learning rate at step 0 (per step schedule, saved as lr_schedule.npy)",
               range=NON_NEGATIVE),
        Option("lr_max", float, 0.02, "peak learning rate, reached at the end of the warmup", range=POSITIVE),
        Option("lr_end", float, 0.0, "learning rate at the last step", range=NON_NEGATIVE),
        Option("momentum", float, 0.9, "Momentum optimizer (dampening 0, not Nesterov)", range=PROPER_FRACTION),
        Option("weight_decay", float, 4.0e-5, "L2 on conv and dense weights only (never BatchNorm or biases)",
               range=NON_NEGATIVE),
        Option("label_smoothing", float, 0.1, "cross entropy with label smoothing in torch's form", range=PROPER_FRACTION),
        Option("class_balance", str, "none", "none | weights (loss weighs classes by inverse frequency) | sampler "
               "(classes drawn equally often)", ("none", "weights", "sampler")),
    ),
    _section(
        "checkpoints",
        Option("keep_checkpoint_max", int, 3, "per-epoch checkpoints kept; `last` and `best` always kept", range=POSITIVE),
    ),
    _section(
        "transfer learning",
        Option("pretrained", str, "", '"" | weights to start from: .ckpt (ms-official/mindcv), .pth (torchvision), '
               ".safetensors"),
        Option("freeze_backbone", bool, False, "train only the head, on backbone features extracted once and cached"),
        Option("feature_views", int, 1, "frozen backbone: 1 = eval crop per image; N > 1 = N augmented views per image "
               "(seeded)", range=Range(1, None)),
        Option("feature_cache_dir", str, "", '"" = <output_dir>/feature_cache'),
        Option("backbone_lr_scale", float, 0.1, "with pretrained, full fine-tuning: backbone LR = this x the head's "
               "(1.0 = same)", range=Range(0, 1, low_open=True)),
        Option("feature_norm", str, "none", "frozen head: none | center | standardize the features (training "
               "mean/std), folded into the dense layer after training", ("none", "center", "standardize")),
        Option("feature_flip", bool, False, "frozen head: also train on the mirror image of every eval crop (cached "
               "like the crop)"),
        Option("feature_whole", bool, False, "frozen head: also train on the whole photo resized to a square, no crop "
               "(and its mirror image with feature_flip; cached)"),
        Option("head_first_epochs", int, 0, "fine-tuning: first train the head alone on cached features this many "
               "epochs (recipe_frozen's head settings), then unfreeze", range=NON_NEGATIVE),
        Option("freeze_layers", int, 0, "fine-tuning: the first N layers of the backbone (features.0 = stem, 1-17 "
               "blocks, 18 last 1x1) keep their pretrained weights and BatchNorm statistics; no gradient is computed "
               "through them", range=Range(0, FEATURE_LAYERS)),
        Option("tta", str, "none", "the final evaluation averages the logits of each image and its mirror image "
               "(flip+whole: also of the whole photo resized to a square, and its mirror image)",
               ("none", "flip", "flip+whole")),
    ),
    _section(
        "recommended recipes (README: Transfer learning; measured on garbage26 with 5-fold CV of train)",
        Option("recipe", str, "auto", "auto: frozen with pretrained + freeze_backbone, finetune with pretrained alone, "
               "else scratch (the values above as they are)", RECIPES),
        Option("recipe_frozen", dict, {
            "freeze_backbone": True, "epochs": 30, "warmup_epochs": 1, "batch_size": 32, "lr_init": 0.0, "lr_max": 0.02,
            "lr_end": 0.0, "weight_decay": 1.0e-2, "label_smoothing": 0.1, "dropout": 0.2, "feature_views": 1,
            "feature_norm": "center", "feature_flip": True, "feature_whole": True, "tta": "flip+whole"},
            "the frozen recipe's values for the keys above; an explicit --key still wins"),
        Option("recipe_finetune", dict, {
            "head_first_epochs": 30, "epochs": 10, "warmup_epochs": 1, "batch_size": 32, "lr_init": 0.0,
            "lr_max": 0.005, "lr_end": 0.0, "backbone_lr_scale": 0.02, "freeze_layers": 4, "weight_decay": 4.0e-5,
            "label_smoothing": 0.1, "dropout": 0.2, "freeze_bn": True, "crop_scale_min": 0.35, "color_jitter": 0.1,
            "hflip_prob": 0.5, "train_whole_prob": 0.25, "train_augment": True, "tta": "flip+whole"},
            "the fine-tuning recipe: head first on cached features, then all but the stem and first 3 blocks with "
            "frozen BatchNorm and a tiny backbone LR (README: 5-fold CV on source blocks)"),
    ),
)
