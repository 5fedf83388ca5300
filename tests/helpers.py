"""Helpers shared by the test modules (no test module imports another): everything generated, nothing downloaded.

- `TINY_TRAIN`, `train_cli`, `checkpoint_weights`: tiny trainer runs (synthetic set at 32 px, width 0.35).
- `one_error_line`, `snapshot`, `no_temporaries`: what the fault tests assert (one line, nothing lost or half-written).
- `official_ms_names`: the official MindSpore MobileNetV2's parameter names, derived independently.
- Colour images, a class CSV and a tiny trained model for the transfer / predict / export tests.

The colour images are plain colours, slightly shaded per image (red, green, blue), one class per colour, so
a model that works must tell them apart. The tiny model (width 0.35) gets a
backbone whose BatchNorm statistics are set from those images (a random
backbone in eval mode with default statistics maps every image to nearly the
same feature), then its head is trained on cached features, the frozen-backbone
path itself.
"""
from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

# A trainer run of seconds: the embedded synthetic set at 32 px, 4 + 2 images per class, width 0.35.
# Tests append what they change; a later --key wins.
TINY_TRAIN = ["--device", "CPU", "--width-mult", "0.35", "--synthetic-image-size", "32", "--batch-size", "16",
              "--synthetic-train-per-class", "4", "--synthetic-val-per-class", "2", "--num-workers", "2"]


def train_cli(args: Sequence, env: dict, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    """`python ms_impl/train.py ARGS` from the repository root (tests using it are marked slow)."""
    return subprocess.run([sys.executable, "ms_impl/train.py", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def checkpoint_weights(path) -> Dict[str, np.ndarray]:
    """Every tensor of a MindSpore checkpoint, as numpy arrays."""
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items() if hasattr(v, "asnumpy")}


def one_error_line(stderr: str, *needles: str) -> str:
    """The only `error:` line of `stderr`; asserts no traceback and that it names every needle."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> Dict[str, str]:
    """relative path -> sha256 of every file under `folder` (what the user had; the trainer's lock file aside)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.name.startswith(".train.lock")}


def no_temporaries(folder: Path) -> bool:
    """No temporary file of an atomic write (parity.core.files) or of MindSpore's checkpoint writer under `folder`."""
    from parity.core.files import TEMP_MARKER

    return not list(Path(folder).rglob(f"*{TEMP_MARKER}*")) and not list(Path(folder).rglob("*.tmp"))


def official_ms_names(num_blocks: int = 17) -> list:
    """Parameter names of the official MindSpore MobileNetV2 (mindspore-ai/models), derived from its structure."""
    bn = ("moving_mean", "moving_variance", "gamma", "beta")

    def conv_bn(prefix: str) -> list:
        return [f"{prefix}.features.0.weight"] + [f"{prefix}.features.1.{n}" for n in bn]

    names = conv_bn("features.0")
    for i in range(1, num_blocks + 1):
        subs = ["conv.0"] if i == 1 else ["conv.0", "conv.1"]  # block 1 has t=1: no expansion
        for sub in subs:
            names += conv_bn(f"features.{i}.{sub}")
        project = len(subs)
        names += [f"features.{i}.conv.{project}.weight"] + [f"features.{i}.conv.{project + 1}.{n}" for n in bn]
    names += conv_bn(f"features.{num_blocks + 1}")
    return names + ["dense.weight", "dense.bias"]

COLOURS = {"Red Thing": (200, 30, 30), "Green Thing": (30, 190, 40), "Blue Thing": (30, 40, 200)}
CLASS_ROWS = [
    (0, "Red Thing", "红色物", "有害垃圾", "Hazardous waste"),
    (1, "Green Thing", "绿色物", "湿垃圾", "Kitchen waste"),
    (2, "Blue Thing", "蓝色物", "可回收物", "Recyclable"),
]
IMAGE_SIZE = 32


def write_image(path: str, colour, seed: int, size: Tuple[int, int] = (40, 40)) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    # one colour per image, shifted a little per image; pixel noise would dominate a random backbone
    shade = np.asarray(colour, np.float32) + rng.uniform(-20, 20, 3)
    pixels = np.clip(np.broadcast_to(shade, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def write_dataset(root: str, per_class: int = 6, splits=("train", "val")) -> Dict[str, List[Tuple[str, int]]]:
    """<root>/<split>/<class>/*.jpg; returns split -> [(path, label)]."""
    out: Dict[str, List[Tuple[str, int]]] = {}
    for s_index, split in enumerate(splits):
        out[split] = []
        for label, (name, colour) in enumerate(COLOURS.items()):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                path = write_image(os.path.join(folder, f"{i:03d}.jpg"), colour, seed=1000 * s_index + 100 * label + i)
                out[split].append((path, label))
    return out


def write_class_csv(path: str) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "name_en", "name_zh", "category_zh", "category_en"])
        writer.writerows(CLASS_ROWS)
    return path


def calibrated_backbone_net(files: List[str], num_classes: int = 3, width: float = 0.35):
    """MobileNetV2 whose BatchNorm moving statistics are the batch statistics of `files`."""
    import mindspore as ms
    from mindspore import nn, ops
    from mindspore.dataset import transforms

    from ms_impl.mobilenetv2 import MobileNetV2
    from ms_impl.transforms import eval_transforms
    from parity.core import spec

    ms.set_seed(0)
    net = MobileNetV2(num_classes=num_classes, width_mult=width, dropout=0.0)
    pipeline = transforms.Compose(eval_transforms(IMAGE_SIZE))
    batch = np.stack([pipeline(np.fromfile(f, np.uint8)) for f in files]).astype(np.float32)
    # One training-mode pass that puts all weight on the batch sets every moving statistic to
    # the batch statistic. BatchNorm2d hands its momentum to the op when built, so swap the op
    # (ops.BatchNorm's momentum is the weight of the new batch, 1 - nn.BatchNorm2d's).
    # The CPU twin's fused kernel (fast_conv.FastBatchNorm2d) takes the momentum from its kernel_constants.
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            cell.bn_train = ops.BatchNorm(is_training=True, epsilon=spec.BN_EPS, momentum=1.0, data_format=cell.format)
            if hasattr(cell, "kernel_constants"):
                cell.kernel_constants = ms.Tensor(np.array([spec.BN_EPS, 1.0], np.float32))
    net.set_train(True)
    net.backbone(ms.Tensor(batch))
    net.set_train(False)
    return net


def trained_tiny_checkpoint(root: str) -> Tuple[str, Dict[str, List[Tuple[str, int]]]]:
    """A 3-class tiny model trained on the colour images; returns (ckpt path, dataset)."""
    import mindspore as ms

    from ms_impl.trainer.feature_cache import FeatureSettings, extract_features
    from ms_impl.trainer.transfer import train_head_on_features

    data = write_dataset(os.path.join(root, "data"))
    files = [p for p, _ in data["train"]]
    labels = np.asarray([l for _, l in data["train"]], np.int32)
    net = calibrated_backbone_net(files)
    feats = extract_features(net.backbone, files, FeatureSettings(IMAGE_SIZE), batch_size=len(files), progress=False)
    train_head_on_features(net.head, feats, labels, epochs=20, batch_size=6, lr_max=0.05, label_smoothing=0.0, weight_decay=0.0)
    path = os.path.join(root, "tiny.ckpt")
    ms.save_checkpoint(net, path)
    return path, data
