"""Frozen-backbone features of garbage26 for issue 12: several views, several stages, several poolings, one pass.

    flock /tmp/heavy.lock python experiments/multi_features.py --data_path D --pretrained W --views center,center-flip

For every image and every requested view the backbone runs once; what is kept
(per view, float32, one .npz per view and split under --out_dir):

- `avg1280`: global average of the last 1x1 conv's output (what the trainer's head sees)
- `max1280`, `gem1280`: global max and generalised mean (p=3) of the same map
- `avg320`, `avg160`, `avg96`: global averages of earlier stages (block 17, block 16, block 13 outputs)

Views (224x224 network input, the trainer's ImageNet normalisation):

- `center`: the trainer's eval view (shorter side to 256, bicubic, center 224 crop)
- `squash`: the whole photo resized to 224x224 (aspect not kept)
- `pad`: the whole photo, aspect kept (longer side 224), padded to 224x224 with the ImageNet mean colour
- `tl`, `tr`, `bl`, `br`: corner 224 crops after the shorter side goes to 256
- `-flip` suffix: the same view mirrored left-right

`load_multi(out_dir, views)` returns {view: {split: {kind: array}}} plus labels and file names.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

log = logging.getLogger("ms_impl.experiments")

KINDS = ("avg1280", "max1280", "gem1280", "avg320", "avg160", "avg96")
BASE_VIEWS = ("center", "squash", "tl", "tr", "bl", "br")
STAGE_ENDS = (14, 17, 18, 19)  # features[0:14] -> 96 ch, [14:17] -> 160, [17:18] -> 320, [18:19] -> 1280


def view_image(data: np.ndarray, view: str, image_size: int = 224) -> np.ndarray:
    """CHW float32 network input of encoded image bytes `data` for `view` (see module docstring)."""
    from mindspore.dataset import vision

    from parity.core import preprocess

    base, _, flip = view.partition("-")
    image = vision.Decode()(data)
    if base == "squash":
        image = vision.Resize((image_size, image_size), interpolation=vision.Inter.PILCUBIC)(image)
    elif base == "pad":  # the whole photo, aspect kept: longer side to image_size, centred on the ImageNet mean colour
        h, w = image.shape[:2]
        scale = image_size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = vision.Resize((nh, nw), interpolation=vision.Inter.PILCUBIC)(image)
        canvas = np.empty((image_size, image_size, 3), np.uint8)
        canvas[:] = np.round(np.asarray(preprocess.MEAN_RGB)).astype(np.uint8)
        top, left = (image_size - nh) // 2, (image_size - nw) // 2
        canvas[top:top + nh, left:left + nw] = small
        image = canvas
    else:
        image = vision.Resize(preprocess.eval_resize_size(image_size), interpolation=vision.Inter.PILCUBIC)(image)
        h, w = image.shape[:2]
        top = {"center": (h - image_size) // 2, "tl": 0, "tr": 0, "bl": h - image_size, "br": h - image_size}[base]
        left = {"center": (w - image_size) // 2, "tl": 0, "bl": 0, "tr": w - image_size, "br": w - image_size}[base]
        if base == "center":
            image = vision.CenterCrop(image_size)(image)  # exactly the trainer's crop
        else:
            image = image[top:top + image_size, left:left + image_size]
    if flip == "flip":
        image = np.ascontiguousarray(image[:, ::-1])
    elif flip:
        raise ValueError(f"unknown view {view!r}")
    image = vision.Normalize(mean=list(preprocess.MEAN_RGB), std=list(preprocess.STD_RGB))(image)
    return np.asarray(vision.HWC2CHW()(image), dtype=np.float32)


def _multi_pool_cell(backbone):
    from mindspore import nn, ops

    cells = list(backbone.features)

    class MultiPool(nn.Cell):
        def __init__(self) -> None:
            super().__init__(auto_prefix=False)
            self.s96 = nn.SequentialCell(cells[:14])
            self.s160 = nn.SequentialCell(cells[14:17])
            self.s320 = nn.SequentialCell(cells[17:18])
            self.s1280 = nn.SequentialCell(cells[18:19])

        def construct(self, x):
            a = self.s96(x)
            b = self.s160(a)
            c = self.s320(b)
            d = self.s1280(c)
            gem = ops.pow(ops.mean(ops.pow(ops.clamp(d, 1e-6), 3.0), (2, 3)), 1.0 / 3.0)
            return (ops.mean(d, (2, 3)), ops.amax(d, (2, 3)), gem, ops.mean(c, (2, 3)),
                    ops.mean(b, (2, 3)), ops.mean(a, (2, 3)))

    return MultiPool()


def extract(cell, encoded: Sequence[np.ndarray], view: str, batch_size: int = 32) -> Dict[str, np.ndarray]:
    import mindspore as ms

    outs = {k: [] for k in KINDS}
    for start in range(0, len(encoded), batch_size):
        batch = np.stack([view_image(d, view) for d in encoded[start:start + batch_size]])
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
        for kind, value in zip(KINDS, cell(ms.Tensor(batch))):
            outs[kind].append(value.asnumpy()[:count].astype(np.float32))
    return {k: np.concatenate(v) for k, v in outs.items()}


def load_multi(out_dir: str, views: Sequence[str]) -> dict:
    out: dict = {"views": {}}
    meta = np.load(Path(out_dir) / "meta.npz")
    out.update(train_labels=meta["train_labels"], val_labels=meta["val_labels"], train_files=meta["train_files"])
    for view in views:
        out["views"][view] = {}
        for split in ("train", "val"):
            with np.load(Path(out_dir) / f"{split}-{view}.npz") as data:
                out["views"][view][split] = {k: data[k] for k in KINDS}
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ms_impl.trainer.logs import setup_logging
    from ms_impl.trainer.run import build_config, build_run, start_devices
    from ms_impl.trainer.images import pipeline_bytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--out_dir", default="runs/multi_features")
    parser.add_argument("--views", required=True, help="comma-separated, e.g. center,center-flip,squash,squash-flip")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = build_config(["--device", "CPU", "--data_path", args.data_path, "--pretrained", args.pretrained,
                        "--freeze_backbone", "true"])
    run = build_run(cfg, start_devices(cfg))
    data, network = run.data, run.network
    network.set_train(False)
    cell = _multi_pool_cell(network.backbone)
    cell.set_train(False)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "meta.npz", train_labels=np.asarray(data.train.labels), val_labels=np.asarray(data.val.labels),
             train_files=np.asarray([Path(f).name for f in data.train.files]))
    encoded = {split: [pipeline_bytes(str(p)) for p in images.files] for split, images in (("train", data.train), ("val", data.val))}
    for view in args.views.split(","):
        for split in ("train", "val"):
            target = out / f"{split}-{view}.npz"
            if target.exists():
                log.info("exists: %s", target)
                continue
            started = time.perf_counter()
            feats = extract(cell, encoded[split], view, cfg.batch_size)
            np.savez(target, **feats)
            log.info("%s %s: %d images in %.1f s", split, view, len(encoded[split]), time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
